// Package oplog is the one way code reaches a logger: the one the context carries, with the
// context's op id attached, so every record of an operation — in the daemon, the helper or
// a background pass — names the op id the user saw in the CLI's error message.
package oplog

import (
	"context"
	"log/slog"
	"time"

	"banger/internal/opid"
)

type loggerKey struct{}

type startKey struct{}

// With returns ctx carrying l. l should not hold an op_id itself: G adds the context's, so
// a context that later gets a fresh op id (a background pass) never logs a stale one.
func With(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// WithAttrs returns ctx whose logger adds attrs to every record. It is the way to narrow a
// context's logger: With(ctx, G(ctx).With(...)) would bake the op id in, and G would then
// add it a second time.
func WithAttrs(ctx context.Context, attrs ...any) context.Context {
	return With(ctx, logger(ctx).With(attrs...))
}

// G returns the logger of ctx (slog's default when it carries none) with ctx's op id.
func G(ctx context.Context) *slog.Logger {
	l := logger(ctx)
	if id := opid.From(ctx); id != "" {
		return l.With("op_id", id)
	}
	return l
}

// logger is the logger ctx carries, without its op id.
func logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// Began returns ctx recording t as the moment its operation began; Stage reports the time
// elapsed since then.
func Began(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, startKey{}, t)
}

// Stage logs one stage of ctx's operation ("operation stage", stage=name), with the
// milliseconds since it began when that is known.
func Stage(ctx context.Context, name string, attrs ...any) {
	args := []any{"stage", name}
	if t, ok := ctx.Value(startKey{}).(time.Time); ok {
		args = append(args, "elapsed_ms", time.Since(t).Milliseconds())
	}
	G(ctx).Info("operation stage", append(args, attrs...)...)
}
