// Package rpc is banger's wire protocol: one JSON object per line over a unix socket, with an
// operation id on every request and every error. It is the single boundary where error kinds
// (internal/errdefs) become wire codes and back. The daemon and the root helper both serve it.
package rpc

import (
	"encoding/json"
	"errors"
	"fmt"

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
	CodeInternal         = "internal"
)

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
	for _, kc := range kindCodes {
		if kc.kind == target {
			return kc.code == e.Code
		}
	}
	return false
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
	code := CodeInternal
	for _, kc := range kindCodes {
		if errors.Is(err, kc.kind) {
			code = kc.code
			break
		}
	}
	return &ErrorResponse{Code: code, Message: err.Error(), OpID: opID, Hint: errdefs.HintOf(err)}
}

func newError(code, opID, format string, args ...any) *ErrorResponse {
	return &ErrorResponse{Code: code, Message: fmt.Sprintf(format, args...), OpID: opID}
}
