package main

import (
	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/ctl"
)

func newVMStartCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "start VM",
		Short: "Boot a stopped VM and wait until its agent answers",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.VMAction(cmd.Context(), globals, api.MethodVMStart, api.VMRef{VM: args[0]})
		},
	}
	addJSON(cmd)
	return cmd
}
