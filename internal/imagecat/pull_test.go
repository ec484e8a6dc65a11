package imagecat

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/imagestore"
	"banger/internal/model"
)

// bundleServer serves bundle files over loopback HTTP with Range support and records what
// it was asked for.
type bundleServer struct {
	*httptest.Server
	files map[string][]byte

	mu          sync.Mutex
	requests    map[string]int
	ranges      []string
	bytesServed int64
	// cutFirst makes the first request for this file send half the bytes, then drop the
	// connection.
	cutFirst string
	cut      bool
	// delay slows every response so concurrent callers overlap.
	delay time.Duration
}

func newBundleServer(t *testing.T, files map[string][]byte) *bundleServer {
	t.Helper()
	s := &bundleServer{files: files, requests: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *bundleServer) serve(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/bundle/")
	data, ok := s.files[name]
	s.mu.Lock()
	s.requests[name]++
	if rg := r.Header.Get("Range"); rg != "" {
		s.ranges = append(s.ranges, name+" "+rg)
	}
	cut := name == s.cutFirst && !s.cut
	if cut {
		s.cut = true
	}
	delay := s.delay
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	if cut {
		half := len(data) / 2
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data[:half])
		w.(http.Flusher).Flush()
		s.count(int64(half))
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	cw := &countWriter{ResponseWriter: w, s: s}
	http.ServeContent(cw, r, name, time.Time{}, bytes.NewReader(data))
}

func (s *bundleServer) count(n int64) {
	s.mu.Lock()
	s.bytesServed += n
	s.mu.Unlock()
}

type countWriter struct {
	http.ResponseWriter
	s *bundleServer
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.s.count(int64(n))
	return n, err
}

func (s *bundleServer) requestCount(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[name]
}

func (s *bundleServer) rangeRequests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// testBundle returns bundle files and a catalog entry pointing at srv.
func testBundle(t *testing.T) (map[string][]byte, func(base string) Entry) {
	files := map[string][]byte{
		"vmlinux":     randomBytes(t, 300<<10),
		"initrd.img":  randomBytes(t, 50<<10),
		"rootfs.ext4": randomBytes(t, 1<<20),
	}
	return files, func(base string) Entry {
		return Entry{Name: "test", Version: "1", Arch: "x86_64", KernelArgs: "console=ttyS0",
			Source: Source{URL: base + "/bundle", Files: []model.File{
				{Role: model.RoleKernel, Name: "vmlinux", Size: int64(len(files["vmlinux"])), SHA256: digest(files["vmlinux"])},
				{Role: model.RoleInitrd, Name: "initrd.img", Size: int64(len(files["initrd.img"])), SHA256: digest(files["initrd.img"])},
				{Role: model.RoleRootfs, Name: "rootfs.ext4", Size: int64(len(files["rootfs.ext4"])), SHA256: digest(files["rootfs.ext4"])},
			}}}
	}
}

func testPuller(t *testing.T) *Puller {
	return &Puller{CacheDir: t.TempDir(), Backoff: 20 * time.Millisecond, Log: quietLog()}
}

func quietLog() *slog.Logger { return slog.New(slog.NewJSONHandler(io.Discard, nil)) }

func checkBundle(t *testing.T, dir string, files map[string][]byte, e Entry) {
	t.Helper()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("bundle file %s: %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("bundle file %s differs from the served one", name)
		}
	}
	m, err := imagestore.ReadManifest(filepath.Join(dir, imagestore.ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != e.Name || m.Version != e.Version || m.KernelArgs != e.KernelArgs || len(m.Files) != 3 {
		t.Fatalf("manifest = %+v", m)
	}
}

func TestPullVerifiesAndReportsProgress(t *testing.T) {
	files, entryFor := testBundle(t)
	srv := newBundleServer(t, files)
	p := testPuller(t)
	e := entryFor(srv.URL)

	var (
		mu     sync.Mutex
		events []Progress
	)
	dir, err := p.Pull(context.Background(), e, func(pr Progress) {
		mu.Lock()
		events = append(events, pr)
		mu.Unlock()
	})
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	checkBundle(t, dir, files, e)

	if len(events) == 0 {
		t.Fatal("no progress reported")
	}
	var total int64
	for _, f := range e.Source.Files {
		total += f.Size
	}
	var prev int64 = -1
	for _, ev := range events {
		if ev.Stage != StageDownload || ev.Total != total {
			t.Fatalf("unexpected event %+v (total %d)", ev, total)
		}
		if ev.Done < prev {
			t.Fatalf("progress went backwards: %d after %d", ev.Done, prev)
		}
		prev = ev.Done
	}
	if last := events[len(events)-1]; last.Done != last.Total {
		t.Fatalf("final progress %d/%d", last.Done, last.Total)
	}
	if entries, _ := os.ReadDir(filepath.Join(p.CacheDir, "partial")); len(entries) != 0 {
		t.Fatalf("partial files left behind: %v", entries)
	}
}

func TestPullDigestMismatch(t *testing.T) {
	files, entryFor := testBundle(t)
	srv := newBundleServer(t, files)
	p := testPuller(t)
	e := entryFor(srv.URL)
	wrong := digest([]byte("something else"))
	e.Source.Files[2].SHA256 = wrong

	dir, err := p.Pull(context.Background(), e, nil)
	if err == nil {
		t.Fatalf("Pull succeeded with a wrong digest (dir %s)", dir)
	}
	var dm *DigestMismatchError
	if !errors.As(err, &dm) {
		t.Fatalf("error %v is not a DigestMismatchError", err)
	}
	msg := err.Error()
	for _, want := range []string{"digest mismatch for rootfs.ext4", wrong, digest(files["rootfs.ext4"])} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(p.CacheDir, "bundles")); len(entries) != 0 {
		t.Fatalf("bundle dir left behind after failure: %v", entries)
	}
	if _, err := os.Stat(filepath.Join(p.CacheDir, "partial", wrong+".part")); !os.IsNotExist(err) {
		t.Fatalf("bad partial file not removed: %v", err)
	}
	// A digest mismatch is not retried: the content is wrong, not the network.
	if n := srv.requestCount("rootfs.ext4"); n != 1 {
		t.Fatalf("rootfs.ext4 requested %d times, want 1", n)
	}
}

func TestPullSizeMismatch(t *testing.T) {
	files, entryFor := testBundle(t)
	srv := newBundleServer(t, files)
	p := testPuller(t)
	e := entryFor(srv.URL)
	e.Source.Files[1].Size -= 10 // server has more bytes than the catalog says

	_, err := p.Pull(context.Background(), e, nil)
	var sm *SizeMismatchError
	if !errors.As(err, &sm) || sm.File != "initrd.img" {
		t.Fatalf("want size mismatch for initrd.img, got %v", err)
	}
}

func TestPullResumesAfterConnectionDrop(t *testing.T) {
	files, entryFor := testBundle(t)
	srv := newBundleServer(t, files)
	srv.cutFirst = "rootfs.ext4"
	p := testPuller(t)
	e := entryFor(srv.URL)

	dir, err := p.Pull(context.Background(), e, nil)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	checkBundle(t, dir, files, e)

	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.requests["rootfs.ext4"] != 2 {
		t.Fatalf("rootfs.ext4 requested %d times, want 2", srv.requests["rootfs.ext4"])
	}
	wantRange := "rootfs.ext4 bytes=" + strconv.Itoa(len(files["rootfs.ext4"])/2) + "-"
	if len(srv.ranges) != 1 || srv.ranges[0] != wantRange {
		t.Fatalf("range requests = %q, want [%q]", srv.ranges, wantRange)
	}
	var size int64
	for _, b := range files {
		size += int64(len(b))
	}
	if srv.bytesServed >= 2*size || srv.bytesServed < size {
		t.Fatalf("server sent %d bytes for a %d-byte bundle", srv.bytesServed, size)
	}
}

func TestPullResumesAcrossCalls(t *testing.T) {
	files, entryFor := testBundle(t)
	srv := newBundleServer(t, files)
	p := testPuller(t)
	e := entryFor(srv.URL)
	rootfs := e.Source.Files[2]

	// A previous daemon run left half of rootfs.ext4 behind.
	partial := filepath.Join(p.CacheDir, "partial")
	if err := os.MkdirAll(partial, 0o755); err != nil {
		t.Fatal(err)
	}
	half := files["rootfs.ext4"][:rootfs.Size/2]
	if err := os.WriteFile(filepath.Join(partial, rootfs.SHA256+".part"), half, 0o644); err != nil {
		t.Fatal(err)
	}
	dir, err := p.Pull(context.Background(), e, nil)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	checkBundle(t, dir, files, e)
	if r := srv.rangeRequests(); len(r) != 1 {
		t.Fatalf("range requests = %q, want one", r)
	}
}

func TestPullNotFound(t *testing.T) {
	files, entryFor := testBundle(t)
	served := map[string][]byte{"vmlinux": files["vmlinux"], "rootfs.ext4": files["rootfs.ext4"]}
	srv := newBundleServer(t, served)
	p := testPuller(t)
	_, err := p.Pull(context.Background(), entryFor(srv.URL), nil)
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "initrd.img") {
		t.Fatalf("want not-found naming initrd.img, got %v", err)
	}
	if n := srv.requestCount("initrd.img"); n != 1 {
		t.Fatalf("a 404 was retried %d times", n)
	}
}

