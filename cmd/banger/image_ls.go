package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newImageListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List installed images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ctl.ListImages(cmd.Context(), globals)
		},
	}
	addJSON(cmd)
	return cmd
}
