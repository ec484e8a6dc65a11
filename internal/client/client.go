// Package client is bangerd's typed client: one Go method per RPC, so the CLI (internal/ctl),
// the containerd shim and tests never name a wire method or build wire params, and authors
// of clients in other languages have one place to mirror (docs/protocol.md is the contract).
//
// Every call carries an op id (the context's, or a fresh one) and every error names it,
// including errors the daemon never answered (a dial failure, a lost connection), so any
// failure can be found in bangerd's log.
package client

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// Client talks to one bangerd socket. It holds no connection: each call dials, so a Client
// is safe for concurrent use and survives daemon restarts.
type Client struct {
	Socket string
}

// New returns a client of the daemon at socket.
func New(socket string) *Client { return &Client{Socket: socket} }

// call makes one RPC under the context's op id (minted when it has none).
func (c *Client) call(ctx context.Context, method string, params, out any) error {
	ctx, id := opid.Ensure(ctx)
	err := rpc.Call(ctx, c.Socket, method, params, out)
	return withOpID(c.wrapDial(err), id)
}

// Dial opens a connection for a streaming method; its errors say what to do when no
// daemon answers, as calls' errors do.
func (c *Client) dial(ctx context.Context) (*rpc.Client, error) {
	rc, err := rpc.Dial(ctx, c.Socket)
	return rc, c.wrapDial(err)
}

// withOpID ends an error the daemon did not answer (a lost connection, a dial failure)
// with the op id that was sent, as the daemon's own errors end.
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

// wrapDial turns "no daemon" and "no permission" into errors that say what to do.
func (c *Client) wrapDial(err error) error {
	if err == nil {
		return nil
	}
	var er *rpc.ErrorResponse
	if errors.As(err, &er) {
		return err
	}
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return errdefs.WithHint(fmt.Errorf("bangerd is not running at %s: %w", c.Socket, err),
			"start it with `bangerd` (or point --socket / BANGER_SOCKET at a running one)")
	}
	if errors.Is(err, syscall.EACCES) {
		return errdefs.WithHint(fmt.Errorf("no permission to use %s: %w", c.Socket, err),
			"add your user to the socket's group, or run as the daemon's user")
	}
	return err
}

// ConnectionLost reports whether err is the daemon going away (or not being there) rather
// than its answer: the operation's outcome is then unknown to the caller.
func ConnectionLost(err error) bool {
	var er *rpc.ErrorResponse
	if err == nil || errors.As(err, &er) {
		return false
	}
	return errors.Is(err, rpc.ErrConnectionLost) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// Ping is daemon.ping.
func (c *Client) Ping(ctx context.Context) (*api.PingResult, error) {
	var res api.PingResult
	if err := c.call(ctx, api.MethodPing, nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Doctor is daemon.doctor: the daemon's host checks.
func (c *Client) Doctor(ctx context.Context) ([]api.DoctorCheck, error) {
	var res api.DoctorResult
	if err := c.call(ctx, api.MethodDoctor, nil, &res); err != nil {
		return nil, err
	}
	return res.Checks, nil
}
