package guest

import (
	"context"
	"log/slog"
	"sync"
)

// Init's log lines cost the boot twice under emulation: formatting (the first record
// through slog's text handler ~10 ms of the one vCPU, page faults and translation of
// reflection, fmt and time code) and writing to an emulated UART (a trap into the VMM per
// byte). So init holds its records, unformatted, until the agent serves (or init fails or
// hands over to another init) and then formats and writes them, while the agent answers
// the host. Records keep the time they were logged at; nothing is lost, only written later.

// maxHeldRecords bounds what is held: past it, records go straight to the console.
const maxHeldRecords = 256

// heldHandler passes records to next once released and holds them before.
type heldHandler struct {
	next slog.Handler
	s    *heldState
}

type heldState struct {
	mu       sync.Mutex
	released bool
	held     []heldRecord
}

type heldRecord struct {
	h slog.Handler
	r slog.Record
}

// newHeldLogger returns a logger over next that holds its records until release.
func newHeldLogger(next slog.Handler) (*slog.Logger, *heldState) {
	s := &heldState{}
	return slog.New(&heldHandler{next: next, s: s}), s
}

func (h *heldHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *heldHandler) Handle(ctx context.Context, r slog.Record) error {
	h.s.mu.Lock()
	if !h.s.released && len(h.s.held) < maxHeldRecords {
		h.s.held = append(h.s.held, heldRecord{h.next, r.Clone()})
		h.s.mu.Unlock()
		return nil
	}
	h.s.mu.Unlock()
	return h.next.Handle(ctx, r)
}

func (h *heldHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &heldHandler{next: h.next.WithAttrs(as), s: h.s}
}

func (h *heldHandler) WithGroup(name string) slog.Handler {
	return &heldHandler{next: h.next.WithGroup(name), s: h.s}
}

// release writes the held records, in order, and stops holding. A record logged while it
// runs waits for it (the lock), so order is kept. Safe to call more than once.
func (s *heldState) release() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, hr := range s.held {
		_ = hr.h.Handle(context.Background(), hr.r)
	}
	s.held = nil
	s.released = true
}

// heldConsole is init's while it holds records; fatal releases it so a failing boot shows
// everything it logged before the error.
var (
	heldConsoleMu sync.Mutex
	heldConsole   *heldState
)

func setHeldConsole(s *heldState) {
	heldConsoleMu.Lock()
	defer heldConsoleMu.Unlock()
	heldConsole = s
}

// releaseConsole writes init's held records, if any.
func releaseConsole() {
	heldConsoleMu.Lock()
	s := heldConsole
	heldConsoleMu.Unlock()
	s.release()
}
