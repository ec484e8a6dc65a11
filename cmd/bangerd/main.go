// Command bangerd is banger's daemon; `bangerd helper` is its root helper, the only
// privileged part, run as a separate process.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"banger/internal/config"
	"banger/internal/daemon"
	"banger/internal/errdefs"
	"banger/internal/vmm/qemu"
)

var version = "dev"

// newLogger returns the JSON logger and makes it the default, so packages that log through
// slog's default (the store's migrations) write JSON too.
func newLogger() *slog.Logger {
	l := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(l)
	return l
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == qemu.SandboxArg {
		// The virtiofsd sandbox of a shared folder (see internal/vmm/qemu/virtiofs.go):
		// not a command users run.
		if err := qemu.SandboxMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bangerd:", err)
			os.Exit(1)
		}
		return
	}
	daemon.Version = version
	var (
		cfgPath, stateDir, runtimeDir, socket string
		cleanup                               bool
	)
	root := &cobra.Command{
		Use:           "bangerd",
		Short:         "banger's daemon: VMs, images, DNS and the RPC socket the CLI talks to",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if stateDir != "" {
				cfg.StateDir = stateDir
			}
			if runtimeDir != "" {
				cfg.RuntimeDir = runtimeDir
			}
			if socket != "" {
				cfg.Socket = socket
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := newLogger()
			d, err := daemon.New(ctx, cfg, daemon.Options{Logger: log})
			if err != nil {
				return err
			}
			return d.Run(ctx, daemon.RunOptions{Cleanup: cleanup})
		},
	}
	f := root.Flags()
	f.StringVar(&cfgPath, "config", "", "YAML config file (every field has a default)")
	f.StringVar(&stateDir, "state-dir", "", "state directory (database, images, vms); overrides the config")
	f.StringVar(&runtimeDir, "runtime-dir", "", "runtime directory (sockets); overrides the config")
	f.StringVar(&socket, "socket", "", "RPC socket path; overrides the config")
	f.BoolVar(&cleanup, "cleanup", false, "on exit, stop all VMs and remove every tap, NAT rule and the bridge")
	root.AddCommand(newHelperCmd(), newVersionCmd())
	if err := root.ExecuteContext(context.Background()); err != nil {
		msg := "bangerd: " + err.Error()
		if h := errdefs.HintOf(err); h != "" {
			msg += "\nhint: " + h
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(1)
	}
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run:   func(*cobra.Command, []string) { fmt.Println("bangerd", version) },
	}
}
