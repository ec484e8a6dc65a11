package rpc_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/errdefs"
	"banger/internal/opid"
	"banger/internal/oplog"
	"banger/internal/rpc"
	"banger/internal/rpc/rpctest"
)

// logBuffer collects the server's JSON log; the server writes from many goroutines while
// the test reads, so access is locked.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records returns every log record that carries op_id id.
func (b *logBuffer) records(t *testing.T, id string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(b.buf.Bytes(), []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		if rec["op_id"] == id {
			out = append(out, rec)
		}
	}
	return out
}

type testServer struct {
	srv    *rpc.Server
	socket string
	log    *logBuffer
}

// startServer serves srv (configured by setup) on a socket in a temp dir. Cleanup cancels
// the serve context and fails the test if Serve does not return promptly, which is what
// a daemon shutting down relies on.
func startServer(t *testing.T, setup func(s *rpc.Server)) *testServer {
	t.Helper()
	lb := &logBuffer{}
	srv := rpc.NewServer(slog.New(slog.NewJSONHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})))
	setup(srv)
	sock := filepath.Join(t.TempDir(), "rpc.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listening on %s: %v", sock, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after cancel, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return within 5s of its context being cancelled")
		}
	})
	return &testServer{srv: srv, socket: sock, log: lb}
}

// rawConn speaks the wire protocol by hand, so malformed input can be sent.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, sock string) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dialing %s: %v", sock, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) send(line string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, line); err != nil {
		r.t.Fatalf("writing request: %v", err)
	}
}

// response reads one response line, checking it is a well-formed envelope.
func (r *rawConn) response() rpc.Response {
	r.t.Helper()
	line, err := r.br.ReadBytes('\n')
	if err != nil {
		r.t.Fatalf("reading response: %v (got %q)", err, line)
	}
	var resp rpc.Response
	if err := json.Unmarshal(line, &resp); err != nil {
		r.t.Fatalf("response is not JSON: %q: %v", line, err)
	}
	if (resp.Error == nil) == (resp.Result == nil) {
		r.t.Fatalf("response must carry exactly one of result and error: %s", line)
	}
	if !opid.Valid(resp.OpID) {
		r.t.Fatalf("response op_id %q is not a valid op id: %s", resp.OpID, line)
	}
	if resp.Error != nil && resp.Error.OpID != resp.OpID {
		r.t.Fatalf("error.op_id %q differs from response op_id %q", resp.Error.OpID, resp.OpID)
	}
	return resp
}

func echoServer(t *testing.T) *testServer {
	return startServer(t, func(s *rpc.Server) {
		s.Handle("test.echo", func(ctx context.Context, p json.RawMessage) (any, error) {
			return map[string]any{"params": p, "op_id": opid.From(ctx)}, nil
		})
	})
}

