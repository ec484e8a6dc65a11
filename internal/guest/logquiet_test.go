package guest

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/agentclient"
)

// lockedBuffer is a log sink the agent's goroutines and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The agent's log goes to the emulated serial console, where every line costs the one
// vCPU: a request writes one line (with its op id), after it is answered — nothing before
// the boot's ping answer, two lines at most for an exec.
func TestRequestsLogOneLineAfterAnswering(t *testing.T) {
	var logs lockedBuffer
	a := NewAgent(slog.New(slog.NewTextHandler(&logs, nil)), nil)
	s := startAgent(t, a)
	if _, err := agentclient.Ping(testCtx(t), openStream(t, s), "op-quiet1"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "request begin") {
		t.Errorf("a line was logged before the ping was answered:\n%s", logs.String())
	}
	code, err := agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{Argv: []string{"true"}, OpID: "op-quiet2"}, agentclient.ExecIO{})
	if err != nil || code != 0 {
		t.Fatalf("exec true: %d %v", code, err)
	}
	// "request done" follows the exit frame; give it a moment (bounded).
	for deadline := time.Now().Add(10 * time.Second); strings.Count(logs.String(), "op-quiet2") < 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), "op-quiet2"); n > 2 {
		t.Errorf("an exec of true logged %d lines:\n%s", n, logs.String())
	}
}
