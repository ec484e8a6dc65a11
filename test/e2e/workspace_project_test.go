package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/imagebuild/debian"
	"banger/internal/imagecat"
	"banger/internal/testkit"
)

// devImage builds the catalog's dev image (debootstrap with its package list) in the
// test process — the daemon's namespace has no route to Debian — and imports it as "dev".
// The bundle is cached by package list and agent, so later runs only import it.
func (x *env) devImage(t *testing.T) {
	t.Helper()
	if _, _, code := x.cli(nil, "image", "show", "dev"); code == 0 {
		return
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		testkit.Missing(t, "the dev image needs debootstrap")
	}
	cat, err := imagecat.Load(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	dev, ok := cat.Lookup("dev")
	if !ok {
		t.Fatal("the catalog has no dev image")
	}
	agent, err := os.ReadFile(filepath.Join(x.bin, "banger-agent"))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	h.Write(agent)
	json.NewEncoder(h).Encode(dev.Source)
	key := hex.EncodeToString(h.Sum(nil))[:16]
	cached := filepath.Join(testkit.CacheDir(), "dev-bundle-"+key)
	if _, err := os.Stat(filepath.Join(cached, "manifest.json")); err != nil {
		work, err := os.MkdirTemp(testkit.CacheDir(), "dev-build-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(work)
		bundle, err := debian.Build(context.Background(), debian.Options{Suite: dev.Source.Ref, Packages: dev.Source.Packages,
			CacheDir: testkit.CacheDir(), AgentPath: filepath.Join(x.bin, "banger-agent"), WorkDir: work,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatalf("building the dev image: %v", err)
		}
		old, _ := filepath.Glob(filepath.Join(testkit.CacheDir(), "dev-bundle-*"))
		for _, o := range old {
			os.RemoveAll(o)
		}
		if err := os.Rename(bundle, cached); err != nil {
			t.Fatal(err)
		}
	}
	x.mustCLI(t, "image", "import", cached, "--name", "dev")
}

// goModuleSource fetches a module's source from the Go module proxy (host namespace) and
// returns a writable copy: a real project's checkout, not written here.
func goModuleSource(t *testing.T, mod string) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		testkit.Missing(t, "fetching a module needs go on the host")
	}
	cmd := exec.Command("go", "mod", "download", "-json", mod)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GO111MODULE=on")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", mod, err)
	}
	var info struct{ Dir string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		t.Fatalf("go mod download %s: %s", mod, out)
	}
	dst := filepath.Join(t.TempDir(), "src")
	if b, err := exec.Command("cp", "-r", info.Dir, dst).CombinedOutput(); err != nil {
		t.Fatalf("copying the module: %v %s", err, b)
	}
	if b, err := exec.Command("chmod", "-R", "u+w", dst).CombinedOutput(); err != nil {
		t.Fatalf("chmod: %v %s", err, b)
	}
	return dst
}

// A real project's own test suite (github.com/google/go-cmp from the module proxy) runs
// from its checkout in the dev image: output and exit code come back, a deliberately
// broken test makes the run fail, and the host checkout is byte-for-byte unchanged.
func TestWorkspaceRealProjectTestSuite(t *testing.T) {
	x := need(t)
	src := goModuleSource(t, "github.com/google/go-cmp@v0.6.0")
	x.devImage(t)
	before := treeDigest(t, src)
	goTest := []string{"vm", "run", "--rm", "-q", "--image", "dev", "--memory", "1G", "--vcpu", "2",
		"-e", "GOFLAGS=-mod=mod", "-e", "GOPROXY=off", "-e", "GOTOOLCHAIN=local", "-W", src, "--", "go", "test", "./cmp/..."}
	out, errOut, code := x.cli(nil, goTest...)
	t.Logf("go test: exit %d\n%s\n%s", code, out, tail(errOut, 20))
	if code != 0 || !strings.Contains(out, "ok  \tgithub.com/google/go-cmp/cmp\t") {
		t.Fatalf("go-cmp's tests did not pass in the VM: exit %d", code)
	}
	if got := treeDigest(t, src); got != before {
		t.Fatal("the host checkout changed")
	}

	broken := filepath.Join(t.TempDir(), "broken")
	copyTree(t, src, broken)
	if err := os.WriteFile(filepath.Join(broken, "cmp", "zz_broken_test.go"),
		[]byte("package cmp\n\nimport \"testing\"\n\nfunc TestDeliberatelyBroken(t *testing.T) { t.Fatal(\"deliberately broken\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	brokenBefore := treeDigest(t, broken)
	goTest[len(goTest)-5] = broken
	goTest[len(goTest)-1] = "./cmp"
	out, errOut, code = x.cli(nil, goTest...)
	if code == 0 || !strings.Contains(out, "deliberately broken") || !strings.Contains(out, "FAIL") {
		t.Fatalf("a broken test: exit %d\nstdout: %s\nstderr: %s", code, out, tail(errOut, 20))
	}
	if got := treeDigest(t, broken); got != brokenBefore {
		t.Fatal("the host checkout changed")
	}
}
