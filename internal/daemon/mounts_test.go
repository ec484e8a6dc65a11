package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/rpc"
)

// vm.create with mounts stores them with HOSTDIR's symlinks resolved; bad mounts are
// invalid arguments naming --mount and leave no VM.
func TestCreateWithMounts(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.31.7.1/24", func(c *config.Config) { c.VMM = "qemu" })
	td.addImage(t, "img")
	dir := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	vm, err := td.create(api.VMCreateParams{Name: "m", Mounts: []model.Mount{{HostDir: link, GuestPath: "/src", ReadOnly: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []model.Mount{{HostDir: dir, GuestPath: "/src", ReadOnly: true}}; !slices.Equal(vm.Mounts, want) {
		t.Fatalf("mounts %+v, want %+v", vm.Mounts, want)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	for _, bad := range [][]model.Mount{
		{{HostDir: filepath.Join(dir, "missing"), GuestPath: "/x"}},
		{{HostDir: file, GuestPath: "/x"}},
		{{HostDir: "rel", GuestPath: "/x"}},
		{{HostDir: dir, GuestPath: "/proc"}},
		{{HostDir: dir, GuestPath: "/x"}, {HostDir: dir, GuestPath: "/x/y"}},
	} {
		_, err := td.create(api.VMCreateParams{Name: "bad", Mounts: bad})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "--mount") {
			t.Errorf("mounts %+v: %v", bad, err)
		}
	}
	if _, err := td.d.store.ResolveVM(context.Background(), "bad"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a refused create left a VM: %v", err)
	}
}

// Firecracker has no shared folders: the create is refused before anything exists.
func TestMountsRefusedUnderFirecracker(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.31.8.1/24", func(c *config.Config) { c.VMM = "firecracker" })
	td.addImage(t, "img")
	_, err := td.create(api.VMCreateParams{Name: "fc", Mounts: []model.Mount{{HostDir: t.TempDir(), GuestPath: "/src"}}})
	if err == nil || !strings.Contains(err.Error(), "--workspace") {
		t.Fatalf("mounts under firecracker: %v", err)
	}
	if _, err := td.d.store.ResolveVM(context.Background(), "fc"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a refused create left a VM: %v", err)
	}
}

// Only the daemon's own user or root may hand the daemon a host directory.
func TestAuthorizeMounts(t *testing.T) {
	if err := authorizeMounts(context.Background()); !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Errorf("no peer: %v", err)
	}
	self := rpc.WithPeer(context.Background(), &unix.Ucred{Uid: uint32(os.Geteuid())})
	if err := authorizeMounts(self); err != nil {
		t.Errorf("the daemon's own user: %v", err)
	}
	root := rpc.WithPeer(context.Background(), &unix.Ucred{Uid: 0})
	if err := authorizeMounts(root); err != nil {
		t.Errorf("root: %v", err)
	}
	other := rpc.WithPeer(context.Background(), &unix.Ucred{Uid: uint32(os.Geteuid()) + 4242})
	if err := authorizeMounts(other); !errors.Is(err, errdefs.ErrPermissionDenied) || !strings.Contains(err.Error(), "--mount") {
		t.Errorf("another user: %v", err)
	}
}
