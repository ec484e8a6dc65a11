package helper

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"banger/internal/hostnet"
	"banger/internal/netnstest"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// The helper changes links and firewall rules, so the server under test runs as a child
// process in a namespace the test created (netnstest), and refuses to start if that
// namespace is the parent's. Callers only need the unix socket, which works across network
// namespaces, so they run as ordinary (possibly unprivileged) child processes in the
// parent's namespace.

func TestMain(m *testing.M) {
	netnstest.Main(m, map[string]netnstest.Mode{
		"serve": {Run: childServe},
		"call":  {HostNetns: true, Run: childCall},
	})
}

// serveArgs configures the helper child.
type serveArgs struct {
	Socket      string `json:"socket"`
	SocketGroup int    `json:"socket_group"`
	AllowUIDs   []int  `json:"allow_uids"`
	AllowGIDs   []int  `json:"allow_gids"`
	Bridge      string `json:"bridge"`
	Prefix      string `json:"prefix"`
	TapUID      int    `json:"tap_uid"`
	TapGID      int    `json:"tap_gid"`
	Log         string `json:"log"`
}

// callArgs is one call made by the caller child.
type callArgs struct {
	Socket string          `json:"socket"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
	OpID   string          `json:"op_id"`
}

// callResult is the caller child's report.
type callResult struct {
	Code    string          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
}

// childCall makes one call and prints a callResult.
func childCall(raw json.RawMessage) int {
	var a callArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var res callResult
	var out json.RawMessage
	err := rpc.Call(opid.With(context.Background(), a.OpID), a.Socket, a.Method, a.Params, &out)
	if err != nil {
		res.Code, res.Message = "transport", err.Error()
		if we, ok := err.(*rpc.ErrorResponse); ok {
			res.Code, res.Message = we.Code, we.Message
		}
	}
	res.Result = out
	_ = json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// childServe runs the helper until SIGTERM.
func childServe(raw json.RawMessage) int {
	var a serveArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var logw io.Writer = os.Stderr
	if a.Log != "" {
		f, err := os.OpenFile(a.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		logw = f
	}
	prefix, err := netip.ParsePrefix(a.Prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s, err := NewServer(Config{
		Socket: a.Socket, SocketGroup: a.SocketGroup, AllowUIDs: a.AllowUIDs, AllowGIDs: a.AllowGIDs,
		Net:         hostnet.Net{Bridge: a.Bridge, Prefix: prefix},
		TapOwnerUID: a.TapUID, TapOwnerGID: a.TapGID,
		Logger: slog.New(slog.NewJSONHandler(logw, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := s.Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
