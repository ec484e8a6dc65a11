package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"banger/internal/errdefs"
)

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

type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	major, minor     int64
}

func layerTar(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, ModTime: mtime, Devmajor: e.major, Devminor: e.minor}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 && e.typ != tar.TypeReg && e.typ != 0 {
			h.Mode = 0o755
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func layer(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	data := layerTar(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testLayers is a three-layer image exercising what flattening must get right.
func testLayers(t *testing.T) []v1.Layer {
	return []v1.Layer{
		layer(t,
			entry{name: "etc/", typ: tar.TypeDir},
			entry{name: "etc/hostname", body: "base\n", mode: 0o644},
			entry{name: "etc/opaque/", typ: tar.TypeDir},
			entry{name: "etc/opaque/old.txt", body: "old\n", mode: 0o644},
			entry{name: "bin/", typ: tar.TypeDir},
			entry{name: "bin/tool", body: "#!/bin/sh\necho tool\n", mode: 0o755},
			entry{name: "to-delete.txt", body: "gone soon\n", mode: 0o644},
			entry{name: "data/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
			entry{name: "data/owned", body: "mine\n", mode: 0o640, uid: 1000, gid: 1000},
			entry{name: "secret", body: "shh\n", mode: 0o000},
		),
		layer(t,
			entry{name: ".wh.to-delete.txt", body: ""},
			entry{name: "etc/opaque/", typ: tar.TypeDir},
			entry{name: "etc/opaque/.wh..wh..opq", body: ""},
			entry{name: "etc/opaque/new.txt", body: "new\n", mode: 0o644},
			entry{name: "link", typ: tar.TypeSymlink, link: "etc/hostname"},
			entry{name: "bin/tool2", typ: tar.TypeLink, link: "bin/tool"},
			entry{name: "bin/su", body: "setuid\n", mode: 0o4755},
		),
		layer(t,
			entry{name: "etc/hostname", body: "top\n", mode: 0o644},
			entry{name: "dev/", typ: tar.TypeDir},
			entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
			entry{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		),
	}
}

// pushTestImage serves an in-process registry on loopback and pushes the image to it.
func pushTestImage(t *testing.T, layers []v1.Layer) string {
	t.Helper()
	return pushImage(t, layers, nil, nil)
}

// pushImage is pushTestImage with hooks: editConfig changes the config before the push, and
// a non-nil serve replaces the body of every blob and manifest download (what is the blob
// digest or the manifest tag, after "/blobs/" or "/manifests/") as a hostile registry or
// network path would.
func pushImage(t *testing.T, layers []v1.Layer, editConfig func(*v1.ConfigFile), serve func(what string, body []byte) []byte) string {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, what, ok := strings.Cut(r.URL.Path, "/blobs/")
		if !ok {
			_, what, ok = strings.Cut(r.URL.Path, "/manifests/")
		}
		if serve == nil || !ok || r.Method != http.MethodGet {
			reg.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			if k != "Content-Length" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(rec.Code)
		// Flushing first makes the response chunked: no Content-Length for the client to
		// refuse early, so only digest checks can catch the swap.
		w.(http.Flusher).Flush()
		w.Write(serve(what, rec.Body.Bytes()))
	}))
	t.Cleanup(srv.Close)
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	if editConfig != nil {
		editConfig(cfg)
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/test/rootfs:v1"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("pushing test image: %v", err)
	}
	return ref
}

func debugfs(t *testing.T, image, cmd string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", cmd, image).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v: %s", cmd, err, out)
	}
	// Drop the version banner debugfs prints first.
	_, rest, _ := strings.Cut(string(out), "\n")
	return rest
}

func TestBuildRootfsFromRegistry(t *testing.T) {
	requireTool(t, "mkfs.ext4")
	requireTool(t, "debugfs")
	ref := pushTestImage(t, testLayers(t))
	out := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := BuildRootfs(context.Background(), ref, Options{Out: out}); err != nil {
		t.Fatalf("BuildRootfs: %v", err)
	}

	if got := debugfs(t, out, "cat /etc/hostname"); got != "top\n" {
		t.Errorf("/etc/hostname = %q, want the top layer's", got)
	}
	if got := debugfs(t, out, "cat /bin/tool"); got != "#!/bin/sh\necho tool\n" {
		t.Errorf("/bin/tool = %q", got)
	}
	if got := debugfs(t, out, "stat /to-delete.txt"); !strings.Contains(got, "File not found") {
		t.Errorf("whited-out file still present: %s", got)
	}
	opaque := debugfs(t, out, "ls /etc/opaque")
	if !strings.Contains(opaque, "new.txt") || strings.Contains(opaque, "old.txt") {
		t.Errorf("opaque dir lists %q, want only new.txt", opaque)
	}
	if got := debugfs(t, out, "stat /link"); !strings.Contains(got, `Fast link dest: "etc/hostname"`) {
		t.Errorf("symlink: %s", got)
	}
	if got := debugfs(t, out, "stat /bin/tool2"); !strings.Contains(got, "Links: 2") {
		t.Errorf("hardlink not sharing the inode: %s", got)
	}
	checks := map[string][]string{
		"/data":       {"Mode:  0750", "User:  1000", "Group:  1000"},
		"/data/owned": {"Mode:  0640", "User:  1000"},
		"/secret":     {"Mode:  0000", "User:     0"},
		"/bin/su":     {"Mode:  04755"},
		"/tmp":        {"Mode:  01777"},
		"/dev/null":   {"Type: character special", "Mode:  0666"},
		"/":           {"Mode:  0755", "User:     0"},
	}
	for p, wants := range checks {
		got := debugfs(t, out, "stat "+p)
		for _, w := range wants {
			if !strings.Contains(got, w) {
				t.Errorf("stat %s lacks %q:\n%s", p, w, got)
			}
		}
	}
	if got := debugfs(t, out, "stat /dev/null"); !strings.Contains(got, "Device major/minor number: 01:03") {
		t.Errorf("/dev/null device numbers: %s", got)
	}
}

func TestBuildRootfsNotFound(t *testing.T) {
	ref := pushTestImage(t, testLayers(t)[:1])
	missing := strings.Replace(ref, ":v1", ":nope", 1)
	err := BuildRootfs(context.Background(), missing, Options{Out: filepath.Join(t.TempDir(), "r.ext4")})
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing tag: want not found, got %v", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	ctx := context.Background()
	if err := BuildRootfs(ctx, "Not A Ref!!", Options{Out: "x"}); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "ref") {
		t.Errorf("bad ref: %v", err)
	}
	if err := BuildRootfs(ctx, "alpine", Options{Out: "x", Platform: "windows/amd64"}); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "platform") {
		t.Errorf("bad platform: %v", err)
	}
	if err := BuildRootfs(ctx, "alpine", Options{}); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "out") {
		t.Errorf("no out: %v", err)
	}
}

