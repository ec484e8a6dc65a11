package helper

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"banger/internal/errdefs"
	"banger/internal/rpc"
)

// Client calls the root helper. Each call opens its own connection, so a Client is safe
// for concurrent use. The caller's op id (opid.From(ctx)) travels with every call.
type Client struct {
	Socket string
}

// Ping checks that the helper answers and admits this caller.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, MethodPing, nil, nil)
}

// Info reports the helper's pid and the network it manages, so a caller can notice a
// helper configured for another bridge or subnet than its own.
func (c *Client) Info(ctx context.Context) (PingResult, error) {
	var out PingResult
	err := c.call(ctx, MethodPing, nil, &out)
	return out, err
}

// EnsureBridge creates and configures the bridge if needed.
func (c *Client) EnsureBridge(ctx context.Context) error {
	return c.call(ctx, MethodEnsureBridge, nil, nil)
}

// CreateTap creates tap (model.TapForID) owned by the daemon's user and attaches it to the bridge.
func (c *Client) CreateTap(ctx context.Context, tap string) error {
	return c.call(ctx, MethodCreateTap, TapParams{Tap: tap}, nil)
}

// DeleteTap removes tap; a missing tap is not an error.
func (c *Client) DeleteTap(ctx context.Context, tap string) error {
	return c.call(ctx, MethodDeleteTap, TapParams{Tap: tap}, nil)
}

// EnableNAT lets the guest at ip reach beyond the host.
func (c *Client) EnableNAT(ctx context.Context, ip netip.Addr) error {
	return c.call(ctx, MethodEnableNAT, NATParams{IP: ip.String()}, nil)
}

// DisableNAT confines the guest at ip to the bridge again.
func (c *Client) DisableNAT(ctx context.Context, ip netip.Addr) error {
	return c.call(ctx, MethodDisableNAT, NATParams{IP: ip.String()}, nil)
}

// Cleanup removes every tap, the firewall table and the bridge.
func (c *Client) Cleanup(ctx context.Context) error {
	return c.call(ctx, MethodCleanup, nil, nil)
}

// State reports the taps and NAT guests that exist on the host.
func (c *Client) State(ctx context.Context) (StateResult, error) {
	var out StateResult
	err := c.call(ctx, MethodState, nil, &out)
	return out, err
}

func (c *Client) call(ctx context.Context, method string, params, out any) error {
	if c == nil || c.Socket == "" {
		return errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "%s: no root helper socket configured", method),
			"set network.helper_socket in the banger config")
	}
	err := rpc.Call(ctx, c.Socket, method, params, out)
	if err == nil {
		return nil
	}
	var wire *rpc.ErrorResponse
	if errors.As(err, &wire) || ctx.Err() != nil {
		return err
	}
	// Failing to connect at all is the common setup mistake; say what to do about it.
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "%s: root helper not running at %s: %w", method, c.Socket, err),
			"start it with `systemctl start banger-helper` (see docs/networking.md)")
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return errdefs.WithHint(errdefs.New(errdefs.ErrPermissionDenied, "%s: not allowed to use the root helper at %s: %w", method, c.Socket, err),
			"run bangerd as a user in the helper socket's group (see docs/networking.md)")
	}
	return fmt.Errorf("calling root helper %s: %w", method, err)
}
