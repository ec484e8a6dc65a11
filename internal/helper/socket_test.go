package helper

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"banger/internal/rpc/rpctest"
)

// TestSocketModeFromTheStart: with umask 000 the helper's socket is never reachable with a
// mode wider than 0660 (it used to be bound in place and chmodded afterwards). Serve only
// listens here; no call reaches the network code.
func TestSocketModeFromTheStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "helper.sock")
	s, err := NewServer(Config{Socket: path, SocketGroup: -1, Net: testNet, TapOwnerUID: 1000, TapOwnerGID: 1000,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	w := rpctest.WatchSocket(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Lstat(path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the helper socket never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	w.Check(0o660)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Serve returned: %v", err)
	}
}
