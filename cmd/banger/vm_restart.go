package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMRestartCmd() *cobra.Command {
	var timeout float64
	cmd := &cobra.Command{
		Use:   "restart VM",
		Short: "Stop (if running) and start a VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.RestartVM(cmd.Context(), globals, args[0], timeout)
		},
	}
	cmd.Flags().Float64Var(&timeout, "timeout", 20, "seconds to wait for a clean shutdown")
	addJSON(cmd)
	return cmd
}
