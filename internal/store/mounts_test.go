package store

import (
	"context"
	"slices"
	"testing"

	"banger/internal/model"
)

// A VM's shared folders are stored (migration 7) and survive an update and a reopen.
func TestVMMountsRoundTrip(t *testing.T) {
	s, path := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "tiny")
	vm := testVM("m", 1, im)
	vm.Mounts = []model.Mount{{HostDir: "/nonexistent/banger-test/src", GuestPath: "/src", ReadOnly: true}, {HostDir: "/nonexistent/banger-test/data", GuestPath: "/data"}}
	if err := s.InsertVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, vm.ID)
	if err != nil || !slices.Equal(got.Mounts, vm.Mounts) {
		t.Fatalf("GetVM mounts %+v, %v; want %+v", got.Mounts, err, vm.Mounts)
	}
	got.Mounts = got.Mounts[:1]
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	plain := testVM("p", 2, im)
	if err := s.InsertVM(ctx, plain); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	again, err := s2.GetVM(ctx, vm.ID)
	if err != nil || !slices.Equal(again.Mounts, vm.Mounts[:1]) {
		t.Fatalf("after update and reopen: %+v, %v", again.Mounts, err)
	}
	if p, err := s2.GetVM(ctx, plain.ID); err != nil || p.Mounts != nil {
		t.Fatalf("a VM without mounts: %+v, %v", p.Mounts, err)
	}
}
