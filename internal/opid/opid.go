// Package opid mints and carries operation ids ("op-…") through contexts so one id follows a
// request from the CLI through the daemon, the root helper and the guest agent.
package opid

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"regexp"
	"strings"
)

type ctxKey struct{}

var valid = regexp.MustCompile(`^op-[a-z0-9]{8,64}$`)

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// New returns a fresh id: "op-" and 16 random base32 characters.
func New() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "op-" + strings.ToLower(enc.EncodeToString(b[:]))
}

// Valid reports whether id is well formed; ids from the outside are adopted only if so.
func Valid(id string) bool { return valid.MatchString(id) }

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
