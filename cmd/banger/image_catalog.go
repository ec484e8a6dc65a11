package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newImageCatalogCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "List the images the catalog can pull or build",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return ctl.Catalog(cmd.Context(), globals)
		},
	}
	addJSON(cmd)
	return cmd
}
