package agentclient

import (
	"bufio"
	"context"
	"net"
	"testing"
)

// fakeOldAgent answers one request with the error an agent from before a request type
// (or header field) gives.
func fakeOldAgent(t *testing.T, replyLine string) net.Conn {
	t.Helper()
	host, g := net.Pipe()
	go func() {
		defer g.Close()
		if _, err := bufio.NewReader(g).ReadString('\n'); err != nil {
			return
		}
		g.Write([]byte(replyLine + "\n"))
	}()
	return host
}

// An agent that predates watch (or list) is recognised, so --diff can fall back to the
// walk (or say the image must be rebuilt) instead of failing with "unknown type".
func TestIsUnknownRequest(t *testing.T) {
	old := `{"ok":false,"code":"invalid_argument","error":"type: must be one of ping, exec, put, get, list, shutdown, identity (got \"watch\")"}`
	_, err := Watch(context.Background(), fakeOldAgent(t, old), "", "/work")
	if err == nil || !IsUnknownRequest(err) {
		t.Fatalf("an agent without watch: %v (IsUnknownRequest %v)", err, IsUnknownRequest(err))
	}
	field := `{"ok":false,"code":"invalid_argument","error":"request header: watched: unknown field"}`
	if _, err := ListWatched(context.Background(), fakeOldAgent(t, field), "", "/work", 1); !IsUnknownRequest(err) {
		t.Fatalf("an agent without the watched field: %v", err)
	}
	other := `{"ok":false,"code":"not_found","error":"guest path: /work does not exist"}`
	if _, err := Watch(context.Background(), fakeOldAgent(t, other), "", "/work"); err == nil || IsUnknownRequest(err) {
		t.Fatalf("a real failure taken for an old agent: %v", err)
	}
}