func TestEarlyErrorsCarryOpID(t *testing.T) {
	ts := echoServer(t)
	const given = "op-clientchosen1"
	tests := []struct {
		name   string
		line   string
		code   string
		wantID string // "" means a fresh id must be minted
	}{
		{"unknown method", `{"version":1,"method":"no.such","op_id":"op-clientchosen1"}`, rpc.CodeUnknownMethod, given},
		{"unknown method minted", `{"version":1,"method":"no.such"}`, rpc.CodeUnknownMethod, ""},
		{"bad version", `{"version":2,"method":"test.echo","op_id":"op-clientchosen1"}`, rpc.CodeBadVersion, given},
		{"missing version", `{"method":"test.echo"}`, rpc.CodeBadVersion, ""},
		{"malformed json", `{"version":1,"method":`, rpc.CodeBadRequest, ""},
		{"not an object", `[1,2,3]`, rpc.CodeBadRequest, ""},
		{"wrong field type", `{"version":"1","method":"test.echo"}`, rpc.CodeBadRequest, ""},
		{"trailing garbage", `{"version":1,"method":"test.echo","op_id":"op-clientchosen1"} junk`, rpc.CodeBadRequest, given},
		{"trailing brace", `{"version":1,"method":"test.echo","op_id":"op-clientchosen1"}}`, rpc.CodeBadRequest, given},
		{"second object", `{"version":1,"method":"test.echo"} {"version":1,"method":"test.echo"}`, rpc.CodeBadRequest, ""},
		{"empty method", `{"version":1,"method":"","op_id":"op-clientchosen1"}`, rpc.CodeBadRequest, given},
		{"malformed op id", `{"version":1,"method":"no.such","op_id":"op-X!"}`, rpc.CodeUnknownMethod, ""},
		{"op id too short", `{"version":1,"method":"","op_id":"op-abc"}`, rpc.CodeBadRequest, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := dialRaw(t, ts.socket)
			rc.send(tt.line + "\n")
			resp := rc.response()
			if resp.Error == nil {
				t.Fatalf("got result %s, want error %s", resp.Result, tt.code)
			}
			if resp.Error.Code != tt.code {
				t.Errorf("code = %q, want %q (message %q)", resp.Error.Code, tt.code, resp.Error.Message)
			}
			if resp.Error.Message == "" {
				t.Errorf("error has an empty message")
			}
			if tt.wantID != "" && resp.OpID != tt.wantID {
				t.Errorf("op_id = %q, want the request's %q adopted", resp.OpID, tt.wantID)
			}
			if tt.wantID == "" && resp.OpID == given {
				t.Errorf("op_id %q was adopted from a request that did not carry it", resp.OpID)
			}
			// An early error does not end the connection: the next request is served.
			rc.send(`{"version":1,"method":"test.echo"}` + "\n")
			if next := rc.response(); next.Error != nil {
				t.Errorf("request after %s failed: %v", tt.name, next.Error)
			}
		})
	}
}

func TestHandlerErrorKindsMapToCodes(t *testing.T) {
	plain := errors.New("disk exploded")
	tests := []struct {
		err  error
		code string
		kind error
	}{
		{errdefs.InvalidArgument("vcpu", 0, "must be between 1 and 64"), rpc.CodeInvalidArgument, errdefs.ErrInvalidArgument},
		{errdefs.NotFound("vm", "ghost"), rpc.CodeNotFound, errdefs.ErrNotFound},
		{errdefs.New(errdefs.ErrAlreadyExists, "vm %q already exists", "web"), rpc.CodeAlreadyExists, errdefs.ErrAlreadyExists},
		{errdefs.New(errdefs.ErrConflict, "vm is running"), rpc.CodeConflict, errdefs.ErrConflict},
		{errdefs.New(errdefs.ErrAmbiguous, "prefix %q matches 2 vms", "ab"), rpc.CodeAmbiguous, errdefs.ErrAmbiguous},
		{errdefs.New(errdefs.ErrUnavailable, "root helper not running"), rpc.CodeUnavailable, errdefs.ErrUnavailable},
		{errdefs.New(errdefs.ErrPermissionDenied, "not allowed"), rpc.CodePermissionDenied, errdefs.ErrPermissionDenied},
		{fmt.Errorf("starting vm: %w", errdefs.NotFound("image", "tiny")), rpc.CodeNotFound, errdefs.ErrNotFound},
		{plain, rpc.CodeInternal, nil},
		{fmt.Errorf("creating vm: %w", plain), rpc.CodeInternal, nil},
	}
	ts := startServer(t, func(s *rpc.Server) {
		for i, tt := range tests {
			s.Handle(fmt.Sprintf("test.fail%d", i), func(context.Context, json.RawMessage) (any, error) {
				return nil, tt.err
			})
		}
	})
	for i, tt := range tests {
		t.Run(tt.code+"/"+tt.err.Error(), func(t *testing.T) {
			// On the wire.
			rc := dialRaw(t, ts.socket)
			rc.send(fmt.Sprintf(`{"version":1,"method":"test.fail%d","op_id":"op-wire0000%d"}`+"\n", i, i))
			resp := rc.response()
			if resp.Error == nil || resp.Error.Code != tt.code {
				t.Fatalf("response = %+v, want code %q", resp.Error, tt.code)
			}
			if resp.Error.Message != tt.err.Error() {
				t.Errorf("message = %q, want %q", resp.Error.Message, tt.err.Error())
			}
			if want := fmt.Sprintf("op-wire0000%d", i); resp.OpID != want {
				t.Errorf("op_id = %q, want adopted %q", resp.OpID, want)
			}

			// Through the client.
			err := rpc.Call(context.Background(), ts.socket, fmt.Sprintf("test.fail%d", i), nil, nil)
			var er *rpc.ErrorResponse
			if !errors.As(err, &er) {
				t.Fatalf("rpc.Call error %T %v is not an *rpc.ErrorResponse", err, err)
			}
			if er.Code != tt.code || !opid.Valid(er.OpID) {
				t.Errorf("ErrorResponse = %+v, want code %q and a valid op id", er, tt.code)
			}
			if !strings.HasSuffix(err.Error(), "("+er.OpID+")") {
				t.Errorf("Error() = %q, want it to end with (%s)", err.Error(), er.OpID)
			}
			for _, kind := range []error{errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrAlreadyExists,
				errdefs.ErrConflict, errdefs.ErrAmbiguous, errdefs.ErrUnavailable, errdefs.ErrPermissionDenied} {
				if got, want := errors.Is(err, kind), kind == tt.kind; got != want {
					t.Errorf("errors.Is(err, %v) = %v, want %v", kind, got, want)
				}
			}
		})
	}
}

