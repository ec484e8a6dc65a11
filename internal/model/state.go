package model

import (
	"slices"

	"banger/internal/errdefs"
)

// VMDeleting is the intent to delete: recorded before any step of a delete runs, so a
// crash or an unreachable root helper leaves a row that says the delete is unfinished
// (its guest IP stays reserved until the tap and NAT rule are really gone).
const VMDeleting VMState = "deleting"

// vmTransitions is the VM state machine: every state and the states it may move to. It is
// the one place lifecycle rules live; the store refuses any move not listed here. A state
// moving to itself is always allowed (recording the VMM's pid while starting, say).
//
//	created  → starting (boot), stopped (--no-start), deleting (create undone)
//	starting → running, stopping, stopped (boot failed, undone), error, deleting
//	running  → paused, stopping, stopped (VMM exited on its own), deleting
//	paused   → running (resumed), stopping, stopped (VMM exited), deleting
//	stopping → stopped, error, deleting
//	stopped  → starting, deleting
//	error    → starting, stopped, deleting
//	deleting → (terminal: the row is removed once every step is done)
var vmTransitions = map[VMState][]VMState{
	VMCreated:  {VMStarting, VMStopped, VMDeleting},
	VMStarting: {VMRunning, VMStopping, VMStopped, VMError, VMDeleting},
	VMRunning:  {VMPaused, VMStopping, VMStopped, VMDeleting},
	VMPaused:   {VMRunning, VMStopping, VMStopped, VMDeleting},
	VMStopping: {VMStopped, VMError, VMDeleting},
	VMStopped:  {VMStarting, VMDeleting},
	VMError:    {VMStarting, VMStopped, VMDeleting},
	VMDeleting: {},
}

// VMStates lists every state, in lifecycle order.
func VMStates() []VMState {
	return []VMState{VMCreated, VMStarting, VMRunning, VMPaused, VMStopping, VMStopped, VMError, VMDeleting}
}

// ValidTransition reports whether a VM in state from may move to state to.
func ValidTransition(from, to VMState) bool {
	next, ok := vmTransitions[from]
	if !ok {
		return false
	}
	if _, known := vmTransitions[to]; !known {
		return false
	}
	return from == to || slices.Contains(next, to)
}

// CheckTransition is ValidTransition as an error: a conflict naming both states.
func CheckTransition(from, to VMState) error {
	if ValidTransition(from, to) {
		return nil
	}
	if _, known := vmTransitions[to]; !known {
		return errdefs.InvalidArgument("state", string(to), "is not a VM state")
	}
	return errdefs.New(errdefs.ErrConflict, "a vm cannot go from %s to %s", from, to)
}

// Live reports whether a VM in this state may have a VMM process: its tap and NAT rule
// are wanted. Reconcile removes network objects of every VM not in a live state. A paused
// VM's VMM runs (its vCPUs are stopped), so it keeps its network.
func (s VMState) Live() bool {
	return s == VMStarting || s == VMRunning || s == VMPaused || s == VMStopping
}

// Settled reports whether the VM's VMM, if any, is the one its row records and no start or
// stop is under way: running or paused.
func (s VMState) Settled() bool {
	return s == VMRunning || s == VMPaused
}
