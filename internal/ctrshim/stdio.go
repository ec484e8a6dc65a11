package ctrshim

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/fifo"

	"banger/internal/errdefs"
)

// stdio is a process's connection to containerd: the FIFOs (or log file) containerd named
// in the create or exec request. Empty paths mean none.
type stdio struct {
	stdin          io.ReadCloser
	stdout, stderr io.WriteCloser
	shared         bool // stderr goes to stdout's log file
}

// openStdio opens containerd's stdio. Stdin is read non-blocking until a writer appears
// (containerd's client may attach later); stdout and stderr are opened read-write so the
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
		if s.stdin, err = fifo.OpenFifo(ctx, p, syscall.O_RDONLY|syscall.O_NONBLOCK, 0); err != nil {
			return nil, fmt.Errorf("opening the stdin fifo %s: %w", p, err)
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
