package debian

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"banger/internal/errdefs"
	"banger/internal/imagestore"
	"banger/internal/testkit"
)

func agentFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(p, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidate(t *testing.T) {
	agent := agentFile(t)
	ok := Options{CacheDir: "/c", WorkDir: "/w", AgentPath: agent}
	o := ok
	if err := o.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if o.Suite != DefaultSuite || o.Mirror != DefaultMirror {
		t.Fatalf("defaults not filled: %+v", o)
	}
	bad := []struct {
		field  string
		mutate func(*Options)
	}{
		{"suite", func(o *Options) { o.Suite = "Bookworm" }},
		{"suite", func(o *Options) { o.Suite = "book worm" }},
		{"suite", func(o *Options) { o.Suite = "../x" }},
		{"debian_mirror", func(o *Options) { o.Mirror = "ftp://deb.debian.org/debian" }},
		{"debian_mirror", func(o *Options) { o.Mirror = "deb.debian.org/debian" }},
		{"debian_mirror", func(o *Options) { o.Mirror = "http://user:pw@mirror/debian" }},
		{"cache_dir", func(o *Options) { o.CacheDir = "" }},
		{"work_dir", func(o *Options) { o.WorkDir = "" }},
		{"agent", func(o *Options) { o.AgentPath = filepath.Join(t.TempDir(), "missing") }},
	}
	for _, tc := range bad {
		o := ok
		tc.mutate(&o)
		err := o.Validate()
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("%+v: want invalid argument naming %s, got %v", o, tc.field, err)
		}
	}
	o = ok
	o.Suite, o.Mirror = "trixie", "https://mirror.example.org/debian/"
	if err := o.Validate(); err != nil {
		t.Fatalf("https mirror and trixie: %v", err)
	}
}

func TestDebootstrapArgs(t *testing.T) {
	o := Options{Suite: "bookworm", Mirror: "http://mirror.example/debian"}
	args := debootstrapArgs(o, "/work/root", "/cache/debootstrap/bookworm")
	n := len(args)
	if n < 3 || !slices.Equal(args[n-3:], []string{"bookworm", "/work/root", "http://mirror.example/debian"}) {
		t.Fatalf("positional args wrong: %q", args)
	}
	for _, want := range []string{"--variant=minbase", "--cache-dir=/cache/debootstrap/bookworm", "--arch=amd64"} {
		if !slices.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	var include string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--include="); ok {
			include = v
		}
	}
	for _, pkg := range []string{"ca-certificates", "iproute2"} {
		if !slices.Contains(strings.Split(include, ","), pkg) {
			t.Errorf("--include=%s lacks %s", include, pkg)
		}
	}
	if strings.Contains(include, "linux-image") || strings.Contains(include, "systemd") {
		t.Errorf("--include=%s pulls a kernel or init into the rootfs", include)
	}
}

func TestFinishTree(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"var/cache/apt/archives/x_1_amd64.deb", "var/lib/apt/lists/deb.debian.org_dists_Release", "etc/keep"} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := finishTree(root, "bookworm"); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"var/cache/apt/archives/x_1_amd64.deb", "var/lib/apt/lists/deb.debian.org_dists_Release"} {
		if _, err := os.Stat(filepath.Join(root, gone)); !os.IsNotExist(err) {
			t.Errorf("%s not trimmed", gone)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(b) != "debian-bookworm\n" {
		t.Errorf("hostname = %q", b)
	}
}

// TestBuildDebian runs a real debootstrap against a Debian mirror: it needs root and the
// network, takes minutes, and so runs only when BANGER_TEST_DEBIAN=1.
func TestBuildDebian(t *testing.T) {
	if os.Getenv("BANGER_TEST_DEBIAN") != "1" {
		t.Skip("set BANGER_TEST_DEBIAN=1 to run debootstrap against a Debian mirror (needs root and network)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("BANGER_TEST_DEBIAN=1 needs root")
	}
	tmp := t.TempDir()
	cache := testkit.CacheDir()
	dir, err := Build(context.Background(), Options{Suite: "bookworm", Mirror: os.Getenv("BANGER_DEBIAN_MIRROR"),
		CacheDir: cache, WorkDir: filepath.Join(tmp, "work"), AgentPath: agentFile(t)})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	img, err := imagestore.ImportBundle(context.Background(), filepath.Join(tmp, "images"), dir, "")
	if err != nil {
		t.Fatalf("importing the debian bundle: %v", err)
	}
	if img.Name != "debian-bookworm" {
		t.Fatalf("image %+v", img)
	}
}

func TestPackagesGoIntoTheIncludeList(t *testing.T) {
	o := Options{Suite: "bookworm", Mirror: "http://mirror.example/debian", Packages: []string{"build-essential", "git", "procps", "g++"}}
	var include string
	for _, a := range debootstrapArgs(o, "/r", "/c") {
		if v, ok := strings.CutPrefix(a, "--include="); ok {
			include = v
		}
	}
	got := strings.Split(include, ",")
	for _, want := range []string{"ca-certificates", "build-essential", "git", "g++"} {
		if !slices.Contains(got, want) {
			t.Errorf("--include=%s lacks %s", include, want)
		}
	}
	if n := strings.Count(include, "procps"); n != 1 {
		t.Errorf("procps listed %d times: %s", n, include)
	}
}

func TestValidatePackages(t *testing.T) {
	for _, bad := range [][]string{{"Git"}, {"-x"}, {"a b"}, {"a,b"}, {"git", "git"}, {"../x"}, {""}} {
		err := ValidatePackages("packages", bad)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "packages") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if err := ValidatePackages("packages", []string{"build-essential", "python3", "libc6-dev", "g++", "golang-1.19-go"}); err != nil {
		t.Error(err)
	}
}