func TestPullURLReadsManifest(t *testing.T) {
	files, entryFor := testBundle(t)
	srv := newBundleServer(t, files)
	e := entryFor(srv.URL)
	m := imagestore.Manifest{Schema: 1, Name: "remote", Version: "2", Arch: "x86_64", KernelArgs: "quiet", Files: e.Source.Files}
	data, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	files["manifest.json"] = data
	p := testPuller(t)

	dir, err := p.PullURL(context.Background(), srv.URL+"/bundle/", "renamed", nil)
	if err != nil {
		t.Fatalf("PullURL: %v", err)
	}
	delete(files, "manifest.json")
	checkBundle(t, dir, files, Entry{Name: "renamed", Version: "2", KernelArgs: "quiet"})
}

// requireTool skips when a host tool is missing, except in CI where that is a failure.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not available: %v", name, err)
	}
	return p
}

// TestPullThenImport runs the daemon's path end to end: a real-looking bundle is served,
// pulled, verified and handed to imagestore.ImportBundle.
func TestPullThenImport(t *testing.T) {
	mkfs := requireTool(t, "mkfs.ext4")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs.ext4")
	if out, err := exec.Command(mkfs, "-q", "-F", rootfs, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	rootfsData, err := os.ReadFile(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	// An x86_64 ELF executable header is what the store checks a vmlinux for.
	kernel := make([]byte, 8192)
	copy(kernel, "\x7fELF\x02\x01\x01")
	kernel[16], kernel[18] = 2, 62
	initrd := append([]byte("070701"), make([]byte, 500)...)
	files := map[string][]byte{"vmlinux": kernel, "initrd.img": initrd, "rootfs.ext4": rootfsData}
	srv := newBundleServer(t, files)
	e := Entry{Name: "e2e", Version: "1", Arch: "x86_64", KernelArgs: "console=ttyS0",
		Source: Source{URL: srv.URL + "/bundle", Files: []model.File{
			{Role: model.RoleKernel, Name: "vmlinux", Size: int64(len(kernel)), SHA256: digest(kernel)},
			{Role: model.RoleInitrd, Name: "initrd.img", Size: int64(len(initrd)), SHA256: digest(initrd)},
			{Role: model.RoleRootfs, Name: "rootfs.ext4", Size: int64(len(rootfsData)), SHA256: digest(rootfsData)},
		}}}
	dir, err := testPuller(t).Pull(context.Background(), e, nil)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	img, err := imagestore.ImportBundle(context.Background(), filepath.Join(tmp, "images"), dir, "")
	if err != nil {
		t.Fatalf("ImportBundle of the pulled bundle: %v", err)
	}
	if img.Name != "e2e" || img.KernelArgs != "console=ttyS0" || len(img.Files) != 3 {
		t.Fatalf("imported image %+v", img)
	}
}