func TestUnpackRefusesSymlinkEscape(t *testing.T) {
	outside := t.TempDir()
	stream := layerTar(t,
		entry{name: "esc", typ: tar.TypeSymlink, link: outside},
		entry{name: "esc/pwned", body: "x", mode: 0o644},
	)
	_, err := unpack(context.Background(), bytes.NewReader(stream), t.TempDir())
	if err == nil {
		t.Fatal("unpack followed a symlink out of the staging dir")
	}
	if _, serr := os.Stat(filepath.Join(outside, "pwned")); !os.IsNotExist(serr) {
		t.Fatalf("file written outside the staging dir (unpack error: %v)", err)
	}
}

func TestUnpackRefusesDotDot(t *testing.T) {
	stream := layerTar(t, entry{name: "a/../../evil", body: "x", mode: 0o644})
	if _, err := unpack(context.Background(), bytes.NewReader(stream), t.TempDir()); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("want invalid argument for a climbing path, got %v", err)
	}
}

func TestImageName(t *testing.T) {
	cases := map[string]string{
		"docker.io/library/alpine:3.20": "alpine-3-20",
		"alpine":                        "alpine",
		"ghcr.io/org/my_tool:V1.2":      "my-tool-v1-2",
		"localhost:5000/x/y@sha256:" + strings.Repeat("a", 64): "y",
	}
	for ref, want := range cases {
		r, err := ParseRef(ref, false)
		if err != nil {
			t.Fatalf("ParseRef(%q): %v", ref, err)
		}
		if got := ImageName(r); got != want {
			t.Errorf("ImageName(%q) = %q, want %q", ref, got, want)
		}
	}
}
