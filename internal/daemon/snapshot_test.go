package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/rpc"
	"banger/internal/store"
)

// A VMM that cannot snapshot is a conflict naming it, and the VM runs on untouched.
func TestSnapshotOfAVMMThatCannotIsAConflict(t *testing.T) {
	td, _, _ := startFakeDaemon(t)
	if _, err := td.createRunning("nosnap"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	err := rpc.Call(ctx, td.cfg.Socket, api.MethodSnapshotCreate, api.SnapshotCreateParams{VM: "nosnap"}, nil)
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "cannot snapshot") {
		t.Fatalf("snapshot with the fake VMM: %v", err)
	}
	if vm, _ := showVM(td, "nosnap"); vm.State != model.VMRunning {
		t.Fatalf("state after a refused snapshot: %s", vm.State)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodSnapshotCreate, api.SnapshotCreateParams{VM: "nosnap", Name: "Bad Name"}, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad snapshot name: %v", err)
	}
	var list api.SnapshotListResult
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodSnapshotList, nil, &list); err != nil || len(list.Snapshots) != 0 {
		t.Fatalf("snapshots after refusals: %+v %v", list, err)
	}
	if ents, _ := os.ReadDir(td.d.snapshotsDir()); len(ents) != 0 {
		t.Fatalf("refused snapshots left files: %v", ents)
	}
	// Restoring from a snapshot that does not exist changes nothing; sizes cannot be
	// chosen for a restore.
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMCreate, api.VMCreateParams{Name: "r", FromSnapshot: "nope"}, nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("restore from a missing snapshot: %v", err)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMCreate, api.VMCreateParams{Name: "r", FromSnapshot: "x", Memory: "1G"}, nil); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("restore with a memory size: %v", err)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMFork, api.VMForkParams{VM: "nosnap", Count: api.MaxForkCount + 1}, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("fork count over the cap: %v", err)
	}
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMFork, api.VMForkParams{VM: "nosnap", Count: 2}, nil); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("fork with the fake VMM: %v", err)
	}
	if _, err := showVM(td, "nosnap-fork-1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a refused fork left a VM: %v", err)
	}
}

// What a daemon killed mid-snapshot leaves is settled at the next start: staging and
// row-less snapshot directories go, a snapshot with its row stays, and the VM the
// snapshot paused runs again.
func TestRestartAfterAnInterruptedSnapshot(t *testing.T) {
	stateDir := t.TempDir()
	h, drv := newFakeHelper(), &fakeDriver{binary: fakeVMMBinary(t)}
	td := startFakeDaemonAt(t, stateDir, h, drv, nil)
	td.addImage(t, "img")
	res, err := td.createRunning("src")
	if err != nil {
		t.Fatal(err)
	}
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMPause, api.VMRef{VM: "src"}, nil); err != nil {
		t.Fatal(err)
	}
	snapsDir := td.d.snapshotsDir()
	td.stop()
	// The snapshot in progress had paused src (its mark says so) and staged files.
	if err := os.WriteFile(filepath.Join(res.VM.Dir, snapshotPauseMark), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	staged := filepath.Join(snapsDir, snapshotTmpPrefix+model.NewID())
	orphan := filepath.Join(snapsDir, model.NewID())
	kept := filepath.Join(snapsDir, model.NewID())
	for _, dir := range []string{staged, orphan, kept} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, snapshotMemName), []byte("x"), 0o600)
	}
	st, err := store.Open(context.Background(), filepath.Join(stateDir, "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	sn := &model.Snapshot{ID: filepath.Base(kept), Name: "kept", ImageID: fakeImageID("img"), VCPU: 1, MemoryMiB: 128,
		VMM: "qemu", Dir: kept, CreatedAt: time.Now()}
	if err := st.InsertSnapshot(context.Background(), sn); err != nil {
		t.Fatal(err)
	}
	st.Close()

	td2 := startFakeDaemonAt(t, stateDir, h, drv, nil)
	for _, dir := range []string{staged, orphan} {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the restart: %v", filepath.Base(dir), err)
		}
	}
	if _, err := os.Stat(filepath.Join(kept, snapshotMemName)); err != nil {
		t.Errorf("a snapshot with its row lost its files: %v", err)
	}
	vm, err := showVM(td2, "src")
	if err != nil || vm.State != model.VMRunning {
		t.Fatalf("src after restart: %v, state %s (want running: the snapshot that paused it died)", err, vm.State)
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, snapshotPauseMark)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pause mark left: %v", err)
	}
	if err := syscall.Kill(vm.PID, 0); err != nil {
		t.Fatalf("src's VMM is gone: %v", err)
	}
	var del api.SnapshotResult
	if err := rpc.Call(context.Background(), td2.cfg.Socket, api.MethodSnapshotDelete, api.SnapshotDeleteParams{Snapshot: "kept"}, &del); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kept); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("snapshot rm left its files: %v", err)
	}
}
