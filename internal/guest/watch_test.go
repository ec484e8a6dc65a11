package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/testkit"
)

// changedSet is the entries of a since-listing that changed, and the entries listed
// because their directory changed, as path → ino/mode/size.
func listingKeys(es []agentproto.ListEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, fmt.Sprintf("%s %o %d %d", e.Path, e.Mode, e.Size, e.Ino))
	}
	sort.Strings(out)
	return out
}

// A listing answered from a watch holds what a walk with since holds for the same
// changes — edits, new and deleted files, chmod, renames of files and directories, a new
// directory tree, a symlink, a directory replaced by a file — without listing the rest of
// the tree; an agent without a watch for the path walks.
func TestWatchedListingMatchesTheWalk(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Missing(t, "fanotify filesystem marks need root")
	}
	root := t.TempDir()
	for d := 0; d < 10; d++ {
		for f := 0; f < 30; f++ {
			p := filepath.Join(root, fmt.Sprintf("d%d/f%d", d, f))
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	os.MkdirAll(filepath.Join(root, "gone/sub"), 0o755)
	os.WriteFile(filepath.Join(root, "gone/sub/x"), []byte("x"), 0o644)
	os.MkdirAll(filepath.Join(root, "asfile"), 0o755)
	time.Sleep(150 * time.Millisecond) // the tree predates the watch's since
	a, sess := newTestAgent(t)
	ctx := testCtx(t)
	now, err := agentclient.Watch(ctx, openStream(t, sess), "", root)
	if errors.Is(err, unix.EPERM) {
		testkit.Missing(t, "fanotify is not permitted here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	since := now - int64(50*time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(filepath.Join(root, "d1/f1"), os.O_APPEND|os.O_WRONLY, 0)
	must(err)
	f.WriteString("more")
	f.Close()
	must(os.WriteFile(filepath.Join(root, "d2/new"), []byte("n"), 0o600))
	must(os.Remove(filepath.Join(root, "d3/f3")))
	must(os.Chmod(filepath.Join(root, "d4/f4"), 0o755))
	must(os.Rename(filepath.Join(root, "d5/f5"), filepath.Join(root, "d6/moved")))
	must(os.Rename(filepath.Join(root, "d7"), filepath.Join(root, "d7-renamed")))
	must(os.MkdirAll(filepath.Join(root, "newdir/a/b"), 0o755))
	must(os.WriteFile(filepath.Join(root, "newdir/a/b/c"), []byte("c"), 0o644))
	must(os.Symlink("../d1/f1", filepath.Join(root, "d8/link")))
	must(os.RemoveAll(filepath.Join(root, "gone")))
	must(os.Remove(filepath.Join(root, "asfile")))
	must(os.WriteFile(filepath.Join(root, "asfile"), []byte("now a file"), 0o644))
	// A write through a shared mapping makes no FAN_MODIFY; its close does.
	mf, err := os.OpenFile(filepath.Join(root, "d9/f9"), os.O_RDWR, 0)
	must(err)
	m, err := unix.Mmap(int(mf.Fd()), 0, 1, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	must(err)
	m[0] = 'Y'
	unix.Munmap(m)
	mf.Close()

	watched, err := agentclient.ListWatched(ctx, openStream(t, sess), "", root, since)
	must(err)
	walked, _, err := agentclient.List(ctx, openStream(t, sess), "", root, since)
	must(err)
	changed := func(es []agentproto.ListEntry) []string {
		var out []agentproto.ListEntry
		for _, e := range es {
			if e.CTime >= since || e.MTime >= since {
				out = append(out, e)
			}
		}
		return listingKeys(out)
	}
	if w, k := changed(watched), changed(walked); !slices.Equal(w, k) {
		t.Fatalf("changed entries differ:\nwatched %q\nwalked  %q", w, k)
	}
	// Every entry of a changed directory is there too (that is how deletions show).
	have := map[string]bool{}
	for _, e := range watched {
		have[e.Path] = true
	}
	for _, e := range walked {
		if e.Mode&syscall.S_IFMT == syscall.S_IFDIR && (e.CTime >= since || e.MTime >= since) {
			ents, _ := os.ReadDir(filepath.Join(root, e.Path))
			for _, c := range ents {
				if p := filepath.Join(e.Path, c.Name()); !have[filepath.ToSlash(filepath.Clean(p))] {
					t.Errorf("%s of changed directory %s is missing from the watched listing", c.Name(), e.Path)
				}
			}
		}
	}
	// d0 did not change: the watch lists nothing in it (d0 itself is an entry of the changed root).
	for _, e := range watched {
		if e.Path == "d0/f0" {
			t.Errorf("the watched listing has the unchanged %s (ctime %d, since %d)", e.Path, e.CTime, since)
		}
	}
	for _, p := range []string{"d9/f9", "asfile", "d8/link", "newdir/a/b/c"} {
		if !have[p] {
			t.Errorf("the watched listing lacks %s", p)
		}
	}
	// The watch was used and consumed; without one the agent walks (same answer as List).
	if w := a.watches.take(root); w != nil {
		t.Error("the listing did not consume the watch")
	}
	again, err := agentclient.ListWatched(ctx, openStream(t, sess), "", root, since)
	must(err)
	if a, b := listingKeys(again), listingKeys(walked); !slices.Equal(a, b) {
		t.Errorf("without a watch the listing is not the walk's")
	}
}

// A watch that lost events (here: marked lost, as a queue overflow does) is not used.
func TestLostWatchFallsBackToTheWalk(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Missing(t, "fanotify filesystem marks need root")
	}
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "a"), []byte("a"), 0o644)
	a, sess := newTestAgent(t)
	ctx := testCtx(t)
	now, err := agentclient.Watch(ctx, openStream(t, sess), "", root)
	if err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(root)
	a.watches.mu.Lock()
	a.watches.m[real].fail("event queue overflowed")
	a.watches.mu.Unlock()
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(filepath.Join(root, "a"), []byte("changed"), 0o644)
	got, err := agentclient.ListWatched(ctx, openStream(t, sess), "", root, now-int64(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 || !slices.ContainsFunc(got, func(e agentproto.ListEntry) bool { return e.Path == "a" }) {
		t.Fatalf("a lost watch's listing misses the change: %+v", got)
	}
}
