// Package rpc is banger's wire protocol: one JSON object per line over a unix socket, with an
// operation id on every request and every error. It is the single boundary where error kinds
// (internal/errdefs) become wire codes and back. The daemon and the root helper both serve it.
//
// It is also the one wire toolkit for every JSON-lines peer, the guest agent protocol
// included: ReadLine (bounded line reader), DecodeStrict/DecodeParams/NoParams (exact-case
// keys, no duplicates, no unknown fields, no trailing data), CodeOf/KindOf (the code
// table), and a Server that recovers panics and bounds its clients (Limits).
package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"banger/internal/errdefs"
)

// Version is the protocol version this build speaks.
const Version = 1

// MaxLineBytes bounds a request line; longer lines are rejected with bad_request without
// being buffered whole.
const MaxLineBytes = 1 << 20

// Request is one call.
type Request struct {
	Version int             `json:"version"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params,omitempty"`
	OpID    string          `json:"op_id,omitempty"`
}

// Response answers one Request: exactly one of Result and Error is set.
type Response struct {
	OpID   string          `json:"op_id,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *ErrorResponse  `json:"error,omitempty"`
}

// Wire error codes.
const (
	CodeBadVersion       = "bad_version"
	CodeUnknownMethod    = "unknown_method"
	CodeBadRequest       = "bad_request"
	CodeInvalidArgument  = "invalid_argument"
	CodeNotFound         = "not_found"
	CodeAlreadyExists    = "already_exists"
	CodeConflict         = "conflict"
	CodeAmbiguous        = "ambiguous"
	CodeUnavailable      = "unavailable"
	CodePermissionDenied = "permission_denied"
	CodeCanceled         = "canceled"
	CodeDeadlineExceeded = "deadline_exceeded"
	CodeInternal         = "internal"
)

// kindCodes is the one table between error kinds and wire codes, for the daemon, the root
// helper and the guest agent alike. Order matters: an error classified by an errdefs kind
// keeps that kind even when it also wraps a context error ("agent not ready: context
// deadline exceeded" stays unavailable); only unclassified cancellations get their own codes.
var kindCodes = []struct {
	kind error
	code string
}{
	{errdefs.ErrInvalidArgument, CodeInvalidArgument},
	{errdefs.ErrNotFound, CodeNotFound},
	{errdefs.ErrAlreadyExists, CodeAlreadyExists},
	{errdefs.ErrConflict, CodeConflict},
	{errdefs.ErrAmbiguous, CodeAmbiguous},
	{errdefs.ErrUnavailable, CodeUnavailable},
	{errdefs.ErrPermissionDenied, CodePermissionDenied},
	{context.Canceled, CodeCanceled},
	{context.DeadlineExceeded, CodeDeadlineExceeded},
}

// CodeOf returns the wire code for err: the code of an *ErrorResponse in its chain, else
// the code of its kind, else internal.
func CodeOf(err error) string {
	var er *ErrorResponse
	if errors.As(err, &er) {
		return er.Code
	}
	for _, kc := range kindCodes {
		if errors.Is(err, kc.kind) {
			return kc.code
		}
	}
	return CodeInternal
}

// KindOf returns the error kind for a wire code, or nil for internal, bad_request and
// unknown codes.
func KindOf(code string) error {
	for _, kc := range kindCodes {
		if kc.code == code {
			return kc.kind
		}
	}
	return nil
}

// LogLevel is the level a server logs a failed call at: ERROR only for its own faults
// (internal), INFO for a cancelled call, WARN for everything the caller or the
// environment caused (bad input, a missing object, a refused call, a missing dependency).
func LogLevel(code string) slog.Level {
	switch code {
	case CodeInternal:
		return slog.LevelError
	case CodeCanceled:
		return slog.LevelInfo
	}
	return slog.LevelWarn
}

// BadRequest returns a bad_request error: the request (or its params) is malformed.
func BadRequest(format string, args ...any) error {
	return &ErrorResponse{Code: CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

// ErrorResponse is the wire form of an error, and the typed error rpc.Call returns.
type ErrorResponse struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	OpID    string `json:"op_id,omitempty"`
	Hint    string `json:"hint,omitempty"`
}

// Error ends with the op id so a user can grep every log for it.
func (e *ErrorResponse) Error() string {
	s := e.Message
	if e.OpID != "" {
		s += " (" + e.OpID + ")"
	}
	return s
}

// Is lets errors.Is(err, errdefs.ErrNotFound) work on the client side.
func (e *ErrorResponse) Is(target error) bool {
	k := KindOf(e.Code)
	return k != nil && k == target
}

// Suggestion implements errdefs.Hinted.
func (e *ErrorResponse) Suggestion() string { return e.Hint }

// ToWire maps any error to its wire form. Errors already in wire form (from a downstream
// call such as the root helper) keep their code.
func ToWire(err error, opID string) *ErrorResponse {
	var er *ErrorResponse
	if errors.As(err, &er) {
		out := *er
		out.OpID = opID
		return &out
	}
	return &ErrorResponse{Code: CodeOf(err), Message: err.Error(), OpID: opID, Hint: errdefs.HintOf(err)}
}

// ErrLineTooLong is ReadLine's error for a line over its limit.
var ErrLineTooLong = errors.New("line too long")

// ReadLine reads one '\n'-terminated line of at most max bytes (max <= 0: no limit) for
// every JSON-lines peer: the daemon's and the helper's servers and clients and both ends
// of the guest agent protocol. The line grows with what arrives, up to max and never
// beyond, so a peer pays memory only for bytes it actually sent. At EOF a final line
// without '\n' is returned as is (callers that need the terminator check for it).
func ReadLine(br *bufio.Reader, max int) ([]byte, error) {
	return readLine(br, max, nil)
}

// readLine is ReadLine calling grow, when set, with the line's length before the line
// buffer grows past readBufSize; an error from grow ends the read.
func readLine(br *bufio.Reader, max int, grow func(n int) error) ([]byte, error) {
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		n := len(buf) + len(frag)
		if max > 0 && n > max {
			return nil, ErrLineTooLong
		}
		if grow != nil && n > readBufSize {
			if gerr := grow(n); gerr != nil {
				return nil, gerr
			}
		}
		buf = append(buf, frag...)
		if err == nil {
			return buf, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF && len(buf) > 0 {
			return buf, nil
		}
		return nil, err
	}
}

func newError(code, opID, format string, args ...any) *ErrorResponse {
	return &ErrorResponse{Code: code, Message: fmt.Sprintf(format, args...), OpID: opID}
}
