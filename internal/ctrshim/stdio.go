package ctrshim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/fifo"

	"banger/internal/errdefs"
)

// stdio is a process's connection to containerd: the FIFOs (or log file) containerd named
// in the create or exec request. Empty paths mean none.
type stdio struct {
	stdin          *stdinReader
	stdout, stderr io.WriteCloser
	shared         bool // stderr goes to stdout's log file
}

// openStdio opens containerd's stdio. Stdin: see stdinReader; stdout and stderr are opened read-write so the
// shim's writes never fail with EPIPE while containerd's reader is between attaches, as
// runc's shim keeps a read end open for the same reason.
func openStdio(ctx context.Context, in, out, errp string) (_ *stdio, err error) {
	s := &stdio{}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if in != "" {
		p, err := stdioPath("stdin", in)
		if err != nil {
			return nil, err
		}
		if s.stdin, err = openStdin(p); err != nil {
			return nil, err
		}
	}
	if s.stdout, err = openOutput(ctx, "stdout", out); err != nil {
		return nil, err
	}
	if errp != "" && errp == out {
		s.shared = true
		return s, nil // one log file for both; written by one writer
	}
	if s.stderr, err = openOutput(ctx, "stderr", errp); err != nil {
		return nil, err
	}
	return s, nil
}

// stdioPath accepts a FIFO path or a fifo:// / file:// URI. binary:// (a logging program
// containerd would have the shim spawn) is refused by name.
func stdioPath(field, s string) (string, error) {
	if filepath.IsAbs(s) {
		return s, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", errdefs.InvalidArgument(field, s, "not a path or URI")
	}
	switch u.Scheme {
	case "fifo", "file":
		if !filepath.IsAbs(u.Path) {
			return "", errdefs.InvalidArgument(field, s, "the URI's path must be absolute")
		}
		return u.Path, nil
	}
	return "", errdefs.InvalidArgument(field, s, "only FIFO paths and file:// URIs are supported by the banger runtime (no binary:// loggers)")
}

func openOutput(ctx context.Context, field, s string) (io.WriteCloser, error) {
	if s == "" {
		return nil, nil
	}
	p, err := stdioPath(field, s)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(s)
	if u != nil && u.Scheme == "file" {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, fmt.Errorf("creating the directory of the %s log %s: %w", field, p, err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o640)
		if err != nil {
			return nil, fmt.Errorf("opening the %s log %s: %w", field, p, err)
		}
		return f, nil
	}
	f, err := fifo.OpenFifo(ctx, p, syscall.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the %s fifo %s: %w", field, p, err)
	}
	return f, nil
}

// writers returns stdout and stderr for guest.ExecIO (stderr is stdout when both share a
// log file; nil discards).
func (s *stdio) writers() (io.Writer, io.Writer) {
	var out, errw io.Writer
	if s.stdout != nil {
		out = s.stdout
	}
	if s.stderr != nil {
		errw = s.stderr
	} else if s.shared {
		errw = out
	}
	return out, errw
}

// stdinReader reads containerd's stdin FIFO until the client's writer closes it or the
// client calls CloseIO. ctr calls CloseIO the moment its own stdin reaches EOF, before the
// bytes it just wrote were necessarily read here, so CloseIO must not close the FIFO:
// after it a read returns what is still buffered, then EOF. (ctr may also reach EOF
// before it registered CloseIO, so the writer's close must end stdin too.) The FIFO is
// opened blocking in the background, as containerd's fifo package does: a FIFO opened
// before any writer reads as EOF. All reads happen in the one pump goroutine, so the
// bytes keep their order.
type stdinReader struct {
	opened chan struct{} // closed once the open finished (r or err set)
	ended  chan struct{} // closed by CloseIO
	path   string

	mu      sync.Mutex
	r       *os.File
	err     error
	closing bool
	once    sync.Once
}

// drainWait is how long a read after CloseIO waits for buffered bytes: they are already in
// the pipe, so this only needs to cover scheduling.
const drainWait = 20 * time.Millisecond

// openWait is how long a read after CloseIO waits for a client's open of the FIFO, already
// done in the kernel, to be recorded (scheduling only; it delays EOF only when no client
// ever opened stdin).
const openWait = 200 * time.Millisecond

func openStdin(path string) (*stdinReader, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("opening the stdin fifo %s: %w", path, err)
	}
	if fi.Mode()&os.ModeNamedPipe == 0 {
		return nil, errdefs.InvalidArgument("stdin", path, "not a FIFO")
	}
	s := &stdinReader{opened: make(chan struct{}), ended: make(chan struct{}), path: path}
	go func() {
		f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		s.mu.Lock()
		s.r, s.err = f, err
		if err == nil && s.closing {
			_ = f.SetReadDeadline(time.Now())
		}
		s.mu.Unlock()
		close(s.opened)
	}()
	return s, nil
}

func (s *stdinReader) Read(b []byte) (int, error) {
	select {
	case <-s.opened:
	case <-s.ended:
		// A client that opened, wrote and closed before CloseIO has unblocked the open,
		// but the goroutine recording it may not have run yet: give it a moment before
		// concluding that no client ever wrote.
		select {
		case <-s.opened:
		case <-time.After(openWait):
			return 0, io.EOF
		}
	}
	s.mu.Lock()
	r, err, closing := s.r, s.err, s.closing
	s.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("opening the stdin fifo %s: %w", s.path, err)
	}
	if !closing {
		n, err := r.Read(b)
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
	}
	_ = r.SetReadDeadline(time.Now().Add(drainWait))
	n, err := r.Read(b)
	if n > 0 {
		return n, nil
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		err = io.EOF
	}
	return 0, err
}

// CloseIO ends stdin once the buffered bytes are read; it wakes a blocked Read.
func (s *stdinReader) CloseIO() {
	s.mu.Lock()
	s.closing = true
	if s.r != nil {
		_ = s.r.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	s.once.Do(func() { close(s.ended) })
}

// Close ends stdin and releases the FIFO, also when no client ever opened it: a writer
// of its own, opened non-blocking, lets the pending open return.
func (s *stdinReader) Close() error {
	s.CloseIO()
	select {
	case <-s.opened:
	default:
		if w, err := os.OpenFile(s.path, os.O_WRONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0); err == nil {
			w.Close()
		}
		select {
		case <-s.opened:
		case <-time.After(time.Second): // the FIFO vanished; the open goroutine stays parked
			return nil
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r != nil {
		return s.r.Close()
	}
	return nil
}

// Close closes every end; stdin first so a pump blocked reading it ends.
func (s *stdio) Close() {
	if s.stdin != nil {
		s.stdin.Close()
	}
	if s.stdout != nil {
		s.stdout.Close()
	}
	if s.stderr != nil {
		s.stderr.Close()
	}
}
