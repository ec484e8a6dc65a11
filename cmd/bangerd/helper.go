package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"banger/internal/config"
	"banger/internal/helper"
	"banger/internal/hostnet"
)

func newHelperCmd() *cobra.Command {
	var (
		cfgPath, socket string
		allowUIDs       []int
		allowGIDs       []int
		socketGroup     int
		tapUID, tapGID  int
	)
	cmd := &cobra.Command{
		Use:   "helper",
		Short: "Run the root helper: bridge, taps and NAT for bangerd, on its own socket",
		Long: `The root helper is banger's only privileged process. It serves a narrow JSON RPC on its
own socket, accepts only root and the configured daemon uid/gid (checked with SO_PEERCRED),
and validates every argument against the configuration: it can touch only banger's bridge,
taps named bgr…, and its own nftables table.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if err := cfg.Finish(); err != nil {
				return err
			}
			prefix, _ := cfg.BridgePrefix()
			if socket == "" {
				socket = cfg.Network.HelperSocket
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			srv, err := helper.NewServer(helper.Config{
				Socket:      socket,
				SocketGroup: socketGroup,
				AllowUIDs:   allowUIDs,
				AllowGIDs:   allowGIDs,
				Net:         hostnet.Net{Bridge: cfg.Network.Bridge, Prefix: prefix, Uplink: cfg.Network.Uplink},
				TapOwnerUID: tapUID,
				TapOwnerGID: tapGID,
				Logger:      newLogger(),
			})
			if err != nil {
				return err
			}
			return srv.Serve(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "the same YAML config file bangerd reads (network section)")
	f.StringVar(&socket, "socket", "", "helper socket (default: network.helper_socket from the config)")
	f.IntSliceVar(&allowUIDs, "allow-uid", nil, "uid allowed to call the helper besides root (the daemon's user)")
	f.IntSliceVar(&allowGIDs, "allow-gid", nil, "gid allowed to call the helper")
	f.IntVar(&socketGroup, "socket-group", -1, "group owning the socket (mode 0660)")
	f.IntVar(&tapUID, "tap-owner-uid", 0, "uid that owns created taps (the daemon's user, so its VMM can open them)")
	f.IntVar(&tapGID, "tap-owner-gid", 0, "gid that owns created taps")
	return cmd
}
