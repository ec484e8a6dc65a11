package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/errdefs"
)

func TestCheckTunAccessReportsUnopenableDeviceWithHint(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "tun")
	err := checkTunAccess(missing)
	if err == nil {
		t.Fatal("a missing tun device was reported accessible")
	}
	if !errors.Is(err, errdefs.ErrUnavailable) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error kind: %v", err)
	}
	if !strings.Contains(err.Error(), missing) || errdefs.HintOf(err) != TunHint {
		t.Fatalf("error %q hint %q", err, errdefs.HintOf(err))
	}
}

func TestCheckTunAccessAcceptsReadWritableDevice(t *testing.T) {
	// Any read-write openable file stands in for the clone device: only access is checked.
	p := filepath.Join(t.TempDir(), "tun")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkTunAccess(p); err != nil {
		t.Fatal(err)
	}
}
