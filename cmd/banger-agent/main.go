// Command banger-agent is the guest side of banger: the static /init of every VM's initrd
// and the agent the host talks to over virtio-serial or vsock.
//
// Run as PID 1 it is the guest's init (see guest.RunInit). Otherwise:
//
//	banger-agent agent                    serve the VM's agent channels beside another init
//	banger-agent serve --listen-unix PATH serve the agent on a unix socket (tests, debugging)
//	banger-agent version                  print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"banger/internal/guest"
)

func main() {
	if os.Getpid() == 1 {
		guest.RunInit() // never returns
	}
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "agent":
		err = guest.RunAgent(ctx, guest.ConsoleLogger(os.Stderr))
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "version":
		fmt.Println(guest.Version)
		return
	case "-h", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "banger-agent: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "banger-agent: %v\n", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  banger-agent agent                      serve the VM's agent channels (virtio-serial, vsock)
  banger-agent serve --listen-unix PATH   serve the agent on a unix socket
  banger-agent version
As PID 1 it runs as the guest's init.
`)
}

// serve runs the agent on a unix socket, one yamux session per connection. Shutdown
// requests are refused there unless this runs inside a banger guest.
func serve(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fl.String("listen-unix", "", "unix socket path to listen on")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return errors.New("serve: --listen-unix PATH is required")
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	// A socket left by a previous run would make Listen fail with "address in use".
	if fi, err := os.Lstat(*path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		_ = os.Remove(*path)
	}
	l, err := net.Listen("unix", *path)
	if err != nil {
		return fmt.Errorf("serve: listening on %s: %w", *path, err)
	}
	defer os.Remove(*path)
	log.Info("agent listening", "socket", *path, "version", guest.Version)
	return guest.NewDefaultAgent(log).ServeListener(ctx, l)
}
