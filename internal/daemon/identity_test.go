package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"banger/internal/agentproto"
	"banger/internal/guest"
)

// staleSessionMachine stands in for a restored guest: the first channel it gives the host
// is served by a session that reads requests and never answers (the guest's agent dropped
// it, as after "yamux: duplicate stream declared"); every later one by the real agent.
type staleSessionMachine struct {
	mu    sync.Mutex
	dials int
	done  chan struct{}
}

func (m *staleSessionMachine) PID() int                       { return 0 }
func (m *staleSessionMachine) Accel() string                  { return "none" }
func (m *staleSessionMachine) Shutdown(context.Context) error { return nil }
func (m *staleSessionMachine) Kill() error                    { return nil }
func (m *staleSessionMachine) Done() <-chan struct{}          { return m.done }
func (m *staleSessionMachine) DialAgent(ctx context.Context) (net.Conn, error) {
	m.mu.Lock()
	m.dials++
	first := m.dials == 1
	m.mu.Unlock()
	host, guestEnd := net.Pipe()
	sess, err := yamux.Server(guestEnd, nil)
	if err != nil {
		return nil, err
	}
	if first {
		go func() {
			for {
				st, err := sess.Accept()
				if err != nil {
					return
				}
				go io.Copy(io.Discard, st)
			}
		}()
		return host, nil
	}
	go guest.NewAgent(slog.New(slog.NewTextHandler(io.Discard, nil)), nil).Serve(context.Background(), sess)
	return host, nil
}

// TestIdentityIsRetriedOnASilentSession: an identity request whose session never answers
// is retried on a fresh session within the overall bound, and the agent's answer (here a
// refusal: an agent off a guest changes no identity) is final.
func TestIdentityIsRetriedOnASilentSession(t *testing.T) {
	m := &staleSessionMachine{done: make(chan struct{})}
	rt := &vmRuntime{}
	rt.setMachine(m)
	defer rt.resetSession()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	id := agentproto.Identity{Name: "r1", MachineID: strings.Repeat("a", 32), Seed: strings.Repeat("b", 64), UnixNanos: time.Now().UnixNano()}
	err := (&Daemon{}).sendIdentity(ctx, rt, m, "op-identitytest1", id)
	if _, remote := errors.AsType[*agentproto.RemoteError](err); !remote || !strings.Contains(err.Error(), "does not change its identity") {
		t.Fatalf("sendIdentity = %v, want the real agent's refusal after a retry", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dials < 2 {
		t.Errorf("%d dials, want a fresh session after the silent one", m.dials)
	}
}
