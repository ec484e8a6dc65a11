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
	"strings"
	"time"

	"banger/internal/client"
	"banger/internal/config"
	"banger/internal/errdefs"
)

// Globals are options every command has.
type Globals struct {
	Socket string
	JSON   bool
	Stdout io.Writer
	Stderr io.Writer
	Stdin  io.Reader
}

// ResolveSocket applies the lookup order: flag, then BANGER_SOCKET, then the default.
func ResolveSocket(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("BANGER_SOCKET"); env != "" {
		return env
	}
	return config.DefaultSocket()
}

// client is the typed daemon client for g's socket.
func (g *Globals) client() *client.Client { return client.New(g.Socket) }

// lostVM explains an operation on VM name whose daemon connection broke (err is not the
// daemon's answer): the op id, and what became of the VM if the daemon answers again.
func lostVM(ctx context.Context, g *Globals, err error, op, name string) error {
	if !client.ConnectionLost(err) || ctx.Err() != nil || name == "" {
		return err
	}
	msg := fmt.Sprintf("lost the connection to bangerd during %s of vm %s", op, name)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	switch vm, serr := g.client().VMShow(sctx, name); {
	case serr == nil:
		msg += fmt.Sprintf("; it is now %s", vm.State)
		if vm.LastError != "" {
			msg += " (" + firstLine(vm.LastError) + ")"
		}
	case errors.Is(serr, errdefs.ErrNotFound):
		msg += "; it no longer exists (bangerd undoes a create it did not finish)"
	default:
		msg += "; bangerd does not answer yet"
	}
	return errdefs.WithHint(fmt.Errorf("%s: %w", msg, err), "see what became of it with `banger vm show "+name+"`")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
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
