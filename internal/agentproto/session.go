package agentproto

import (
	"log/slog"
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
func YamuxConfig(log *slog.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = slogWriter{log: log}
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.StreamCloseTimeout = time.Minute
	cfg.StreamOpenTimeout = 30 * time.Second
	cfg.MaxStreamWindowSize = 256 << 10
	return cfg
}
