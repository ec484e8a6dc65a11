package rpc

import (
	"context"

	"golang.org/x/sys/unix"
)

type peerKey struct{}

// WithPeer records the credentials of a connection's peer (SO_PEERCRED, read once when
// the connection is accepted) on the contexts of its requests.
func WithPeer(ctx context.Context, cred *unix.Ucred) context.Context {
	if cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, *cred)
}

// Peer returns the credentials of the client process whose request ctx serves, as the
// kernel reported them for its unix socket; ok is false when they are unknown (not a unix
// socket, or a context not made by a Server). Handlers that act on a path the client names
// decide with it whether the client may.
func Peer(ctx context.Context) (cred unix.Ucred, ok bool) {
	cred, ok = ctx.Value(peerKey{}).(unix.Ucred)
	return cred, ok
}
