package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMStartCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "start VM",
		Short: "Boot a stopped VM and wait until its agent answers",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.StartVM(cmd.Context(), globals, args[0])
		},
	}
	addJSON(cmd)
	return cmd
}
