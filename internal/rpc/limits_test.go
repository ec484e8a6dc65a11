package rpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/rpc"
)

// withMessage returns the log records whose msg is msg.
func (b *logBuffer) withMessage(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(b.buf.Bytes(), []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// waitForRecord polls the log until a record with msg appears; the bound only keeps a
// broken server from hanging the test.
func (b *logBuffer) waitForRecord(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if recs := b.withMessage(t, msg); len(recs) > 0 {
			return recs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log record %q", msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// expectClosed reads until the server closes the connection, failing on any byte.
func (r *rawConn) expectClosed() {
	r.t.Helper()
	b, err := r.br.ReadByte()
	if err == nil {
		rest, _ := r.br.ReadString('\n')
		r.t.Fatalf("connection still open: read %q", string(b)+rest)
	}
	// A close with unread request bytes in the server's buffer arrives as a reset.
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		r.t.Fatalf("want the server to close the connection (EOF), got %v", err)
	}
}

func limitedServer(t *testing.T, lim rpc.Limits) *testServer {
	return startServer(t, func(s *rpc.Server) {
		s.Limits = lim
		s.Handle("test.echo", func(ctx context.Context, p json.RawMessage) (any, error) {
			return map[string]any{"params": p}, nil
		})
		s.Handle("test.sleep", func(ctx context.Context, p json.RawMessage) (any, error) {
			var d float64
			json.Unmarshal(p, &d)
			select {
			case <-time.After(time.Duration(d * float64(time.Second))):
			case <-ctx.Done():
			}
			return "slept", nil
		})
		s.HandleStream("test.cat", func(ctx context.Context, _ json.RawMessage, st *rpc.Stream) error {
			if err := st.Accept("ok"); err != nil {
				return err
			}
			_, err := io.Copy(st, st)
			return err
		})
	})
}

const echo = `{"version":1,"method":"test.echo"}` + "\n"

func TestConnectionCapRefusesExtras(t *testing.T) {
	ts := limitedServer(t, rpc.Limits{MaxConns: 3, IdleTimeout: time.Hour})
	var held []*rawConn
	for i := 0; i < 3; i++ {
		rc := dialRaw(t, ts.socket)
		rc.send(echo)
		if resp := rc.response(); resp.Error != nil {
			t.Fatalf("connection %d under the cap refused: %v", i, resp.Error)
		}
		held = append(held, rc)
	}
	extra := dialRaw(t, ts.socket)
	resp := extra.response()
	if resp.Error == nil || resp.Error.Code != rpc.CodeUnavailable || !strings.Contains(resp.Error.Message, "too many connections") {
		t.Fatalf("connection over the cap: got %+v, want unavailable 'too many connections'", resp)
	}
	extra.expectClosed()
	rec := ts.log.waitForRecord(t, "rpc connection refused")
	if uid, _ := rec["peer_uid"].(float64); int(uid) != os.Getuid() {
		t.Errorf("refusal record %v does not name peer uid %d", rec, os.Getuid())
	}
	// The held connections still work, and closing one frees its slot.
	held[0].send(echo)
	if resp := held[0].response(); resp.Error != nil {
		t.Fatalf("held connection stopped working: %v", resp.Error)
	}
	held[1].c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rc := dialRaw(t, ts.socket)
		// While the slot is still taken the server answers and closes before reading,
		// so the write may meet a closed socket; the refusal line is still there to read.
		io.WriteString(rc.c, echo)
		resp := rc.response()
		if resp.Error == nil {
			break
		}
		rc.c.Close()
		if resp.Error.Code != rpc.CodeUnavailable || time.Now().After(deadline) {
			t.Fatalf("slot of a closed connection not reused: %v", resp.Error)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStalledHalfLineIsDropped(t *testing.T) {
	ts := limitedServer(t, rpc.Limits{LineTimeout: 200 * time.Millisecond, IdleTimeout: time.Hour})
	// A connection that has sent nothing is idle, not stalled: the line deadline does not
	// apply to it.
	idle := dialRaw(t, ts.socket)
	stalled := dialRaw(t, ts.socket)
	stalled.send(`{"version":1,"method":"test.echo","params":"` + strings.Repeat("x", 512<<10))
	stalled.expectClosed()
	rec := ts.log.waitForRecord(t, "rpc connection dropped: request line incomplete")
	if uid, _ := rec["peer_uid"].(float64); int(uid) != os.Getuid() {
		t.Errorf("drop record %v does not name peer uid %d", rec, os.Getuid())
	}
	idle.send(echo)
	if resp := idle.response(); resp.Error != nil {
		t.Fatalf("idle connection was dropped with the stalled one: %v", resp.Error)
	}
}

func TestIdleConnectionIsClosedButCallsAndStreamsAreNot(t *testing.T) {
	const idle = 200 * time.Millisecond
	ts := limitedServer(t, rpc.Limits{LineTimeout: idle, IdleTimeout: idle})

	rc := dialRaw(t, ts.socket)
	rc.send(echo)
	if resp := rc.response(); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	rc.expectClosed()
	ts.log.waitForRecord(t, "rpc connection closed: idle")

	// A call running longer than both deadlines still gets its answer.
	long := dialRaw(t, ts.socket)
	long.send(`{"version":1,"method":"test.sleep","params":1}` + "\n")
	if resp := long.response(); resp.Error != nil || string(resp.Result) != `"slept"` {
		t.Fatalf("long call: %+v", resp)
	}

	// A stream quiet for longer than the idle deadline keeps working.
	st := dialRaw(t, ts.socket)
	st.send(`{"version":1,"method":"test.cat"}` + "\n")
	if resp := st.response(); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	time.Sleep(5 * idle)
	st.send("still here\n")
	if got, err := st.br.ReadString('\n'); err != nil || got != "still here\n" {
		t.Fatalf("stream after a quiet spell: %q, %v", got, err)
	}
}

// TestPanicIsAnInternalError: a handler's panic answers internal under the call's op id,
// logs the stack, and leaves the server (and the connection) serving.
func TestPanicIsAnInternalError(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) {
		s.Handle("test.echo", func(ctx context.Context, p json.RawMessage) (any, error) { return "ok", nil })
		s.Handle("test.panic", func(ctx context.Context, p json.RawMessage) (any, error) { panic("boom") })
		s.HandleStream("test.panic_stream", func(ctx context.Context, _ json.RawMessage, st *rpc.Stream) error { panic("boom") })
	})
	for _, method := range []string{"test.panic", "test.panic_stream"} {
		rc := dialRaw(t, ts.socket)
		const id = "op-panicking123"
		rc.send(`{"version":1,"method":"` + method + `","op_id":"` + id + `"}` + "\n")
		resp := rc.response()
		if resp.Error == nil || resp.Error.Code != rpc.CodeInternal || resp.OpID != id {
			t.Fatalf("%s: got %+v, want internal under %s", method, resp, id)
		}
		var stack bool
		for _, rec := range ts.log.records(t, id) {
			if rec["msg"] == "rpc handler panic" && strings.Contains(rec["stack"].(string), "limits_test.go") {
				stack = true
			}
		}
		if !stack {
			t.Errorf("%s: no panic record with a stack under %s", method, id)
		}
	}
	rc := dialRaw(t, ts.socket)
	rc.send(`{"version":1,"method":"test.panic"}` + "\n" + echo)
	rc.response()
	if resp := rc.response(); resp.Error != nil {
		t.Fatalf("connection unusable after a panic: %v", resp.Error)
	}
}

// TestFailuresLogAtTheirLevel: a caller's mistake is a warning, only the server's own
// fault an error.
func TestFailuresLogAtTheirLevel(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) {
		s.Handle("test.missing", func(ctx context.Context, p json.RawMessage) (any, error) {
			return nil, errdefs.NotFound("vm", "x")
		})
		s.Handle("test.broken", func(ctx context.Context, p json.RawMessage) (any, error) {
			return nil, errors.New("disk on fire")
		})
	})
	for _, tt := range []struct{ method, id, level string }{
		{"test.missing", "op-levelmissing1", "WARN"},
		{"test.broken", "op-levelbroken12", "ERROR"},
	} {
		rc := dialRaw(t, ts.socket)
		rc.send(`{"version":1,"method":"` + tt.method + `","op_id":"` + tt.id + `"}` + "\n")
		rc.response()
		var got string
		for _, rec := range ts.log.records(t, tt.id) {
			if rec["msg"] == "operation failed" {
				got, _ = rec["level"].(string)
			}
		}
		if got != tt.level {
			t.Errorf("%s failure logged at %q, want %s", tt.method, got, tt.level)
		}
	}
}

// TestPendingBytesAreBounded: long request lines in flight share one budget; of two that
// would exceed it together one is refused, and the budget comes back once lines are served.
func TestPendingBytesAreBounded(t *testing.T) {
	ts := limitedServer(t, rpc.Limits{PendingBytes: 64 << 10, IdleTimeout: time.Hour, LineTimeout: time.Hour})
	start := `{"version":1,"method":"test.echo","params":"`
	half := strings.Repeat("x", 48<<10)
	holder, refused := dialRaw(t, ts.socket), dialRaw(t, ts.socket)
	// The holder's bytes are reserved before the other line starts, so which one is
	// refused does not depend on how the server's reads interleave.
	holder.send(start + half)
	for deadline := time.Now().Add(10 * time.Second); rpc.PendingBytes(ts.srv) < int64(len(half))-8<<10; {
		if time.Now().After(deadline) {
			t.Fatalf("the server reserved %d bytes of a %d-byte line", rpc.PendingBytes(ts.srv), len(half))
		}
		time.Sleep(time.Millisecond)
	}
	// The server answers and closes mid-line, so this write may meet a closed socket.
	io.WriteString(refused.c, start+half)
	if line, _ := refused.br.ReadString('\n'); !strings.Contains(line, `"code":"unavailable"`) || !strings.Contains(line, "server busy") {
		t.Fatalf("line over the budget answered %q, want unavailable 'server busy'", line)
	}
	ts.log.waitForRecord(t, "rpc request refused")
	winner := holder
	winner.send(`"}` + "\n")
	if resp := winner.response(); resp.Error != nil {
		t.Fatalf("line within the budget answered %v", resp.Error)
	}
	// A connection's next line is read after its previous one's bytes were returned.
	for i := 0; i < 3; i++ {
		c := winner
		c.send(start + half + `"}` + "\n")
		if resp := c.response(); resp.Error != nil {
			t.Fatalf("budget not returned after line %d: %v", i, resp.Error)
		}
	}
}
