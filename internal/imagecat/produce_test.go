package imagecat

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/imagestore"
	"banger/internal/model"
)

// TestSingleFlightOneDownload is the daemon's auto-pull path: five callers need the same
// missing image at once; one download and one import happen and all five get the image.
func TestSingleFlightOneDownload(t *testing.T) {
	files, entryFor := testBundle(t)
	srv := newBundleServer(t, files)
	srv.delay = 100 * time.Millisecond // keep the download in flight while all callers arrive
	e := entryFor(srv.URL)
	cache := t.TempDir()

	var (
		g       Group
		imports atomic.Int32
		wg      sync.WaitGroup
	)
	const callers = 5
	results := make([]*model.Image, callers)
	errs := make([]error, callers)
	progressSeen := make([]atomic.Int32, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = g.Do(context.Background(), e.Key(), func(ctx context.Context, report func(Progress)) (*model.Image, error) {
				work, err := os.MkdirTemp(cache, "work-")
				if err != nil {
					return nil, err
				}
				defer os.RemoveAll(work)
				dir, err := Produce(ctx, e, Env{CacheDir: cache, WorkDir: work, Log: quietLog()}, report)
				if err != nil {
					return nil, err
				}
				if _, err := imagestore.ReadManifest(filepath.Join(dir, imagestore.ManifestName)); err != nil {
					return nil, err
				}
				imports.Add(1)
				return &model.Image{ID: model.NewID(), Name: e.Name}, nil
			}, func(Progress) { progressSeen[i].Add(1) })
		}()
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if results[i] == nil || results[i].ID != results[0].ID {
			t.Fatalf("caller %d got %+v, caller 0 got %+v", i, results[i], results[0])
		}
	}
	for _, name := range []string{"vmlinux", "initrd.img", "rootfs.ext4"} {
		if n := srv.requestCount(name); n != 1 {
			t.Fatalf("%s downloaded %d times, want once", name, n)
		}
	}
	if n := imports.Load(); n != 1 {
		t.Fatalf("imported %d times, want once", n)
	}
	for i := range callers {
		if progressSeen[i].Load() == 0 {
			t.Errorf("caller %d saw no progress", i)
		}
	}
}

