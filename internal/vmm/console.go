package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// A VMM's serial console and its own stdout/stderr are guest-controlled and unbounded: a
// guest running `yes > /dev/ttyS0` writes for as long as it likes. So the VMM never writes
// the log file itself. It writes into a FIFO in the VM's directory, and the daemon drains
// the FIFO into a size-capped log that rotates once: Spec.LogPath holds the newest output,
// Spec.LogPath+".1" the Spec.LogMax bytes before it, so at most 2×LogMax bytes are on disk
// at any time, whether or not the daemon runs.
//
// VMMs outlive the daemon. While no daemon reads the FIFO the VMM's writes fail with EPIPE
// (both QEMU and Firecracker ignore SIGPIPE) and that output is dropped; the next daemon
// re-opens the FIFO when it re-adopts the VMM (Process.AttachConsole) and the log goes on.
// A drain that cannot keep up fills the FIFO, and the VMM's writes wait for room (QEMU holds
// the guest's UART meanwhile): a spamming guest slows itself down, never the host.

const (
	// ConsolePipeName is the FIFO in a VM's directory that the VMM writes its console into.
	ConsolePipeName = "console.pipe"
	// DefaultConsoleLogMax is the most one console log file holds before it is rotated,
	// unless the Spec says otherwise.
	DefaultConsoleLogMax = 2 << 20
	// rotatedSuffix names the previous log file: LogPath + rotatedSuffix.
	rotatedSuffix = ".1"

	// The tail quoted in error messages: read at most tailBytes from the end of the log,
	// keep at most tailLineBytes of each line.
	tailBytes     = 16 << 10
	tailLineBytes = 240

	// drainGrace bounds how long an exited VMM's last output is waited for: a process it
	// started could hold the FIFO open for ever.
	drainGrace = 2 * time.Second
)

// console drains a VMM's FIFO into its capped log until every writer has closed it.
type console struct {
	r    *os.File
	done chan struct{}
}

// newConsole makes a fresh FIFO in dir and opens both ends; the write end is for the VMM.
func newConsole(dir, logPath string, logMax int64) (*console, *os.File, error) {
	path := filepath.Join(dir, ConsolePipeName)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("removing stale console pipe %s: %w", path, err)
	}
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return nil, nil, fmt.Errorf("creating console pipe %s: %w", path, err)
	}
	// The read end first: opening a FIFO's write end non-blocking fails without a reader.
	r, err := openFIFO(path, os.O_RDONLY)
	if err != nil {
		return nil, nil, err
	}
	w, err := openFIFO(path, os.O_WRONLY)
	if err != nil {
		r.Close()
		return nil, nil, err
	}
	// The VMM gets a blocking write end, as an ordinary stdout: a drain that falls behind
	// then holds the guest's console instead of making the VMM's writes fail. (QEMU makes
	// its console non-blocking itself and holds the guest's UART until there is room.)
	if err := unix.SetNonblock(int(w.Fd()), false); err != nil {
		r.Close()
		w.Close()
		return nil, nil, fmt.Errorf("making console pipe %s blocking: %w", path, err)
	}
	return startConsole(r, logPath, logMax), w, nil
}

// openFIFO opens the FIFO at path non-blocking, refusing anything that is not a FIFO.
func openFIFO(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NONBLOCK|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening console pipe %s: %w", path, err)
	}
	if fi, err := f.Stat(); err != nil || fi.Mode().Type() != fs.ModeNamedPipe {
		f.Close()
		return nil, fmt.Errorf("console pipe %s is not a FIFO", path)
	}
	return f, nil
}

func startConsole(r *os.File, logPath string, logMax int64) *console {
	if logMax <= 0 {
		logMax = DefaultConsoleLogMax
	}
	c := &console{r: r, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer r.Close()
		w := openCappedLog(logPath, logMax)
		defer w.Close()
		// Errors end the drain only on the reading side: a log that cannot be written
		// discards (capped.Write never fails), so the VMM is never left writing into a
		// full pipe that nobody empties.
		_, _ = io.CopyBuffer(w, r, make([]byte, 32<<10))
	}()
	return c
}

// wait returns once the console has drained everything (every writer has closed the FIFO)
// or, after grace, closes the FIFO to stop the drain.
func (c *console) wait(grace time.Duration) {
	select {
	case <-c.done:
	case <-time.After(grace):
		c.r.Close()
		<-c.done
	}
}

// cappedLog appends to a log file, moving it to path.1 when it reaches max bytes. Write
// never fails: after an error (the VM's directory was removed, the disk is full) it
// discards, so the drain goes on and the VMM is not stalled.
type cappedLog struct {
	path string
	max  int64
	f    *os.File
	size int64
}

func openCappedLog(path string, max int64) *cappedLog {
	l := &cappedLog{path: path, max: max}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return l
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return l
	}
	l.f = f
	l.size, _ = f.Seek(0, io.SeekEnd)
	return l
}

