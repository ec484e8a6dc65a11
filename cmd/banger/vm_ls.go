package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ctl.ListVMs(cmd.Context(), globals)
		},
	}
	addJSON(cmd)
	return cmd
}
