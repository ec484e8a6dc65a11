package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newImageRmCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rm IMAGE",
		Aliases: []string{"delete"},
		Short:   "Delete an image (refused while VMs use it)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.DeleteImage(cmd.Context(), globals, args[0])
		},
	}
	addJSON(cmd)
	return cmd
}
