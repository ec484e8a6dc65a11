package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newPoolCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Warm pools: VMs kept ready by bangerd (config pools)"}
	list := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the warm pools: spec, ready VMs, state and last error",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.ListPools(cmd.Context(), globals)
		},
	}
	addJSON(list)
	cmd.AddCommand(list)
	return cmd
}
