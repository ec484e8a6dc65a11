// Package opid mints and carries operation ids ("op-…") through contexts so one id follows a
// request from the CLI through the daemon, the root helper and the guest agent.
package opid

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"strings"
)

type ctxKey struct{}

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// New returns a fresh id: "op-" and 16 random base32 characters.
func New() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "op-" + strings.ToLower(enc.EncodeToString(b[:]))
}

// Valid reports whether id is well formed (^op-[a-z0-9]{8,64}$); ids from the outside are
// adopted only if so. No regexp: the guest agent links this package, and regexp's
// package init costs its boot (model/spell.go).
func Valid(id string) bool {
	rest, ok := strings.CutPrefix(id, "op-")
	if !ok || len(rest) < 8 || len(rest) > 64 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if c := rest[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// With returns ctx carrying id.
func With(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// From returns the id carried by ctx, or "".
func From(ctx context.Context) string {
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}

// Ensure returns ctx and its id, minting one when ctx carries none.
func Ensure(ctx context.Context) (context.Context, string) {
	if id := From(ctx); id != "" {
		return ctx, id
	}
	id := New()
	return With(ctx, id), id
}
