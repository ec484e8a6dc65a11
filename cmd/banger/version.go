package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"banger/internal/ctl"
	"banger/internal/rpc"
)

func newVersionCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the CLI's and the daemon's versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(globals.Stdout, "banger %s (protocol %d)\n", version, rpc.Version)
			p, err := ctl.Ping(cmd.Context(), globals)
			if err != nil {
				fmt.Fprintf(globals.Stdout, "bangerd: unreachable (%v)\n", err)
				return nil
			}
			fmt.Fprintf(globals.Stdout, "bangerd %s (protocol %d, pid %d, up %.0fs)\n", p.Version, p.Protocol, p.PID, p.UptimeSeconds)
			return nil
		},
	}
	return cmd
}
