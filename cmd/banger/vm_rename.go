package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMRenameCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rename VM NEW-NAME",
		Short: "Rename a VM; its DNS name follows at once (the guest's hostname at its next start)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.RenameVM(cmd.Context(), globals, args[0], args[1])
		},
	}
	addJSON(cmd)
	return cmd
}
