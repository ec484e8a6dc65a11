package agentclient

import (
	"banger/internal/agentproto"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// hostAcceptBacklog bounds the streams a guest can open toward the host before the host
// notices (each may hold a 256 KiB window of data); it also bounds the host's own opens
// awaiting the agent's acknowledgement, which take a round trip each.
const hostAcceptBacklog = 16

// NewClientSession starts the host's yamux client on conn (the agent channel from
// vmm.Machine.DialAgent). The session pings every 30 s so a dead guest or a channel that a
// restarted agent abandoned is noticed; when s.IsClosed() or an Open fails, dial again.
// One stream per request: pass s.Open() results to Ping, Exec, Put, Get or Shutdown.
func NewClientSession(conn net.Conn) (*yamux.Session, error) {
	return NewClientSessionLogger(conn, slog.Default())
}

// NewClientSessionLogger is NewClientSession with an explicit logger for yamux's messages.
func NewClientSessionLogger(conn net.Conn, log *slog.Logger) (*yamux.Session, error) {
	cfg := agentproto.YamuxConfig(log)
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 30 * time.Second
	cfg.AcceptBacklog = hostAcceptBacklog
	s, err := yamux.Client(conn, cfg)
	if err != nil {
		return nil, fmt.Errorf("starting agent session: %w", err)
	}
	go refuseGuestStreams(s, log)
	return s, nil
}

// refuseGuestStreams ends the session at the first stream the guest opens. The protocol
// has the host open every stream; one opened by the guest is a broken or hostile agent,
// and left unaccepted its data would sit in host memory. Closing the whole session frees
// all of it at once; the host redials for its next request.
func refuseGuestStreams(s *yamux.Session, log *slog.Logger) {
	st, err := s.AcceptStream()
	if err != nil {
		return // the session ended
	}
	log.Warn("the guest agent opened a stream toward the host, which the protocol never does; closing the agent session",
		"stream_id", st.StreamID())
	_ = st.Close()
	_ = s.Close()
}
