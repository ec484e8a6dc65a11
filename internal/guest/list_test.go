package guest

import (
	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The agent lists without following symlinks, with ctimes that move on chmod.
func TestAgentListDoesNotFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	os.Symlink("/etc", filepath.Join(dir, "etc"))
	host, g := net.Pipe()
	a := NewAgent(testLogger(), nil)
	go a.handle(g)
	entries, _, err := agentclient.List(context.Background(), host, "", dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]agentproto.ListEntry{}
	for _, e := range entries {
		byPath[e.Path] = e
	}
	if len(entries) != 3 {
		t.Fatalf("entries %v: /etc was followed or something is missing", entries)
	}
	if e := byPath["etc"]; e.Mode&syscall.S_IFMT != syscall.S_IFLNK || e.Link != "/etc" {
		t.Fatalf("etc: %+v", e)
	}
}

// With since, only what changed is listed, plus every entry of a changed directory; a
// since in the future is a clock probe that lists nothing.
func TestAgentListSince(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"a/x", "a/y", "b/z"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), []byte("1"), 0o644)
	}
	old := time.Now().Add(-time.Hour)
	for _, p := range []string{".", "a", "a/x", "a/y", "b", "b/z"} {
		os.Chtimes(filepath.Join(dir, p), old, old)
	}
	list := func(since int64) ([]agentproto.ListEntry, int64) {
		host, g := net.Pipe()
		go NewAgent(testLogger(), nil).handle(g)
		e, now, err := agentclient.List(context.Background(), host, "", dir, since)
		if err != nil {
			t.Fatal(err)
		}
		return e, now
	}
	probe, now := list(time.Now().Add(time.Hour).UnixNano())
	if len(probe) != 0 || now == 0 {
		t.Fatalf("probe: %v %d", probe, now)
	}
	// ctimes were all just set by Chtimes; only a change after now counts.
	time.Sleep(20 * time.Millisecond)
	since := time.Now().UnixNano()
	time.Sleep(20 * time.Millisecond)
	os.Remove(filepath.Join(dir, "a", "x")) // a changes: a and all its entries listed
	os.Chmod(filepath.Join(dir, "b", "z"), 0o600)
	got, _ := list(since)
	var paths []string
	for _, e := range got {
		paths = append(paths, e.Path)
	}
	if strings.Join(paths, ",") != "a,a/y,b/z" {
		t.Fatalf("since listing: %v", paths)
	}
}
