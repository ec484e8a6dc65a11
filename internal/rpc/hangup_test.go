package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"testing"
	"time"

	"banger/internal/rpc"
)

// blockingServer serves test.block, which waits for its context or for release and
// reports which came first on ended.
func blockingServer(t *testing.T) (ts *testServer, release chan struct{}, ended chan error) {
	release, ended = make(chan struct{}), make(chan error, 1)
	ts = startServer(t, func(s *rpc.Server) {
		s.Handle("test.block", func(ctx context.Context, _ json.RawMessage) (any, error) {
			select {
			case <-ctx.Done():
				ended <- context.Cause(ctx)
				return nil, ctx.Err()
			case <-release:
				ended <- nil
				return "released", nil
			}
		})
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	return ts, release, ended
}

// A client closing its connection mid-request cancels the handler's context, so work for
// a client that went away (an image import hashing a huge file) stops.
func TestHangupCancelsHandler(t *testing.T) {
	ts, _, ended := blockingServer(t)
	rc := dialRaw(t, ts.socket)
	rc.send(`{"version":1,"op_id":"op-hangup01","method":"test.block"}` + "\n")
	// The request is in flight once the server logs its beginning.
	waitFor(t, func() bool { return len(ts.log.records(t, "op-hangup01")) > 0 })
	rc.c.Close()
	select {
	case err := <-ended:
		if err == nil || err.Error() != "client hung up" {
			t.Fatalf("handler ended with cause %v, want the client hang-up", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler still running 10s after its client closed the connection")
	}
}

// Half-closing after the request (what socat does) is not hanging up: the handler runs to
// completion and its response arrives.
func TestHalfCloseIsNotHangup(t *testing.T) {
	ts, release, ended := blockingServer(t)
	rc := dialRaw(t, ts.socket)
	rc.send(`{"version":1,"op_id":"op-halfcls1","method":"test.block"}` + "\n")
	waitFor(t, func() bool { return len(ts.log.records(t, "op-halfcls1")) > 0 })
	if err := rc.c.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // give a wrong cancellation the chance to happen
	close(release)
	if err := <-ended; err != nil {
		t.Fatalf("half-close cancelled the handler: %v", err)
	}
	if resp := rc.response(); resp.Error != nil {
		t.Fatalf("response after half-close: %+v", resp.Error)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(errors.New("condition not met within 10s"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
