package guest

import (
	"banger/internal/agentproto"
	"fmt"
	"io"
	"log/slog"

	"github.com/hashicorp/yamux"
)

// newServerSession starts the agent's yamux server. Keepalive is off: the guest has no use
// for detecting a silent host, and pings over a channel nobody reads would only block.
func newServerSession(conn io.ReadWriteCloser, log *slog.Logger) (*yamux.Session, error) {
	cfg := agentproto.YamuxConfig(log)
	cfg.EnableKeepAlive = false
	s, err := yamux.Server(conn, cfg)
	if err != nil {
		return nil, fmt.Errorf("starting agent session: %w", err)
	}
	return s, nil
}
