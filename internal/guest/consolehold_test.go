package guest

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Init's records reach the console only once released, in order, with the time they
// were logged at, and nothing is lost; later records pass straight through.
func TestHeldConsoleWritesOnRelease(t *testing.T) {
	var out bytes.Buffer
	log, s := newHeldLogger(consoleHandler(&out))
	log.Info("first", "k", 1)
	logged := time.Now().Format("15:04:05.000")
	log.With("pid", 7).Info("second")
	time.Sleep(5 * time.Millisecond)
	if out.Len() != 0 {
		t.Fatalf("records reached the console before release: %q", out.String())
	}
	s.release()
	s.release() // idempotent
	got := out.String()
	i, j := strings.Index(got, "msg=first k=1"), strings.Index(got, "msg=second pid=7")
	if i < 0 || j < i {
		t.Fatalf("released console %q lacks the held records in order", got)
	}
	if !strings.Contains(got, "time="+logged[:8]) {
		t.Errorf("released records %q do not carry the time they were logged (%s)", got, logged)
	}
	log.Info("third")
	if !strings.Contains(out.String(), "msg=third") {
		t.Fatalf("a record after release was held: %q", out.String())
	}
}

// What is held is bounded: past maxHeldRecords, records go straight to the console.
func TestHeldConsoleIsBounded(t *testing.T) {
	var out bytes.Buffer
	log, s := newHeldLogger(consoleHandler(&out))
	for i := 0; i < maxHeldRecords; i++ {
		log.Info("held")
	}
	if out.Len() != 0 {
		t.Fatalf("%d bytes written before the cap", out.Len())
	}
	log.Info("over")
	if !strings.Contains(out.String(), "msg=over") {
		t.Fatalf("the record past the cap was held: %q", out.String())
	}
	s.release()
	if n := strings.Count(out.String(), "msg=held"); n != maxHeldRecords {
		t.Fatalf("%d held records written, want %d", n, maxHeldRecords)
	}
}

// fatal's releaseConsole writes what init held, so a failed boot's console shows the
// records before the error.
func TestReleaseConsoleFlushesInitRecords(t *testing.T) {
	var out bytes.Buffer
	log, s := newHeldLogger(consoleHandler(&out))
	setHeldConsole(s)
	defer setHeldConsole(nil)
	log.Error("before the failure", "err", fmt.Errorf("boom"))
	releaseConsole()
	if !strings.Contains(out.String(), "before the failure") {
		t.Fatalf("releaseConsole left the record held: %q", out.String())
	}
}
