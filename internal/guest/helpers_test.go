package guest

import (
	"banger/internal/agentclient"
	"banger/internal/testkit"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// testLogger and socketPair are testkit's, named for the tests of this package.
var (
	testLogger = testkit.QuietLogger
	socketPair = func(t *testing.T) (net.Conn, net.Conn) { return testkit.SocketPair(t) }
)

// startAgent runs agent on one end of a socket pair and returns a client session on the
// other end.
func startAgent(t *testing.T, agent *Agent) *yamux.Session {
	t.Helper()
	host, guest := socketPair(t)
	srv, err := newServerSession(guest, agent.log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		agent.Serve(ctx, srv)
	}()
	cli, err := agentclient.NewClientSessionLogger(host, agent.log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cli.Close()
		cancel()
		<-done
	})
	return cli
}

func newTestAgent(t *testing.T) (*Agent, *yamux.Session) {
	a := NewAgent(testLogger(), nil)
	return a, startAgent(t, a)
}

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

// notifyBuffer is a goroutine-safe buffer that reports when its content contains a string.
type notifyBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	waiters []waiter
}

type waiter struct {
	s  string
	ch chan struct{}
}

func (b *notifyBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, _ := b.buf.Write(p)
	kept := b.waiters[:0]
	for _, w := range b.waiters {
		if strings.Contains(b.buf.String(), w.s) {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	b.waiters = kept
	return n, nil
}

func (b *notifyBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor returns a channel closed once the buffer contains s.
func (b *notifyBuffer) waitFor(s string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := make(chan struct{})
	if strings.Contains(b.buf.String(), s) {
		close(ch)
		return ch
	}
	b.waiters = append(b.waiters, waiter{s, ch})
	return ch
}

func requireCommand(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
}
