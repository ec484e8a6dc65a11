package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMPauseCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pause VM",
		Short: "Stop a running VM's vCPUs; memory, processes and network stay as they are",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.PauseVM(cmd.Context(), globals, args[0])
		},
	}
	addJSON(cmd)
	return cmd
}

func newVMResumeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "resume VM",
		Short: "Let a paused VM run again from where it was",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.ResumeVM(cmd.Context(), globals, args[0])
		},
	}
	addJSON(cmd)
	return cmd
}
