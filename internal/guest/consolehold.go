package guest

import (
	"io"
	"sync"
)

// The console is an emulated UART: under TCG every byte written to it is a trap into the
// VMM, and init's eight or so lines before the agent serves cost milliseconds of the one
// vCPU that the boot needs. So init holds its log lines in memory until the agent serves
// (or init fails or hands over to another init) and writes them then, in one go. The
// lines keep the time they were logged at; nothing is lost, only written later.

// maxHeldConsole bounds what is held: past it, lines go straight to the console.
const maxHeldConsole = 64 << 10

// heldWriter buffers writes until release, then writes the buffer and passes every
// later write through.
type heldWriter struct {
	mu       sync.Mutex
	w        io.Writer
	buf      []byte
	released bool
}

func newHeldWriter(w io.Writer) *heldWriter { return &heldWriter{w: w} }

func (h *heldWriter) Write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.released && len(h.buf)+len(b) <= maxHeldConsole {
		h.buf = append(h.buf, b...)
		return len(b), nil
	}
	if err := h.flushLocked(); err != nil {
		return 0, err
	}
	return h.w.Write(b)
}

// release writes what was held and stops holding. It is safe to call more than once.
func (h *heldWriter) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.released = true
	_ = h.flushLocked()
}

func (h *heldWriter) flushLocked() error {
	if len(h.buf) == 0 {
		return nil
	}
	_, err := h.w.Write(h.buf)
	h.buf = nil
	return err
}

// heldConsole is init's console while it holds lines; fatal releases it so a failing boot
// shows everything it logged before the error.
var (
	heldConsoleMu sync.Mutex
	heldConsole   *heldWriter
)

func setHeldConsole(h *heldWriter) {
	heldConsoleMu.Lock()
	defer heldConsoleMu.Unlock()
	heldConsole = h
}

// releaseConsole writes init's held lines, if any.
func releaseConsole() {
	heldConsoleMu.Lock()
	h := heldConsole
	heldConsoleMu.Unlock()
	if h != nil {
		h.release()
	}
}
