package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMShellCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "shell VM",
		Short: "Open an interactive shell in a running VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.Exec(cmd.Context(), globals, ctl.ExecOptions{VM: args[0]})
		},
	}
}
