// Command banger is the CLI for bangerd: fast, disposable microVMs. Each subcommand lives in
// its own file and only parses flags into an options struct for internal/ctl.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"banger/internal/config"
	"banger/internal/ctl"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

var globals = &ctl.Globals{Stdout: os.Stdout, Stderr: os.Stderr, Stdin: os.Stdin}

func newRoot() *cobra.Command {
	var socket string
	root := &cobra.Command{
		Use:           "banger",
		Short:         "Fast, disposable microVMs on your own Linux box",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			globals.Socket = ctl.ResolveSocket(socket)
		},
	}
	root.PersistentFlags().StringVar(&socket, "socket", "", "bangerd socket (default: $BANGER_SOCKET, then "+config.DefaultSocket()+")")
	root.AddCommand(newVersionCmd(), newVMCmd(), newImageCmd(), newSnapshotCmd(), newPoolCmd(), newDoctorCmd())
	return root
}

// addJSON adds --json to a read command.
func addJSON(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&globals.JSON, "json", false, "print the wire records as JSON")
}

func main() {
	err := newRoot().ExecuteContext(context.Background())
	if err == nil {
		return
	}
	var exit *ctl.ExitError
	if errors.As(err, &exit) {
		os.Exit(exit.Code)
	}
	fmt.Fprintln(os.Stderr, ctl.FormatError(err))
	os.Exit(1)
}
