package guest

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeLister answers one list request with the given lines as the listing.
func fakeLister(t *testing.T, lines ...string) net.Conn {
	t.Helper()
	host, g := net.Pipe()
	go func() {
		defer g.Close()
		br := bufio.NewReader(g)
		if _, err := br.ReadString('\n'); err != nil {
			return
		}
		g.Write([]byte("{\"ok\":true}\n"))
		fw := &frameWriter{w: g}
		for _, l := range lines {
			fw.write(FrameData, []byte(l+"\n"))
		}
		fw.write(FrameDataEOF, nil)
	}()
	return host
}

// The host refuses listings whose paths escape or repeat, and overlong lines.
func TestListRefusesHostileEntries(t *testing.T) {
	for name, line := range map[string]string{
		"dotdot":    `{"p":"../etc/passwd","m":33188,"s":1,"mt":1,"ct":1,"i":1}`,
		"absolute":  `{"p":"/etc/passwd","m":33188,"s":1,"mt":1,"ct":1,"i":1}`,
		"unclean":   `{"p":"a//b","m":33188,"s":1,"mt":1,"ct":1,"i":1}`,
		"inner ..":  `{"p":"a/../../b","m":33188,"s":1,"mt":1,"ct":1,"i":1}`,
		"long line": `{"p":"` + strings.Repeat("a", maxListLine) + `"}`,
		"garbage":   `not json`,
	} {
		if _, _, err := List(context.Background(), fakeLister(t, line), "", "/work", 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	dup := `{"p":"a","m":33188,"s":1,"mt":1,"ct":1,"i":1}`
	if _, _, err := List(context.Background(), fakeLister(t, dup, dup), "", "/work", 0); err == nil {
		t.Error("duplicate paths accepted")
	}
	got, _, err := List(context.Background(), fakeLister(t, `{"p":".","m":16877,"s":0,"mt":1,"ct":1,"i":1}`, dup), "", "/work", 0)
	if err != nil || len(got) != 2 || got[1].Path != "a" {
		t.Fatalf("a good listing: %v %v", got, err)
	}
}

// The agent lists without following symlinks, with ctimes that move on chmod.
func TestAgentListDoesNotFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	os.Symlink("/etc", filepath.Join(dir, "etc"))
	host, g := net.Pipe()
	a := NewAgent(testLogger(), nil)
	go a.handle(g)
	entries, _, err := List(context.Background(), host, "", dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]ListEntry{}
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
	list := func(since int64) ([]ListEntry, int64) {
		host, g := net.Pipe()
		go NewAgent(testLogger(), nil).handle(g)
		e, now, err := List(context.Background(), host, "", dir, since)
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