func (l *cappedLog) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 && l.f != nil {
		if l.size >= l.max {
			l.rotate()
			continue
		}
		chunk := b[:min(int64(len(b)), l.max-l.size)]
		w, err := l.f.Write(chunk)
		l.size += int64(w)
		if err != nil {
			l.Close()
			break
		}
		b = b[len(chunk):]
	}
	return n, nil
}

// rotate makes the full log the previous one and starts an empty log.
func (l *cappedLog) rotate() {
	l.Close()
	if err := os.Rename(l.path, l.path+rotatedSuffix); err != nil {
		return
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return
	}
	l.f, l.size = f, 0
}

func (l *cappedLog) Close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// LogTail returns the last maxLines lines of a console log written after offset, for error
// messages that quote what a VMM or guest printed before a failure. It reads at most the
// last 16 KiB, never the whole file; each line is cut to 240 bytes and control characters
// are replaced, since the text is the guest's and ends up on the user's terminal (and in
// the VM's recorded last error). An offset past the end (the log was rotated since) counts
// as 0.
func LogTail(path string, offset int64, maxLines int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return ""
	}
	size := st.Size()
	if offset < 0 || offset > size {
		offset = 0
	}
	start := max(offset, size-tailBytes)
	buf := make([]byte, size-start)
	n, _ := f.ReadAt(buf, start)
	text := string(buf[:n])
	if start > offset {
		// Started inside a line, most likely: mark the missing beginning.
		text = "…" + text
	}
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(text, "\r\n", "\n"), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	for i, line := range lines {
		lines[i] = printable(line, tailLineBytes)
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// printable cuts s to at most max bytes (on a rune boundary, marking the cut) and replaces
// invalid UTF-8, control characters other than tab and bidirectional controls with '?', so
// that a guest cannot send escape sequences to the terminal showing the text.
func printable(s string, max int) string {
	var b strings.Builder
	for i, r := range s {
		if i+utf8.RuneLen(r) > max {
			b.WriteString("…")
			break
		}
		if r == utf8.RuneError || (r != '\t' && unicode.IsControl(r)) || unicode.Is(unicode.Bidi_Control, r) {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// LogReader reads a VM's console log: the rotated previous file, then the current one,
// then (when following) what is appended, across rotations.
type LogReader struct {
	path    string
	prev    *os.File
	cur     *os.File
	curInfo fs.FileInfo
}

// OpenLog opens the console log at path for CopyTo. A log that does not exist yet is an
// error wrapping fs.ErrNotExist, reported before anything is written.
func OpenLog(path string) (*LogReader, error) {
	// The current file first: a rotation between the two opens then shows up as the
	// previous file being the one already open, which is skipped instead of sent twice.
	cur, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("opening console log: %w", err)
	}
	ci, err := cur.Stat()
	if err != nil || !ci.Mode().IsRegular() {
		cur.Close()
		return nil, fmt.Errorf("console log %s is not a regular file", path)
	}
	lr := &LogReader{path: path, cur: cur, curInfo: ci}
	if prev, err := os.OpenFile(path+rotatedSuffix, os.O_RDONLY|syscall.O_NOFOLLOW, 0); err == nil {
		if pi, err := prev.Stat(); err == nil && pi.Mode().IsRegular() && !os.SameFile(pi, ci) {
			lr.prev = prev
		} else {
			prev.Close()
		}
	}
	return lr, nil
}

// Close releases the files.
func (lr *LogReader) Close() error {
	if lr.prev != nil {
		lr.prev.Close()
	}
	return lr.cur.Close()
}

// logPoll paces following a log.
const logPoll = 200 * time.Millisecond

// CopyTo writes the log to w; with follow it goes on until ctx ends or w fails.
func (lr *LogReader) CopyTo(ctx context.Context, w io.Writer, follow bool) error {
	if lr.prev != nil {
		if _, err := io.Copy(w, lr.prev); err != nil {
			return err
		}
	}
	for {
		if _, err := io.Copy(w, lr.cur); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		if lr.rotated() {
			// Written no more once rotated: take its rest, then go on with the new file.
			if _, err := io.Copy(w, lr.cur); err != nil {
				return err
			}
			if err := lr.reopen(); err == nil {
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(logPoll):
		}
	}
}

// rotated reports whether the log's path names another file than the one being read.
func (lr *LogReader) rotated() bool {
	fi, err := os.Lstat(lr.path)
	return err == nil && !os.SameFile(fi, lr.curInfo)
}

func (lr *LogReader) reopen() error {
	f, err := os.OpenFile(lr.path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("console log %s is not a regular file", lr.path)
	}
	lr.cur.Close()
	lr.cur, lr.curInfo = f, fi
	return nil
}