func TestCallForwardsOpIDAndHint(t *testing.T) {
	seen := make(chan string, 1)
	ts := startServer(t, func(s *rpc.Server) {
		s.Handle("image.show", func(ctx context.Context, _ json.RawMessage) (any, error) {
			seen <- opid.From(ctx)
			return nil, errdefs.WithHint(errdefs.NotFound("image", "tiny"), "run `banger image pull tiny`")
		})
	})
	const id = "op-forwarded42"
	err := rpc.Call(opid.With(context.Background(), id), ts.socket, "image.show", map[string]string{"image": "tiny"}, nil)
	if got := <-seen; got != id {
		t.Errorf("handler saw op id %q, want the caller's %q", got, id)
	}
	var er *rpc.ErrorResponse
	if !errors.As(err, &er) {
		t.Fatalf("error %T %v is not an *rpc.ErrorResponse", err, err)
	}
	if er.OpID != id {
		t.Errorf("error op id = %q, want %q", er.OpID, id)
	}
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("errors.Is(%v, ErrNotFound) = false", err)
	}
	if er.Hint != "run `banger image pull tiny`" || errdefs.HintOf(err) != er.Hint {
		t.Errorf("hint = %q, HintOf = %q; want the handler's hint", er.Hint, errdefs.HintOf(err))
	}
	if want := `image "tiny" not found (op-forwarded42)`; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
}

func TestCallDecodesResultAndMintsOpID(t *testing.T) {
	ts := echoServer(t)
	var out struct {
		Params map[string]int `json:"params"`
		OpID   string         `json:"op_id"`
	}
	if err := rpc.Call(context.Background(), ts.socket, "test.echo", map[string]int{"n": 7}, &out); err != nil {
		t.Fatalf("Call: %v", err)
	}
	if out.Params["n"] != 7 {
		t.Errorf("echoed params = %v, want n=7", out.Params)
	}
	if !opid.Valid(out.OpID) {
		t.Errorf("handler saw op id %q; the server must mint one when the caller sends none", out.OpID)
	}
}

func TestDownstreamWireErrorKeepsCode(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) {
		s.Handle("test.relay", func(context.Context, json.RawMessage) (any, error) {
			return nil, fmt.Errorf("creating tap: %w", &rpc.ErrorResponse{Code: rpc.CodeUnavailable, Message: "helper busy", OpID: "op-downstream1", Hint: "retry"})
		})
	})
	err := rpc.Call(opid.With(context.Background(), "op-upstream01"), ts.socket, "test.relay", nil, nil)
	var er *rpc.ErrorResponse
	if !errors.As(err, &er) {
		t.Fatalf("error %v is not an *rpc.ErrorResponse", err)
	}
	if er.Code != rpc.CodeUnavailable || er.Hint != "retry" || er.OpID != "op-upstream01" {
		t.Errorf("relayed error = %+v, want code unavailable, hint retry, this call's op id", er)
	}
}

