package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMCpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files or directories between the host and a VM (NAME:/path on one side)",
		Example: `  banger vm cp ./src dev:/root/src
  banger vm cp dev:/root/out.log .`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.Copy(cmd.Context(), globals, args[0], args[1])
		},
	}
}
