package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newImageShowCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show IMAGE",
		Short: "Show an image with its files and digests",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.ShowImage(cmd.Context(), globals, args[0])
		},
	}
	addJSON(cmd)
	return cmd
}
