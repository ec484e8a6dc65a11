package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMRmCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm VM...",
		Aliases: []string{"delete"},
		Short:   "Delete VMs and their disks",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, ref := range args {
				if err := ctl.DeleteVM(cmd.Context(), globals, ref, force); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running VM first (its disks are deleted anyway)")
	addJSON(cmd)
	return cmd
}
