// Package errdefs defines the error kinds banger uses everywhere, independent of any transport.
//
// Code deep inside the daemon wraps one of these sentinels with %w; exactly one boundary
// (internal/rpc) maps a kind to a wire code, and the client maps it back. That keeps protocol
// details out of business logic, as containerd's errdefs does.
package errdefs

import (
	"errors"
	"fmt"
)

// Kinds of failure. Compare with errors.Is.
var (
	ErrInvalidArgument  = errors.New("invalid argument")
	ErrNotFound         = errors.New("not found")
	ErrAlreadyExists    = errors.New("already exists")
	ErrConflict         = errors.New("conflict")
	ErrAmbiguous        = errors.New("ambiguous")
	ErrUnavailable      = errors.New("unavailable")
	ErrPermissionDenied = errors.New("permission denied")
)

// kindError carries a kind without repeating the kind's text in the message: the user reads
// "vcpu: must be between 1 and 64, got 0", not "...: invalid argument".
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// New returns an error of the given kind with a formatted message. Wrapped errors in args
// (via %w) stay reachable through errors.Is/As.
func New(kind error, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &wrapped{kindError: kindError{kind: kind, msg: err.Error()}, inner: errors.Unwrap(err)}
}

type wrapped struct {
	kindError
	inner error
}

func (w *wrapped) Unwrap() error { return w.inner }

// InvalidArgument reports a bad value for a named field; the message always names both.
func InvalidArgument(field string, value any, reason string) error {
	return New(ErrInvalidArgument, "%s: %s (got %q)", field, reason, fmt.Sprint(value))
}

// NotFound reports a missing object of a kind ("vm", "image") by the reference the user gave.
func NotFound(what, ref string) error {
	return New(ErrNotFound, "%s %q not found", what, ref)
}

// Hinted is an error that carries a suggestion for the user, like flyctl's errors do.
type Hinted interface {
	error
	Suggestion() string
}

type hinted struct {
	error
	hint string
}

func (h *hinted) Unwrap() error      { return h.error }
func (h *hinted) Suggestion() string { return h.hint }

// WithHint attaches a suggestion ("run `banger image build tiny`") to err.
func WithHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	return &hinted{error: err, hint: hint}
}

// HintOf returns the first hint found in err's chain, or "".
func HintOf(err error) string {
	var h Hinted
	if errors.As(err, &h) {
		return h.Suggestion()
	}
	return ""
}
