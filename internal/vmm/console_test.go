package vmm

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConsoleLogStaysBounded: a VMM writing far beyond the cap through the console FIFO
// leaves at most DefaultConsoleLogMax bytes in each of the two log files at every moment, the two
// files hold a contiguous suffix of the output, and the tail is its last lines.
func TestConsoleLogStaysBounded(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "console.log")
	const lines = 3_000_000 // about 21 MiB, ten times the cap
	cmd := exec.Command("/bin/sh", "-c", "seq 1 "+strconv.Itoa(lines)+"; echo LAST LINE; exec sleep 60")
	p, err := Launch(cmd, logPath, 0, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })

	largest := int64(0)
	deadline := time.Now().Add(60 * time.Second)
	for {
		for _, f := range []string{logPath, logPath + rotatedSuffix} {
			largest = max(largest, FileSize(f))
		}
		if b, _ := os.ReadFile(logPath); bytes.HasSuffix(b, []byte("LAST LINE\n")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the end of the output never reached the log")
		}
		time.Sleep(time.Millisecond)
	}
	if largest > DefaultConsoleLogMax {
		t.Errorf("a log file reached %d bytes, cap %d", largest, DefaultConsoleLogMax)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	total := int64(0)
	for _, e := range ents {
		names = append(names, e.Name())
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
	}
	if total > 2*DefaultConsoleLogMax+1024 {
		t.Errorf("the VM directory holds %d bytes (%v), more than two capped logs", total, names)
	}

	// What is kept is the newest output, in order and without gaps: numbers counting up
	// to the last one, then the end marker.
	lr, err := OpenLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var kept bytes.Buffer
	if err := lr.CopyTo(context.Background(), &kept, false); err != nil {
		t.Fatal(err)
	}
	lr.Close()
	if int64(kept.Len()) < DefaultConsoleLogMax {
		t.Errorf("only %d bytes kept, want at least the cap %d", kept.Len(), DefaultConsoleLogMax)
	}
	got := strings.Split(strings.TrimSuffix(kept.String(), "\n"), "\n")
	if got[len(got)-1] != "LAST LINE" {
		t.Fatalf("log does not end with the last line: %q", got[len(got)-3:])
	}
	want := lines
	for i := len(got) - 2; i >= 1; i-- { // got[0] may be cut by the rotation
		if got[i] != strconv.Itoa(want) {
			t.Fatalf("line %d of the kept log is %q, want %d: the kept output is not contiguous", i, got[i], want)
		}
		want--
	}

	tail := LogTail(logPath, 0, 3)
	if tail != strconv.Itoa(lines-1)+"\n"+strconv.Itoa(lines)+"\nLAST LINE" {
		t.Errorf("tail = %q", tail)
	}
}

// TestLogTailReadsOnlyTheEnd: the tail of a huge log (100 GiB apparent size, a 1 MiB line,
// escape sequences) is a few bounded, printable lines; reading the whole file, as the
// daemon once did, would not even fit in memory.
func TestLogTailReadsOnlyTheEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 30); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, 2); err != nil {
		t.Fatal(err)
	}
	f.WriteString("\n" + strings.Repeat("x", 1<<20) + "\n")
	f.WriteString("evil \x1b]0;owned\x07 \x1b[2J bidi \u202e end\n")
	f.WriteString("LAST LINE\r\n")
	f.Close()

	tail := LogTail(path, 0, 15)
	if len(tail) > 15*(tailLineBytes+8) {
		t.Errorf("tail is %d bytes", len(tail))
	}
	lines := strings.Split(tail, "\n")
	if lines[len(lines)-1] != "LAST LINE" {
		t.Errorf("tail does not end with the last line: %q", lines[len(lines)-1])
	}
	if strings.ContainsAny(tail, "\x1b\x07\r\u202e") {
		t.Errorf("control characters reached the tail: %q", tail)
	}
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "…xxx") || !strings.HasSuffix(lines[0], "xxx…") || len(lines[0]) > tailLineBytes+len("…") {
		t.Errorf("the end of the 1 MiB line is not there, cut and marked at both ends: %q", lines)
	}
	// An offset inside the file quotes only what follows it; one past the end (a rotated
	// log) counts from the start.
	if got := LogTail(path, FileSize(path)-len64("LAST LINE\r\n"), 15); got != "LAST LINE" {
		t.Errorf("tail after offset = %q", got)
	}
	if got := LogTail(path, FileSize(path)+10, 1); got != "LAST LINE" {
		t.Errorf("tail with a stale offset = %q", got)
	}
}

func len64(s string) int64 { return int64(len(s)) }

// TestLogFollowAcrossRotation: following a log goes on into the new file after a rotation
// and repeats nothing.
func TestLogFollowAcrossRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	l := openCappedLog(path, 10)
	l.Write([]byte("0123456789"))
	lr, err := OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer lr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- lr.CopyTo(ctx, &out, true) }()
	time.Sleep(2 * logPoll)
	l.Write([]byte("abcdefg"))
	deadline := time.Now().Add(10 * time.Second)
	for out.String() != "0123456789abcdefg" {
		if time.Now().After(deadline) {
			t.Fatalf("followed %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l.Close()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
