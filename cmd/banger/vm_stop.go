package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMStopCmd() *cobra.Command {
	var timeout float64
	cmd := &cobra.Command{
		Use:   "stop VM",
		Short: "Shut a VM down cleanly (killed if it doesn't stop within --timeout)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.StopVM(cmd.Context(), globals, args[0], timeout)
		},
	}
	cmd.Flags().Float64Var(&timeout, "timeout", 20, "seconds to wait for a clean shutdown")
	addJSON(cmd)
	return cmd
}
