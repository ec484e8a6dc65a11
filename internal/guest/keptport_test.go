package guest

import (
	"context"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
)

// fakeVirtioPort models a virtio-serial port as the guest sees it: reads give EOF while no
// host is attached, what the host sends waits in the port until read, and closing the port
// discards what nobody read (virtio_console's release).
type fakeVirtioPort struct {
	mu       sync.Mutex
	changed  *sync.Cond
	attached bool
	in       []byte // host → guest, unread
	toHost   *io.PipeWriter
	deadline time.Time
	closes   int
	closed   bool
	onEOF    func() // called, outside the lock, each time a read gives EOF
}

func newFakeVirtioPort(toHost *io.PipeWriter) *fakeVirtioPort {
	p := &fakeVirtioPort{toHost: toHost}
	p.changed = sync.NewCond(&p.mu)
	return p
}

func (p *fakeVirtioPort) keepsUnreadData() {}

func (p *fakeVirtioPort) Read(b []byte) (int, error) {
	p.mu.Lock()
	for {
		switch {
		case p.closed:
			p.mu.Unlock()
			return 0, os.ErrClosed
		case len(p.in) > 0:
			n := copy(b, p.in)
			p.in = p.in[n:]
			p.mu.Unlock()
			return n, nil
		case !p.attached:
			hook := p.onEOF
			p.mu.Unlock()
			if hook != nil {
				hook()
			}
			return 0, io.EOF
		case !p.deadline.IsZero() && !time.Now().Before(p.deadline):
			p.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		p.changed.Wait()
	}
}

func (p *fakeVirtioPort) Write(b []byte) (int, error) {
	p.mu.Lock()
	attached := p.attached
	p.mu.Unlock()
	if !attached {
		return len(b), nil // nobody listens: the bytes are dropped
	}
	return p.toHost.Write(b)
}

func (p *fakeVirtioPort) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.in = nil
	p.closes++
	p.closed = true
	p.changed.Broadcast()
	return nil
}

func (p *fakeVirtioPort) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deadline = t
	p.changed.Broadcast()
	if !t.IsZero() {
		time.AfterFunc(time.Until(t), func() {
			p.mu.Lock()
			p.changed.Broadcast()
			p.mu.Unlock()
		})
	}
	return nil
}

// open is the guest opening the port again.
func (p *fakeVirtioPort) open() *fakeVirtioPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = false
	return p
}

func (p *fakeVirtioPort) setAttached(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.attached = on
	p.changed.Broadcast()
}

func (p *fakeVirtioPort) closeCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closes
}

// hostEnd is the host's side of the fake port: what it writes lands in the port's buffer.
type hostEnd struct {
	p    *fakeVirtioPort
	from *io.PipeReader
}

func (h hostEnd) Read(b []byte) (int, error) { return h.from.Read(b) }
func (h hostEnd) Write(b []byte) (int, error) {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	h.p.in = append(h.p.in, b...)
	h.p.changed.Broadcast()
	return len(b), nil
}
func (h hostEnd) Close() error { return h.from.Close() }

// TestHostAttachingAfterAnIdleEOFKeepsItsRequest: a host that attaches right after the
// agent's idle session read EOF (a restored fork's host, typically) must get its first
// request answered. Closing the port after that EOF discarded the request, and the host
// waited out its attempt (about one restore in forty under vm fork). A session that
// served streams still ends with the port closed: the host's detach waits for that.
func TestHostAttachingAfterAnIdleEOFKeepsItsRequest(t *testing.T) {
	fromGuest, toHost := io.Pipe()
	port := newFakeVirtioPort(toHost)
	host := hostEnd{p: port, from: fromGuest}
	opened := make(chan *yamux.Session, 1)
	var once sync.Once
	port.onEOF = func() {
		once.Do(func() {
			// The host attaches and sends its first stream before the agent acts on
			// the EOF it just read.
			port.setAttached(true)
			sess, err := yamux.Client(host, agentproto.YamuxConfig(testLogger()))
			if err != nil {
				t.Error(err)
				return
			}
			opened <- sess
		})
	}
	a := NewAgent(testLogger(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- a.ServeReopening(ctx, func(context.Context) (io.ReadWriteCloser, error) { return port.open(), nil })
	}()
	defer func() {
		cancel()
		port.Close()
		fromGuest.Close()
		<-done
	}()
	sess := <-opened
	if sess == nil {
		t.FailNow()
	}
	defer sess.Close()
	st, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer pcancel()
	if _, err := agentclient.Ping(pctx, st, ""); err != nil {
		t.Fatalf("the first request of a host attaching after an idle EOF: %v", err)
	}
	if n := port.closeCount(); n != 0 {
		t.Fatalf("the agent closed its port %d times while idle; each close discards what the host sent", n)
	}
	// The host hangs up a session that served a stream: the agent closes its port.
	port.setAttached(false)
	for deadline := time.Now().Add(3 * time.Second); port.closeCount() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the agent did not close its port after the host hung up a used session")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
