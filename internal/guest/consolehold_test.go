package guest

import (
	"bytes"
	"strings"
	"testing"
)

// Init's log lines reach the console only once released, in order, and nothing is lost;
// later lines pass straight through.
func TestHeldConsoleWritesOnRelease(t *testing.T) {
	var out bytes.Buffer
	h := newHeldWriter(&out)
	log := ConsoleLogger(h)
	log.Info("first")
	log.Info("second")
	if out.Len() != 0 {
		t.Fatalf("lines reached the console before release: %q", out.String())
	}
	h.release()
	h.release() // idempotent
	got := out.String()
	if i, j := strings.Index(got, "msg=first"), strings.Index(got, "msg=second"); i < 0 || j < i {
		t.Fatalf("released console %q lacks the held lines in order", got)
	}
	log.Info("third")
	if !strings.Contains(out.String(), "msg=third") {
		t.Fatalf("a line after release was held: %q", out.String())
	}
}

// What is held is bounded: past maxHeldConsole, the held lines and the new one go out at
// once, in order.
func TestHeldConsoleIsBounded(t *testing.T) {
	var out bytes.Buffer
	h := newHeldWriter(&out)
	line := []byte(strings.Repeat("x", 1023) + "\n")
	for i := 0; i < maxHeldConsole/len(line); i++ {
		if _, err := h.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	if out.Len() != 0 {
		t.Fatalf("%d bytes written before the cap", out.Len())
	}
	if _, err := h.Write([]byte("over\n")); err != nil {
		t.Fatal(err)
	}
	if want := maxHeldConsole/len(line)*len(line) + len("over\n"); out.Len() != want || !strings.HasSuffix(out.String(), "over\n") {
		t.Fatalf("after the cap: %d bytes (want %d), suffix %q", out.Len(), want, out.String()[out.Len()-5:])
	}
}

// fatal's releaseConsole writes what init held, so a failed boot's console shows the
// lines before the error.
func TestReleaseConsoleFlushesInitLines(t *testing.T) {
	var out bytes.Buffer
	h := newHeldWriter(&out)
	setHeldConsole(h)
	defer setHeldConsole(nil)
	ConsoleLogger(h).Info("before the failure")
	releaseConsole()
	if !strings.Contains(out.String(), "before the failure") {
		t.Fatalf("releaseConsole left the line held: %q", out.String())
	}
}
