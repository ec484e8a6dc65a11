package guest

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// slogWriter routes yamux's log lines into slog instead of stderr; yamux logs only
// session-level trouble (bad frames, go-aways), which belongs at warn level.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Warn(strings.TrimSpace(string(p)), "component", "yamux")
	return len(p), nil
}

// yamuxConfig is shared by both ends. Under TCG a guest can stall for seconds, so write
// timeouts are generous; the stream close timeout reclaims streams whose peer vanished.
// The receive window stays at yamux's initial 256 KiB: it is what one stream can make its
// peer buffer, and a larger one buys nothing over virtio-serial.
func yamuxConfig(log *slog.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = slogWriter{log: log}
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.StreamCloseTimeout = time.Minute
	cfg.StreamOpenTimeout = 30 * time.Second
	cfg.MaxStreamWindowSize = 256 << 10
	return cfg
}

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
	cfg := yamuxConfig(log)
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

// newServerSession starts the agent's yamux server. Keepalive is off: the guest has no use
// for detecting a silent host, and pings over a channel nobody reads would only block.
func newServerSession(conn io.ReadWriteCloser, log *slog.Logger) (*yamux.Session, error) {
	cfg := yamuxConfig(log)
	cfg.EnableKeepAlive = false
	s, err := yamux.Server(conn, cfg)
	if err != nil {
		return nil, fmt.Errorf("starting agent session: %w", err)
	}
	return s, nil
}
