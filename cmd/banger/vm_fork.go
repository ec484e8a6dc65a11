package main

import (
	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/ctl"
)

func newVMForkCmd() *cobra.Command {
	var p api.VMForkParams
	var quiet bool
	cmd := &cobra.Command{
		Use:   "fork VM",
		Short: "Clone a running VM into new VMs that continue from this moment, each with its own name, IP, MAC and disks",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.VM = args[0]
			return ctl.ForkVM(cmd.Context(), globals, p, quiet)
		},
	}
	cmd.Flags().IntVar(&p.Count, "count", 1, "how many forks")
	cmd.Flags().StringVar(&p.NamePrefix, "name-prefix", "", "forks are named PREFIX-1 … PREFIX-N (default: the VM's name + \"-fork\")")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no stage lines")
	addJSON(cmd)
	return cmd
}