func TestProduceWritesIntoWorkDir(t *testing.T) {
	files, entryFor := testBundle(t)
	srv := newBundleServer(t, files)
	work := t.TempDir()
	dir, err := Produce(context.Background(), entryFor(srv.URL), Env{CacheDir: t.TempDir(), WorkDir: work, Log: quietLog()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(dir) != work {
		t.Fatalf("bundle %s not inside the work dir %s", dir, work)
	}
}

func TestProduceURLEntry(t *testing.T) {
	files, entryFor := testBundle(t)
	srv := newBundleServer(t, files)
	m := imagestore.Manifest{Schema: 1, Name: "remote", Version: "2", Arch: "x86_64", Files: entryFor(srv.URL).Source.Files}
	data, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	files["manifest.json"] = data
	e := URLEntry(srv.URL + "/bundle/")
	if e.Key() != srv.URL+"/bundle" {
		t.Fatalf("key of a bare URL entry = %q", e.Key())
	}
	dir, err := Produce(context.Background(), e, Env{CacheDir: t.TempDir(), WorkDir: t.TempDir(), Log: quietLog()}, nil)
	if err != nil {
		t.Fatalf("Produce(URLEntry): %v", err)
	}
	got, err := imagestore.ReadManifest(filepath.Join(dir, imagestore.ManifestName))
	if err != nil || got.Name != "remote" {
		t.Fatalf("manifest %+v, %v", got, err)
	}
}

func TestBuilderEntry(t *testing.T) {
	cases := []struct {
		builder, ref, name string
		wantName, wantRef  string
	}{
		{"tiny", "", "", "tiny", ""},
		{"tiny", "", "mini", "mini", ""},
		{"debian", "", "", "debian-bookworm", "bookworm"},
		{"debian", "trixie", "", "debian-trixie", "trixie"},
		{"oci", "docker.io/library/alpine:3.20", "", "alpine-3-20", "docker.io/library/alpine:3.20"},
		{"oci", "ghcr.io/org/tool", "", "tool", "ghcr.io/org/tool"},
	}
	for _, tc := range cases {
		e, err := BuilderEntry(tc.builder, tc.ref, tc.name)
		if err != nil {
			t.Errorf("BuilderEntry(%q, %q, %q): %v", tc.builder, tc.ref, tc.name, err)
			continue
		}
		if e.Name != tc.wantName || e.Source.Ref != tc.wantRef || e.Source.Builder != tc.builder || !e.IsBuilder() {
			t.Errorf("BuilderEntry(%q, %q, %q) = %+v", tc.builder, tc.ref, tc.name, e)
		}
	}
	bad := []struct{ builder, ref, field string }{
		{"nix", "", "builder"},
		{"tiny", "x", "ref"},
		{"debian", "Bookworm", "suite"},
		{"oci", "", "ref"},
		{"oci", "UPPER/Case!!", "ref"},
	}
	for _, tc := range bad {
		_, err := BuilderEntry(tc.builder, tc.ref, "")
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("BuilderEntry(%q, %q): want invalid %s, got %v", tc.builder, tc.ref, tc.field, err)
		}
	}
}

func TestProduceBuilderNeedsDirs(t *testing.T) {
	e, err := BuilderEntry("tiny", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Produce(context.Background(), e, Env{}, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("want invalid argument without dirs, got %v", err)
	}
}

func TestBuilderEntryWithPackages(t *testing.T) {
	e, err := BuilderEntryWithPackages("debian", "bookworm", "dev", []string{"git", "make"})
	if err != nil || e.Name != "dev" || strings.Join(e.Source.Packages, ",") != "git,make" {
		t.Fatalf("%+v %v", e, err)
	}
	for _, c := range []struct {
		builder string
		pkgs    []string
	}{{"tiny", []string{"git"}}, {"debian", []string{"Bad Name"}}} {
		if _, err := BuilderEntryWithPackages(c.builder, "", "", c.pkgs); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "packages") {
			t.Errorf("%s %v: %v", c.builder, c.pkgs, err)
		}
	}
	// The embedded catalog's dev image is a debian build with a toolchain.
	c, err := Load(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	dev, ok := c.Lookup("dev")
	if !ok || dev.Source.Builder != BuilderDebian || !slices.Contains(dev.Source.Packages, "build-essential") || !slices.Contains(dev.Source.Packages, "git") {
		t.Fatalf("dev entry: %+v", dev)
	}
}

func TestBuilderEntryWithKernel(t *testing.T) {
	e, err := BuilderEntryWithKernel("tiny", "", "", nil, "microvm")
	if err != nil || e.Name != "tiny-microvm" || e.Source.Kernel != "microvm" || e.SourceString() != "builder:tiny+kernel:microvm" {
		t.Fatalf("%+v %v", e, err)
	}
	if e, err := BuilderEntryWithKernel("tiny", "", "mine", nil, "microvm"); err != nil || e.Name != "mine" {
		t.Fatalf("named: %+v %v", e, err)
	}
	for _, k := range []string{"", "debian"} {
		if e, err := BuilderEntryWithKernel("tiny", "", "", nil, k); err != nil || e.Name != "tiny" || e.SourceString() != "builder:tiny" {
			t.Fatalf("kernel %q: %+v %v", k, e, err)
		}
	}
	for _, c := range []struct{ builder, ref, kernel string }{
		{"tiny", "", "vanilla"}, {"debian", "bookworm", "microvm"}, {"oci", "docker.io/library/alpine:3", "microvm"},
	} {
		_, err := BuilderEntryWithKernel(c.builder, c.ref, "", nil, c.kernel)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "kernel") || !strings.Contains(err.Error(), c.kernel) {
			t.Errorf("%s --kernel %s: %v", c.builder, c.kernel, err)
		}
	}
	c, err := Load(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := c.Lookup("tiny-microvm"); !ok || m.Source.Builder != BuilderTiny || m.Source.Kernel != "microvm" {
		t.Fatalf("catalog tiny-microvm: %+v", m)
	}
}

func TestKernelProgress(t *testing.T) {
	var got []Progress
	report := kernelProgress("tiny-microvm", func(p Progress) { got = append(got, p) })
	report("extract", 0)
	report("compile", 50)
	if len(got) != 2 || got[1].String() != "build tiny-microvm: kernel compile: 50 lines" || got[0].String() != "build tiny-microvm: kernel extract" {
		t.Fatalf("%v", got)
	}
	if kernelProgress("x", nil) != nil {
		t.Error("no progress wanted, yet a reporter")
	}
}
