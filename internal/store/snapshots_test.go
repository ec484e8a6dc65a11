package store

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/model"
)

func testSnapshot(name string, im *model.Image) *model.Snapshot {
	return &model.Snapshot{ID: model.NewID(), Name: name, VMID: model.NewID(), VMName: "src",
		ImageID: im.ID, ImageName: im.Name, VCPU: 1, MemoryMiB: 512, SystemOverlayBytes: 1 << 30,
		WorkDiskBytes: 2 << 30, NAT: true, GuestIP: "172.30.0.2", MAC: "02:b4:ac:1e:00:02", VMM: "qemu",
		Accel: "tcg", Machine: "microvm", BootArgs: "console=ttyS0", Dir: "/s/" + name, SizeBytes: 4096,
		CreatedAt: time.Now().UTC().Round(time.Microsecond)}
}

func TestSnapshotsRoundTripAndDependents(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := testImage("img")
	if err := s.InsertImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	sn := testSnapshot("snap1", im)
	if err := s.InsertSnapshot(ctx, sn); err != nil {
		t.Fatal(err)
	}
	got, err := s.ResolveSnapshot(ctx, "snap1")
	if err != nil {
		t.Fatal(err)
	}
	got.CreatedAt = got.CreatedAt.UTC()
	if !reflect.DeepEqual(got, sn) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, sn)
	}
	if p, err := s.ResolveSnapshot(ctx, sn.ID[:6]); err != nil || p.ID != sn.ID {
		t.Fatalf("by prefix: %v %v", p, err)
	}
	if err := s.InsertSnapshot(ctx, testSnapshot("snap1", im)); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	other := testSnapshot("x", im)
	other.ImageID = strings.Repeat("0", 64)
	if err := s.InsertSnapshot(ctx, other); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown image: %v", err)
	}
	// The image cannot go while a snapshot uses it.
	if err := s.DeleteImage(ctx, im.ID); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "snap1") {
		t.Fatalf("deleting the snapshot's image: %v", err)
	}
	vm := testVM("fork1", 2, im)
	vm.SnapshotID = sn.ID
	if err := s.InsertVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.GetVM(ctx, vm.ID); v.SnapshotID != sn.ID {
		t.Fatalf("snapshot_id not stored: %q", v.SnapshotID)
	}
	if deps, err := s.VMsFromSnapshot(ctx, sn.ID); err != nil || len(deps) != 1 || deps[0].Name != "fork1" {
		t.Fatalf("dependents: %v %v", deps, err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID, false); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "fork1") {
		t.Fatalf("deleting a snapshot with a dependent: %v", err)
	}
	if _, err := s.GetSnapshot(ctx, sn.ID); err != nil {
		t.Fatalf("refused delete removed the row: %v", err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID, true); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID, true); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if list, err := s.ListSnapshots(ctx); err != nil || len(list) != 0 {
		t.Fatalf("list after delete: %v %v", list, err)
	}
}
