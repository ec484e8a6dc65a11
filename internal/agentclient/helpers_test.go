package agentclient

import (
	"banger/internal/testkit"
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// testLogger and socketPair are testkit's, named for the tests of this package.
var (
	testLogger = testkit.QuietLogger
	socketPair = func(t *testing.T) (net.Conn, net.Conn) { return testkit.SocketPair(t) }
)

func openStream(t *testing.T, s *yamux.Session) net.Conn {
	t.Helper()
	st, err := s.Open()
	if err != nil {
		t.Fatalf("opening a stream: %v", err)
	}
	return st
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
