package guest

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

// TestHeaderIsDecodedStrictly: the agent refuses a header with a case-variant, duplicate or
// unknown key instead of guessing which one was meant.
func TestHeaderIsDecodedStrictly(t *testing.T) {
	_, s := newTestAgent(t)
	for _, tt := range []struct{ header, names string }{
		{`{"type":"ping","Type":"exec"}`, "Type"},
		{`{"type":"ping","type":"exec"}`, `"type"`},
		{`{"type":"exec","argv":["true"],"user":"root"}`, "user"},
		{`{"type":"ping"} {"type":"exec"}`, "trailing"},
	} {
		st := openStream(t, s)
		io.WriteString(st, tt.header+"\n")
		var r agentproto.Reply
		if err := agentproto.ReadJSONLine(bufio.NewReader(st), &r); err != nil {
			t.Fatal(err)
		}
		st.Close()
		if err := r.Err(); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.names) {
			t.Errorf("header %s: reply %+v, want invalid_argument naming %s", tt.header, r, tt.names)
		}
	}
}

// TestRequestPanicIsAnInternalReply: a panicking request answers an internal error naming
// its op id and logs the stack.
func TestRequestPanicIsAnInternalReply(t *testing.T) {
	var out, logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	func() {
		defer recoverRequest(&out, agentproto.Request{Type: agentproto.TypeExec, OpID: "op-panicking123"}, log)
		panic("boom")
	}()
	var r agentproto.Reply
	if err := agentproto.ReadJSONLine(bufio.NewReader(&out), &r); err != nil {
		t.Fatal(err)
	}
	if r.OK || r.Code != "internal" || !strings.Contains(r.Error, "op-panicking123") {
		t.Fatalf("reply %+v, want an internal error naming the op id", r)
	}
	if !strings.Contains(logs.String(), "agent request panic") || !strings.Contains(logs.String(), "wire_test.go") {
		t.Fatalf("no panic record with a stack:\n%s", logs.String())
	}
}
