package main

import (
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"banger/internal/ctl"
)

func newImagePullCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pull NAME|URL",
		Short: "Fetch a catalog image (or a bundle URL), verifying every file's digest",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.PullImage(cmd.Context(), globals, args[0],
				term.IsTerminal(int(os.Stderr.Fd())))
		},
	}
	addJSON(cmd)
	return cmd
}
