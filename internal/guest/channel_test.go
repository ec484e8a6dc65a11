package guest

import (
	"banger/internal/agentclient"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// pingSoon pings over fresh sessions until one answers, as the daemon does after it finds
// its session dead: a channel being reopened by the agent may eat one attempt.
func pingSoon(t *testing.T, newSession func() *yamux.Session) {
	t.Helper()
	var last error
	for attempt := 0; attempt < 10; attempt++ {
		sess := newSession()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := sess.Open()
		if err == nil {
			_, err = agentclient.Ping(ctx, st, "")
		}
		cancel()
		sess.Close()
		if err == nil {
			return
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the agent never answered again: %v", last)
}

func TestServeReopeningAfterHostReconnects(t *testing.T) {
	// The host listens like qemu's chardev socket; every open of the "port" is a new
	// connection, and a host disconnect is an EOF for the agent.
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a := NewAgent(testLogger(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- a.ServeReopening(ctx, func(ctx context.Context) (io.ReadWriteCloser, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		})
	}()
	accept := func() net.Conn {
		t.Helper()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for range 3 {
		c := accept()
		sess, err := agentclient.NewClientSessionLogger(c, testLogger())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := agentclient.Ping(testCtx(t), openStream(t, sess), ""); err != nil {
			t.Fatal(err)
		}
		sess.Close()
	}

	// Garbage ends the agent's session: it must drop the connection and come back.
	c := accept()
	if _, err := c.Write(bytes.Repeat([]byte{0xff}, 64)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("agent did not drop a connection carrying garbage: %v", err)
	}
	c.Close()
	c = accept()
	sess, err := agentclient.NewClientSessionLogger(c, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agentclient.Ping(testCtx(t), openStream(t, sess), ""); err != nil {
		t.Fatalf("after garbage: %v", err)
	}
	sess.Close()

	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("ServeReopening returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeReopening did not stop on cancel")
	}
}

func TestServeReopeningPersistentStream(t *testing.T) {
	// A virtio-serial port is one byte stream that outlives both sides' sessions: model
	// it with a socket pair whose ends are dup'ed for every session, so closing a session
	// never closes the stream itself.
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	hostFd, guestFd := fds[0], fds[1]
	defer syscall.Close(hostFd)
	defer syscall.Close(guestFd)
	dupConn := func(fd int) (net.Conn, error) {
		d, err := syscall.Dup(fd)
		if err != nil {
			return nil, err
		}
		f := os.NewFile(uintptr(d), "port")
		defer f.Close()
		return net.FileConn(f)
	}
	opens := make(chan struct{}, 100)
	a := NewAgent(testLogger(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- a.ServeReopening(ctx, func(context.Context) (io.ReadWriteCloser, error) {
			opens <- struct{}{}
			return dupConn(guestFd)
		})
	}()
	hostSession := func() *yamux.Session {
		c, err := dupConn(hostFd)
		if err != nil {
			t.Fatal(err)
		}
		s, err := agentclient.NewClientSessionLogger(c, testLogger())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	pingSoon(t, hostSession)
	// A restarted host starts a new session on the same stream.
	pingSoon(t, hostSession)

	// Garbage on the stream: the agent's session dies and it reopens the port.
	before := len(opens)
	raw, err := dupConn(hostFd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Write(bytes.Repeat([]byte{0xff}, 12)); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	for deadline := time.Now().Add(5 * time.Second); len(opens) == before; {
		if time.Now().After(deadline) {
			t.Fatal("the agent did not reopen the port after garbage")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pingSoon(t, hostSession)

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("ServeReopening did not stop on cancel")
	}
}

func TestFindSerialPort(t *testing.T) {
	root := t.TempDir()
	for name, port := range map[string]string{"vport2p0": "org.qemu.guest_agent.0", "vport2p1": "banger.agent"} {
		if err := os.MkdirAll(filepath.Join(root, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name, "name"), []byte(port+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dev, err := FindSerialPort(root, "banger.agent")
	if err != nil || dev != "/dev/vport2p1" {
		t.Errorf("FindSerialPort = %q, %v; want /dev/vport2p1", dev, err)
	}
	if _, err := FindSerialPort(root, "other"); err == nil {
		t.Error("found a port that does not exist")
	}
	if _, err := FindSerialPort(filepath.Join(root, "none"), "banger.agent"); err == nil {
		t.Error("found a port without a ports directory")
	}
}
