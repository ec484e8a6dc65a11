package daemon

import (
	"path/filepath"
	"testing"

	"banger/internal/rpc/rpctest"
)

// TestSocketModeFromTheStart: with umask 000 the daemon's socket is never reachable with a
// mode wider than 0660 (it used to be bound in place and chmodded afterwards).
func TestSocketModeFromTheStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bangerd.sock")
	w := rpctest.WatchSocket(t, path)
	l, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	w.Check(0o660)
}
