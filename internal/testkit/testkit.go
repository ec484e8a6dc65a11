// Package testkit gives tests what a brand-new machine can provide for itself: the shared
// cache the product's own fetchers fill (so a kernel is downloaded once per machine, not once
// per package), and the one rule for missing prerequisites — skip with a message on a
// laptop, fail under CI=true so a CI run cannot pass by skipping. Only tests import it.
//
// Nothing here names a path of one development machine or a kernel version: the guest kernel
// comes from Debian through apt, whatever its current ABI (package testkernel). This package
// imports only internal/errdefs of banger's, so every package's own tests can use it.
package testkit

import (
	"banger/internal/errdefs"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// InCI reports whether the tests run under CI, where a missing prerequisite is a failure.
func InCI() bool { return os.Getenv("CI") == "true" }

// CacheDir is the machine-wide cache shared by every test package and the e2e suite, under
// the temporary directory so a fresh TMPDIR means a cold cache. BANGER_TEST_CACHE overrides it.
func CacheDir() string {
	if d := os.Getenv("BANGER_TEST_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "banger-test-cache")
}

// Missing skips the test with msg, or fails it under CI=true.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatal(msg + " (required under CI=true)")
	}
	t.Skip(msg)
}

// Tool returns the path of a host program, or skips/fails through Missing.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "%s is not installed (scripts/install-deps.sh installs it): %v", name, err)
	}
	return p
}

// WorldDir creates a 0755 directory that other users (the unprivileged callers and daemons
// tests run as) can reach, and removes it when the test ends. It lives under the temporary
// directory unless that is private (TMPDIR=$(mktemp -d) is 0700), in which case /tmp, the
// one world-searchable temporary directory every Linux host has, is used instead.
func WorldDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp(WorldTempBase(t), prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// WorldTempBase is the temporary directory WorldDir creates directories in.
func WorldTempBase(t testing.TB) string {
	t.Helper()
	if base := os.TempDir(); worldSearchable(base) {
		return base
	}
	if !worldSearchable("/tmp") {
		Missing(t, "no world-searchable temporary directory: %s and /tmp are private", os.TempDir())
	}
	return "/tmp"
}

// worldSearchable reports whether every directory from / down to dir lets others pass.
func worldSearchable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// Within runs fn and fails the test if it has not returned after 30 s: for calls that must
// not block on hostile input (a FIFO, a stalled peer). It returns fn's error.
func Within(t testing.TB, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: still blocked after 30s", what)
		return nil
	}
}

// WantInvalidArgument fails the test unless err is an invalid argument whose message
// mentions each of mentions (the field, the bad value).
func WantInvalidArgument(t testing.TB, what string, err error, mentions ...string) {
	t.Helper()
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("%s: want invalid_argument, got %v", what, err)
	}
	for _, m := range mentions {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("%s: error %q does not name %q", what, err, m)
		}
	}
}
