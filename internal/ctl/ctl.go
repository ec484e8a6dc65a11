// Package ctl is the logic behind the banger CLI: it talks to bangerd over internal/rpc and
// renders results. It never imports a CLI library; cmd/banger's cobra commands fill an
// options struct and call one function here, as nerdctl's cmd/pkg split does.
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// Globals are options every command has.
type Globals struct {
	Socket string
	JSON   bool
	Stdout io.Writer
	Stderr io.Writer
	Stdin  io.Reader
}

// DefaultSocket is where the CLI looks for bangerd when neither --socket nor
// BANGER_SOCKET says otherwise; it matches bangerd's default for the same user.
func DefaultSocket() string {
	if os.Geteuid() == 0 {
		return "/run/banger/bangerd.sock"
	}
	if xdg := os.Getenv("XDG_RUNTIME_DIR"); xdg != "" {
		return filepath.Join(xdg, "banger", "bangerd.sock")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "banger", "run", "bangerd.sock")
}

// ResolveSocket applies the lookup order: flag, then BANGER_SOCKET, then the default.
func ResolveSocket(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("BANGER_SOCKET"); env != "" {
		return env
	}
	return DefaultSocket()
}

// call makes one RPC with a fresh op id so the CLI can print it on failure.
func (g *Globals) call(ctx context.Context, method string, params, out any) error {
	ctx, _ = opid.Ensure(ctx)
	err := rpc.Call(ctx, g.Socket, method, params, out)
	return withOpID(g.wrapDial(err), opid.From(ctx))
}

// withOpID ends an error the daemon did not answer (a lost connection, a dial failure)
// with the op id the CLI sent, as the daemon's own errors end, so every error can be
// found in bangerd's log.
func withOpID(err error, id string) error {
	var er *rpc.ErrorResponse
	if err == nil || id == "" || errors.As(err, &er) {
		return err
	}
	return &opError{err: err, id: id}
}

type opError struct {
	err error
	id  string
}

func (e *opError) Error() string { return e.err.Error() + " (" + e.id + ")" }
func (e *opError) Unwrap() error { return e.err }

// lostVM explains an operation on VM name whose daemon connection broke (err is not the
// daemon's answer): the op id, and what became of the VM if the daemon answers again.
func lostVM(ctx context.Context, g *Globals, err error, op, name string) error {
	if !connectionLost(err) || ctx.Err() != nil || name == "" {
		return err
	}
	msg := fmt.Sprintf("lost the connection to bangerd during %s of vm %s", op, name)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	var res api.VMResult
	switch serr := rpc.Call(sctx, g.Socket, api.MethodVMShow, api.VMRef{VM: name}, &res); {
	case serr == nil:
		msg += fmt.Sprintf("; it is now %s", res.VM.State)
		if res.VM.LastError != "" {
			msg += " (" + firstLine(res.VM.LastError) + ")"
		}
	case errors.Is(serr, errdefs.ErrNotFound):
		msg += "; it no longer exists (bangerd undoes a create it did not finish)"
	default:
		msg += "; bangerd does not answer yet"
	}
	return errdefs.WithHint(fmt.Errorf("%s: %w", msg, err), "see what became of it with `banger vm show "+name+"`")
}

// connectionLost reports whether err is the daemon going away rather than its answer.
func connectionLost(err error) bool {
	var er *rpc.ErrorResponse
	if err == nil || errors.As(err, &er) {
		return false
	}
	return errors.Is(err, rpc.ErrConnectionLost) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func (g *Globals) dial(ctx context.Context) (*rpc.Client, error) {
	c, err := rpc.Dial(ctx, g.Socket)
	return c, g.wrapDial(err)
}

// wrapDial turns "no daemon" into an error that says what to do.
func (g *Globals) wrapDial(err error) error {
	if err == nil {
		return nil
	}
	var er *rpc.ErrorResponse
	if errors.As(err, &er) {
		return err
	}
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return errdefs.WithHint(fmt.Errorf("bangerd is not running at %s: %w", g.Socket, err),
			"start it with `bangerd` (or point --socket / BANGER_SOCKET at a running one)")
	}
	if errors.Is(err, syscall.EACCES) {
		return errdefs.WithHint(fmt.Errorf("no permission to use %s: %w", g.Socket, err),
			"add your user to the socket's group, or run as the daemon's user")
	}
	return err
}

// printJSON writes v as indented JSON (the wire records, snake_case).
func (g *Globals) printJSON(v any) error {
	enc := json.NewEncoder(g.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// ExitError carries a process exit code out of a command (vm run / vm exec).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// FormatError renders an error for the terminal: the message (ending with the op id for
// daemon errors) and, on its own line, the suggestion if there is one.
func FormatError(err error) string {
	s := "banger: " + err.Error()
	if h := errdefs.HintOf(err); h != "" {
		s += "\nhint: " + h
	}
	return s
}
