package store

import (
	"context"
	"errors"
	"sync"
	"testing"

	"banger/internal/errdefs"
	"banger/internal/model"
)

func TestTransitionVMIsCompareAndSet(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "img")
	vm := testVM("cas", 1, im)
	vm.Creating, vm.AutoRemove = true, true
	mustVM(t, s, vm)

	// A legal move writes the lifecycle fields with the state.
	next := *vm
	next.State, next.PID, next.PIDStart, next.LastError = model.VMStarting, 77, 123456, ""
	if err := s.TransitionVM(ctx, &next, model.VMCreated); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != model.VMStarting || got.PID != 77 || got.PIDStart != 123456 || !got.Creating || !got.AutoRemove {
		t.Fatalf("after created→starting: %+v", got)
	}

	// The expected state is stale: nothing changes, and the error is a conflict.
	stale := *got
	stale.State, stale.LastError = model.VMStopped, "should not be written"
	if err := s.TransitionVM(ctx, &stale, model.VMCreated); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("stale expected state: %v, want conflict", err)
	}
	// An illegal move is refused before touching the database.
	illegal := *got
	illegal.State = model.VMCreated
	if err := s.TransitionVM(ctx, &illegal, model.VMStarting); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("starting→created: %v, want conflict", err)
	}
	if got, _ = s.GetVM(ctx, vm.ID); got.State != model.VMStarting || got.LastError != "" {
		t.Fatalf("a refused move changed the row: %+v", got)
	}
	// A move from deleting is never legal: a delete, once recorded, is only finished.
	del := *got
	del.State = model.VMDeleting
	if err := s.TransitionVM(ctx, &del, model.VMStarting); err != nil {
		t.Fatal(err)
	}
	back := del
	back.State = model.VMStopped
	if err := s.TransitionVM(ctx, &back, model.VMDeleting); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("deleting→stopped: %v, want conflict", err)
	}
	missing := testVM("ghost", 2, im)
	missing.State = model.VMStarting
	if err := s.TransitionVM(ctx, missing, model.VMCreated); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing vm: %v, want not found", err)
	}
}

// Two operations racing to move the same VM out of one state: exactly one wins.
func TestTransitionVMOneWinner(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "img")
	vm := testVM("race", 1, im)
	vm.State = model.VMStopped
	mustVM(t, s, vm)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for i := range 16 {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			next := *vm
			next.State = model.VMStarting
			if i%2 == 1 {
				next.State = model.VMDeleting
			}
			err := s.TransitionVM(ctx, &next, model.VMStopped)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, errdefs.ErrConflict):
				conflicts++
			default:
				t.Errorf("transition: %v", err)
			}
		}(i)
	}
	wg.Wait()
	if wins != 1 || conflicts != 15 {
		t.Fatalf("%d wins, %d conflicts; want 1 and 15", wins, conflicts)
	}
}
