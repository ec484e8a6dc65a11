package model_test

import (
	"errors"
	"testing"

	"banger/internal/errdefs"
	"banger/internal/model"
)

func TestVMStateMachine(t *testing.T) {
	legal := map[[2]model.VMState]bool{}
	for _, p := range [][2]model.VMState{
		{model.VMCreated, model.VMStarting}, {model.VMCreated, model.VMStopped}, {model.VMCreated, model.VMDeleting},
		{model.VMStarting, model.VMRunning}, {model.VMStarting, model.VMStopping}, {model.VMStarting, model.VMStopped},
		{model.VMStarting, model.VMError}, {model.VMStarting, model.VMDeleting},
		{model.VMRunning, model.VMStopping}, {model.VMRunning, model.VMStopped}, {model.VMRunning, model.VMDeleting},
		{model.VMRunning, model.VMPaused}, {model.VMPaused, model.VMRunning}, {model.VMPaused, model.VMStopping},
		{model.VMPaused, model.VMStopped}, {model.VMPaused, model.VMDeleting},
		{model.VMStopping, model.VMStopped}, {model.VMStopping, model.VMError}, {model.VMStopping, model.VMDeleting},
		{model.VMStopped, model.VMStarting}, {model.VMStopped, model.VMDeleting},
		{model.VMError, model.VMStarting}, {model.VMError, model.VMStopped}, {model.VMError, model.VMDeleting},
	} {
		legal[p] = true
	}
	for _, from := range model.VMStates() {
		for _, to := range model.VMStates() {
			want := legal[[2]model.VMState{from, to}] || from == to
			if got := model.ValidTransition(from, to); got != want {
				t.Errorf("ValidTransition(%s, %s) = %v, want %v", from, to, got, want)
			}
			err := model.CheckTransition(from, to)
			if want != (err == nil) || (!want && !errors.Is(err, errdefs.ErrConflict)) {
				t.Errorf("CheckTransition(%s, %s) = %v", from, to, err)
			}
		}
	}
	// A deleted VM never comes back; an unknown state is bad input, not a conflict.
	if model.ValidTransition(model.VMDeleting, model.VMRunning) {
		t.Error("deleting → running allowed")
	}
	if err := model.CheckTransition(model.VMRunning, "frozen"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unknown target state: %v", err)
	}
	if model.ValidTransition("bogus", model.VMStopped) {
		t.Error("transition from an unknown state allowed")
	}
}

func TestLiveStates(t *testing.T) {
	for _, s := range model.VMStates() {
		want := s == model.VMStarting || s == model.VMRunning || s == model.VMPaused || s == model.VMStopping
		if s.Live() != want {
			t.Errorf("%s.Live() = %v", s, s.Live())
		}
	}
}