func TestOversizedLineRejected(t *testing.T) {
	ts := echoServer(t)
	c, err := net.Dial("unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	// The server stops reading once the limit is passed, so the writer blocks or fails
	// with EPIPE; it runs aside while the response is read.
	go func() {
		chunk := bytes.Repeat([]byte("a"), 64<<10)
		for sent := 0; sent < 4*rpc.MaxLineBytes; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		t.Fatalf("reading response to an oversized line: %v", err)
	}
	var resp rpc.Response
	if err := json.Unmarshal(line, &resp); err != nil {
		t.Fatalf("response %q: %v", line, err)
	}
	if resp.Error == nil || resp.Error.Code != rpc.CodeBadRequest || !opid.Valid(resp.Error.OpID) || resp.OpID != resp.Error.OpID {
		t.Fatalf("response = %s, want bad_request with a valid op id", line)
	}
	if !strings.Contains(resp.Error.Message, fmt.Sprint(rpc.MaxLineBytes)) {
		t.Errorf("message %q does not state the limit", resp.Error.Message)
	}
	// The server survives and serves others.
	if err := rpc.Call(context.Background(), ts.socket, "test.echo", nil, nil); err != nil {
		t.Fatalf("call after oversized line: %v", err)
	}
}

func TestLineAtLimitAccepted(t *testing.T) {
	ts := echoServer(t)
	prefix := `{"version":1,"method":"test.echo","params":"`
	pad := rpc.MaxLineBytes - len(prefix) - len(`"}`+"\n")
	line := prefix + strings.Repeat("x", pad) + `"}` + "\n"
	if len(line) != rpc.MaxLineBytes {
		t.Fatalf("test line is %d bytes, want %d", len(line), rpc.MaxLineBytes)
	}
	rc := dialRaw(t, ts.socket)
	rc.send(line)
	if resp := rc.response(); resp.Error != nil {
		t.Fatalf("a line of exactly MaxLineBytes was rejected: %v", resp.Error)
	}
}

func TestManyRequestsOnOneConnection(t *testing.T) {
	ts := echoServer(t)
	c, err := rpc.Dial(context.Background(), ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 5 {
		var out struct {
			Params int `json:"params"`
		}
		if err := c.Call(context.Background(), "test.echo", i, &out); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if out.Params != i {
			t.Fatalf("call %d echoed %d", i, out.Params)
		}
	}
	// An error in the middle does not end the connection.
	if err := c.Call(context.Background(), "no.such", nil, nil); !errors.As(err, new(*rpc.ErrorResponse)) {
		t.Fatalf("unknown method: %v", err)
	}
	if err := c.Call(context.Background(), "test.echo", nil, nil); err != nil {
		t.Fatalf("call after error: %v", err)
	}

	// Pipelined requests in one write are answered in order; blank lines are skipped.
	rc := dialRaw(t, ts.socket)
	rc.send(`{"version":1,"method":"test.echo","params":1,"op_id":"op-pipeline1"}` + "\n\n" +
		`{"version":1,"method":"test.echo","params":2,"op_id":"op-pipeline2"}` + "\n" +
		`{"version":1,"method":"test.echo","params":3,"op_id":"op-pipeline3"}` + "\n")
	for i := 1; i <= 3; i++ {
		resp := rc.response()
		if want := fmt.Sprintf("op-pipeline%d", i); resp.OpID != want {
			t.Errorf("response %d op_id = %q, want %q", i, resp.OpID, want)
		}
	}
}

func TestConcurrentClients(t *testing.T) {
	ts := echoServer(t)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("op-concurrent%03d", i)
			var out struct {
				Params int    `json:"params"`
				OpID   string `json:"op_id"`
			}
			ctx, cancel := context.WithTimeout(opid.With(context.Background(), id), 20*time.Second)
			defer cancel()
			if err := rpc.Call(ctx, ts.socket, "test.echo", i, &out); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			if out.Params != i || out.OpID != id {
				errs <- fmt.Errorf("client %d got params %d op %q", i, out.Params, out.OpID)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestAuthorizeRefuses(t *testing.T) {
	var gotPID int32
	var mu sync.Mutex
	ts := startServer(t, func(s *rpc.Server) {
		s.Authorize = func(cred *unix.Ucred) error {
			mu.Lock()
			gotPID = cred.Pid
			mu.Unlock()
			return fmt.Errorf("uid %d may not use the helper", cred.Uid)
		}
		s.Handle("test.echo", func(context.Context, json.RawMessage) (any, error) {
			t.Error("handler ran for a refused connection")
			return nil, nil
		})
	})
	// Repeated, because the server refuses and hangs up without reading the request, so
	// the client's write can race the server's close.
	for i := range 20 {
		err := rpc.Call(context.Background(), ts.socket, "test.echo", nil, nil)
		var er *rpc.ErrorResponse
		if !errors.As(err, &er) {
			t.Fatalf("attempt %d: error %T %v is not an *rpc.ErrorResponse", i, err, err)
		}
		if er.Code != rpc.CodePermissionDenied || !errors.Is(err, errdefs.ErrPermissionDenied) || !opid.Valid(er.OpID) {
			t.Fatalf("attempt %d: error = %+v, want permission_denied with a valid op id", i, er)
		}
		if want := fmt.Sprintf("uid %d may not use the helper", os.Getuid()); !strings.Contains(er.Message, want) {
			t.Errorf("message %q does not contain %q", er.Message, want)
		}
	}
	// A client that writes only after the server has refused and hung up must still get
	// the refusal, not a bare "broken pipe".
	c, err := rpc.Dial(context.Background(), ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(100 * time.Millisecond)
	err = c.Call(context.Background(), "test.echo", nil, nil)
	if !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Errorf("late write after refusal: %v, want permission_denied", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if int(gotPID) != os.Getpid() {
		t.Errorf("Authorize saw pid %d, want this process %d", gotPID, os.Getpid())
	}
}

func TestAuthorizeAllows(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) {
		s.Authorize = func(cred *unix.Ucred) error {
			if int(cred.Uid) != os.Getuid() {
				return fmt.Errorf("uid %d refused", cred.Uid)
			}
			return nil
		}
		s.Handle("test.ok", func(context.Context, json.RawMessage) (any, error) { return "ok", nil })
	})
	var out string
	if err := rpc.Call(context.Background(), ts.socket, "test.ok", nil, &out); err != nil || out != "ok" {
		t.Fatalf("authorized call = %q, %v", out, err)
	}
}

func streamServer(t *testing.T) *testServer {
	return startServer(t, func(s *rpc.Server) {
		// test.upper upper-cases everything the client sends until EOF, then half-closes.
		s.HandleStream("test.upper", func(ctx context.Context, _ json.RawMessage, st *rpc.Stream) error {
			if err := st.Accept(map[string]string{"op_id": opid.From(ctx)}); err != nil {
				return err
			}
			in, err := io.ReadAll(st)
			if err != nil {
				return fmt.Errorf("reading stream: %w", err)
			}
			if _, err := st.Write(bytes.ToUpper(in)); err != nil {
				return fmt.Errorf("writing stream: %w", err)
			}
			return st.CloseWrite()
		})
		s.HandleStream("test.refuse", func(ctx context.Context, _ json.RawMessage, st *rpc.Stream) error {
			return errdefs.WithHint(errdefs.New(errdefs.ErrConflict, "vm %q is not running", "web"), "start it")
		})
		s.HandleStream("test.forget", func(ctx context.Context, _ json.RawMessage, st *rpc.Stream) error {
			return nil
		})
	})
}

func TestStreamCarriesRawBytes(t *testing.T) {
	ts := streamServer(t)
	c, err := rpc.Dial(context.Background(), ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var accepted struct {
		OpID string `json:"op_id"`
	}
	ctx := opid.With(context.Background(), "op-streaming01")
	st, err := c.Stream(ctx, "test.upper", nil, &accepted)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	if accepted.OpID != "op-streaming01" {
		t.Errorf("stream handler saw op id %q", accepted.OpID)
	}
	// Bytes that look like protocol lines must pass through untouched.
	payload := "hello\n{\"version\":1,\"method\":\"x\"}\n\x00\xffbinary"
	if _, err := st.Write([]byte(payload)); err != nil {
		t.Fatalf("writing stream: %v", err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("reading stream: %v", err)
	}
	if want := strings.ToUpper(payload); string(got) != want {
		t.Errorf("stream returned %q, want %q", got, want)
	}
}

func TestStreamBytesSentWithRequest(t *testing.T) {
	ts := streamServer(t)
	rc := dialRaw(t, ts.socket)
	// Raw bytes written in the same segment as the request line must not be lost in the
	// server's read buffer.
	rc.send(`{"version":1,"method":"test.upper","op_id":"op-streaming02"}` + "\nearly bytes")
	if err := rc.c.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if resp := rc.response(); resp.Error != nil || resp.OpID != "op-streaming02" {
		t.Fatalf("stream response = %+v", resp)
	}
	got, err := io.ReadAll(rc.br)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "EARLY BYTES" {
		t.Errorf("stream returned %q, want %q", got, "EARLY BYTES")
	}
}

func TestStreamErrorBeforeAccept(t *testing.T) {
	ts := streamServer(t)
	c, err := rpc.Dial(context.Background(), ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Stream(context.Background(), "test.refuse", nil, nil)
	var er *rpc.ErrorResponse
	if !errors.As(err, &er) {
		t.Fatalf("error %T %v is not an *rpc.ErrorResponse", err, err)
	}
	if er.Code != rpc.CodeConflict || er.Hint != "start it" || !opid.Valid(er.OpID) {
		t.Errorf("error = %+v, want conflict with hint and op id", er)
	}

	// A handler that returns without accepting or failing still yields an answer.
	c2, err := rpc.Dial(context.Background(), ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, err = c2.Stream(context.Background(), "test.forget", nil, nil)
	if !errors.As(err, &er) || er.Code != rpc.CodeInternal {
		t.Errorf("stream handler returning nil without Accept: %v, want an internal error", err)
	}
}

func TestOperationLog(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) {
		s.Handle("vm.create", func(ctx context.Context, _ json.RawMessage) (any, error) {
			oplog.Stage(ctx, "disks_ready", "vm", "web")
			time.Sleep(5 * time.Millisecond)
			oplog.Stage(ctx, "vmm_started")
			return "ok", nil
		})
		s.Handle("vm.delete", func(context.Context, json.RawMessage) (any, error) {
			return nil, errdefs.NotFound("vm", "ghost")
		})
	})
	const okID, failID = "op-logsuccess1", "op-logfailure1"
	if err := rpc.Call(opid.With(context.Background(), okID), ts.socket, "vm.create", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := rpc.Call(opid.With(context.Background(), failID), ts.socket, "vm.delete", nil, nil); err == nil {
		t.Fatal("vm.delete succeeded")
	}

	count := func(recs []map[string]any, msg string) []map[string]any {
		var out []map[string]any
		for _, r := range recs {
			if r["msg"] == msg {
				out = append(out, r)
			}
		}
		return out
	}
	check := func(id, method, endMsg string, stages []string) {
		t.Helper()
		recs := ts.log.records(t, id)
		for _, r := range recs {
			if r["method"] != method {
				t.Errorf("%s record %q has method %v, want %q", id, r["msg"], r["method"], method)
			}
		}
		if n := len(count(recs, "operation begin")); n != 1 {
			t.Errorf("%s: %d 'operation begin' records, want 1", id, n)
		}
		ends := count(recs, endMsg)
		if len(ends) != 1 {
			t.Fatalf("%s: %d %q records, want 1 (all: %v)", id, len(ends), endMsg, recs)
		}
		if _, ok := ends[0]["duration_ms"].(float64); !ok {
			t.Errorf("%s: %q record lacks a numeric duration_ms: %v", id, endMsg, ends[0])
		}
		other := "operation done"
		if endMsg == other {
			other = "operation failed"
		}
		if n := len(count(recs, other)); n != 0 {
			t.Errorf("%s: %d unexpected %q records", id, n, other)
		}
		got := count(recs, "operation stage")
		if len(got) != len(stages) {
			t.Fatalf("%s: %d stage records, want %d", id, len(got), len(stages))
		}
		for i, r := range got {
			if r["stage"] != stages[i] {
				t.Errorf("%s: stage %d = %v, want %q", id, i, r["stage"], stages[i])
			}
			if _, ok := r["elapsed_ms"].(float64); !ok {
				t.Errorf("%s: stage record lacks a numeric elapsed_ms: %v", id, r)
			}
		}
	}
	check(okID, "vm.create", "operation done", []string{"disks_ready", "vmm_started"})
	check(failID, "vm.delete", "operation failed", nil)
	if recs := count(ts.log.records(t, failID), "operation failed"); len(recs) == 1 && recs[0]["error"] != `vm "ghost" not found` {
		t.Errorf("failure record error = %v", recs[0]["error"])
	}
	if recs := count(ts.log.records(t, okID), "operation stage"); len(recs) > 0 && recs[0]["vm"] != "web" {
		t.Errorf("stage attrs not logged: %v", recs[0])
	}
}

func TestClientCancelReturnsPromptly(t *testing.T) {
	release := make(chan struct{})
	ts := startServer(t, func(s *rpc.Server) {
		s.Handle("test.block", func(ctx context.Context, _ json.RawMessage) (any, error) {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-release:
				return nil, nil
			}
		})
	})
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	err := rpc.Call(ctx, ts.socket, "test.block", nil, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Call after cancel = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Call took %v to return after cancel", d)
	}

	ctx, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err := rpc.Call(ctx, ts.socket, "test.block", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Call past deadline = %v, want context.DeadlineExceeded", err)
	}
}

func TestServeStopsWithIdleClients(t *testing.T) {
	lb := &logBuffer{}
	srv := rpc.NewServer(slog.New(slog.NewJSONHandler(lb, nil)))
	sock := filepath.Join(t.TempDir(), "rpc.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	// A connected client that never sends anything must not hold up shutdown.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return with an idle client connected")
	}
}

var opIDPattern = regexp.MustCompile(`^op-[a-z0-9]{8,64}$`)

func TestMintedOpIDsAreDistinct(t *testing.T) {
	ts := echoServer(t)
	seen := map[string]bool{}
	rc := dialRaw(t, ts.socket)
	for range 20 {
		rc.send(`{"version":1,"method":"no.such"}` + "\n")
		id := rc.response().OpID
		if !opIDPattern.MatchString(id) || seen[id] {
			t.Fatalf("minted op id %q is malformed or repeated", id)
		}
		seen[id] = true
	}
}

// TestListenUnixNeverWiderThanFinalMode: with umask 000, the socket never exists at its path
// with a mode wider than the one asked for.
func TestListenUnixNeverWiderThanFinalMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	w := rpctest.WatchSocket(t, path)
	l, err := rpc.ListenUnix(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	w.Check(0o600)
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %v, want only the socket", ents)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dialing the renamed socket: %v", err)
	}
	c.Close()
	l.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}

	// A stale socket (its server gone without removing it) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	l, err = rpc.ListenUnix(path, 0o600, -1)
	if err != nil {
		t.Fatalf("replacing a stale socket: %v", err)
	}
	l.Close()
	// Any other file is refused and kept.
	if err := os.WriteFile(path, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := rpc.ListenUnix(path, 0o600, -1); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("listening over a regular file: %v, want a conflict", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Errorf("the regular file was replaced: %q", b)
	}
}
