package helper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/rpc"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHelperBoundsItsClients: the helper refuses connections over its cap (logging the
// peer uid) and drops a client that stalls in the middle of a request line, while a
// well-behaved client is still served. No network is touched: only ping is called.
func TestHelperBoundsItsClients(t *testing.T) {
	logs := &syncBuffer{}
	sock := filepath.Join(t.TempDir(), "helper.sock")
	s, err := NewServer(Config{Socket: sock, SocketGroup: -1, AllowUIDs: []int{os.Getuid()}, Net: testNet,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		// The line deadline must outlast the third dial on a loaded machine: were the two
		// stalled connections dropped first, the third would be served, not refused.
		Limits: rpc.Limits{MaxConns: 2, LineTimeout: 2 * time.Second, IdleTimeout: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	c := &Client{Socket: sock}
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("helper did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	dial := func() (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		return conn, bufio.NewReader(conn)
	}
	// Two stalled half lines fill the cap; a third connection is refused meanwhile.
	stalled, sbr := dial()
	io.WriteString(stalled, `{"version":1,"method":"helper.ping","params":"`+strings.Repeat("x", 256<<10))
	other, obr := dial()
	io.WriteString(other, `{"version":1,`)
	_, rbr := dial()
	line, err := rbr.ReadBytes('\n')
	var resp rpc.Response
	if err != nil || json.Unmarshal(line, &resp) != nil || resp.Error == nil || resp.Error.Code != rpc.CodeUnavailable {
		t.Fatalf("connection over the cap: %q %v, want an unavailable answer", line, err)
	}
	// A dropped connection may first get an error line (the server can refuse the half line
	// as over its buffer budget before the deadline fires); either way it must end in EOF
	// before the connection's own 10 s deadline.
	for _, br := range []*bufio.Reader{sbr, obr} {
		if rest, err := io.ReadAll(br); err != nil {
			t.Fatalf("stalled connection not dropped: read %q, %v", rest, err)
		}
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("ping after the stalled clients were dropped: %v", err)
	}
	out := logs.String()
	for _, want := range []string{`"msg":"rpc connection refused"`, `"msg":"rpc connection dropped: request line incomplete"`, `"peer_uid":` + itoa(os.Getuid())} {
		if !strings.Contains(out, want) {
			t.Errorf("helper log lacks %s:\n%s", want, out)
		}
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }
