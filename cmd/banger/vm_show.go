package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMShowCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show VM",
		Short: "Show a VM (by name, id or unique id prefix)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.ShowVM(cmd.Context(), globals, args[0])
		},
	}
	addJSON(cmd)
	return cmd
}
