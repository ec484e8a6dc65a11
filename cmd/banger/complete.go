package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

// completeVMs completes VM names for commands whose first argument is a VM (shell
// completion runs without PersistentPreRun, so the socket is resolved here).
func completeVMs(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveDefault
	}
	flag, _ := cmd.Flags().GetString("socket")
	g := *globals
	g.Socket = ctl.ResolveSocket(flag)
	names, err := ctl.VMNames(cmd.Context(), &g)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// withVMCompletion adds VM-name completion to cmds.
func withVMCompletion(cmds ...*cobra.Command) []*cobra.Command {
	for _, c := range cmds {
		c.ValidArgsFunction = completeVMs
	}
	return cmds
}
