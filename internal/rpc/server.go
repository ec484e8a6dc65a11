package rpc

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
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/errdefs"
	"banger/internal/opid"
	"banger/internal/oplog"
)

// HandlerFunc serves one method. The returned value is marshalled as the result.
type HandlerFunc func(ctx context.Context, params json.RawMessage) (any, error)

// StreamFunc serves a method that turns the connection into a byte stream: it calls
// s.Accept once it is ready (sending the success response), then owns s until it returns.
// An error returned before Accept is sent as the error response.
type StreamFunc func(ctx context.Context, params json.RawMessage, s *Stream) error

// Limits bound what local clients can hold on a server. A zero field takes its default
// from DefaultLimits.
type Limits struct {
	// MaxConns is how many connections may be open at once; more are answered with an
	// unavailable error and closed. Streaming connections count too.
	MaxConns int
	// LineTimeout is how long a request line may take to arrive once its first byte did;
	// a client that sends half a line and stalls is dropped after it.
	LineTimeout time.Duration
	// IdleTimeout is how long a connection may wait for its next request. A call in
	// progress and a connection turned into a stream have no deadline.
	IdleTimeout time.Duration
	// PendingBytes is how many bytes of request lines longer than a connection's read
	// buffer all connections may hold together while those lines arrive; a line that
	// would exceed it is answered unavailable and its connection closed. Real requests
	// are a few hundred bytes, so this only ever stops clients that send huge lines.
	PendingBytes int64
}

// DefaultLimits are generous for banger's clients, which open one connection per call
// and send each request line at once.
var DefaultLimits = Limits{MaxConns: 128, LineTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, PendingBytes: 16 << 20}

func (l Limits) withDefaults() Limits {
	if l.MaxConns <= 0 {
		l.MaxConns = DefaultLimits.MaxConns
	}
	if l.LineTimeout <= 0 {
		l.LineTimeout = DefaultLimits.LineTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultLimits.IdleTimeout
	}
	if l.PendingBytes <= 0 {
		l.PendingBytes = DefaultLimits.PendingBytes
	}
	return l
}

// readBufSize is each connection's read buffer; a longer request line grows its own
// buffer up to MaxLineBytes as its bytes arrive, so an idle connection costs 4 KiB.
const readBufSize = 4 << 10

// Server dispatches requests to handlers.
type Server struct {
	Logger *slog.Logger
	// Authorize, when set, is called with the peer's credentials for every connection;
	// an error refuses the connection (the root helper uses it).
	Authorize func(cred *unix.Ucred) error
	// Observe, when set, is called once per dispatched call with the method, the wire
	// code ("" on success) and the duration, for metrics.
	Observe func(method, code string, d time.Duration)
	// Limits bound connections, set before Serve.
	Limits Limits
	// QuietOperations leaves out the per-call "operation begin/done/failed" records, for
	// a server (the root helper) that writes its own single record per call. Records
	// about refused connections and malformed requests, which reach no handler, stay.
	QuietOperations bool

	mu      sync.RWMutex
	methods map[string]HandlerFunc
	streams map[string]StreamFunc
	conns   sync.WaitGroup
	pending atomic.Int64 // bytes reserved by long request lines in flight, see Limits.PendingBytes
}

var errBusy = errors.New("too many request bytes in flight")

// reserveLine returns a grow function for readLine that reserves what a line holds beyond
// its connection's read buffer from the server-wide budget, and the function that gives
// the reservation back once the line was handled.
func (s *Server) reserveLine(limit int64) (grow func(n int) error, release func()) {
	var held int64
	grow = func(n int) error {
		want := int64(n-readBufSize) - held
		if want <= 0 {
			return nil
		}
		// Compare-and-swap, not add-then-undo: a transient overshoot would refuse
		// other connections whose lines fit the budget.
		for {
			cur := s.pending.Load()
			if cur+want > limit {
				return errBusy
			}
			if s.pending.CompareAndSwap(cur, cur+want) {
				held += want
				return nil
			}
		}
	}
	release = func() {
		s.pending.Add(-held)
		held = 0
	}
	return grow, release
}

// NewServer returns a server logging to l.
func NewServer(l *slog.Logger) *Server {
	return &Server{Logger: l, methods: map[string]HandlerFunc{}, streams: map[string]StreamFunc{}}
}

// Handle registers a method.
func (s *Server) Handle(method string, h HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.methods[method] = h
}

// HandleStream registers a streaming method.
func (s *Server) HandleStream(method string, h StreamFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[method] = h
}

// Methods lists the registered method names.
func (s *Server) Methods() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for m := range s.methods {
		out = append(out, m)
	}
	for m := range s.streams {
		out = append(out, m)
	}
	return out
}

// Serve accepts connections until ctx ends or l fails. In-flight requests see ctx cancelled.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	lim := s.Limits.withDefaults()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	slots := make(chan struct{}, lim.MaxConns)
	var refusals refusalLog
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				s.conns.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accepting rpc connection: %w", err)
		}
		select {
		case slots <- struct{}{}:
		default:
			refusals.refuse(s.Logger, c, lim.MaxConns)
			continue
		}
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			defer func() { <-slots }()
			s.serveConn(ctx, c, lim)
		}()
	}
}

// refusalLog answers connections over the limit and logs them, at most once a second with
// a count, so a flood of connections cannot flood the log as well.
type refusalLog struct {
	last       time.Time
	suppressed int
}

func (r *refusalLog) refuse(log *slog.Logger, c net.Conn, limit int) {
	defer c.Close()
	id := opid.New()
	msg := fmt.Sprintf("too many connections (limit %d); try again later", limit)
	if time.Since(r.last) >= time.Second {
		log.Warn("rpc connection refused", append(peerAttrs(c), "op_id", id, "error", msg, "refused_since_last_log", r.suppressed)...)
		r.last, r.suppressed = time.Now(), 0
	} else {
		r.suppressed++
	}
	// The accept loop must not wait on a client that does not read; the answer fits in the
	// socket buffer of a fresh connection, so this only bounds a pathological case.
	c.SetWriteDeadline(time.Now().Add(time.Second))
	writeResponse(c, &Response{OpID: id, Error: newError(CodeUnavailable, id, "%s", msg)})
}

// peerAttrs names the peer of c for a log record: uid and pid on a unix socket.
func peerAttrs(c net.Conn) []any {
	cred, err := PeerCred(c)
	if err != nil {
		return nil
	}
	return []any{"peer_uid", cred.Uid, "peer_pid", cred.Pid}
}

// PeerCred returns the credentials of the process at the other end of a unix socket.
func PeerCred(c net.Conn) (*unix.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("peer credentials: not a unix socket (%T)", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("peer credentials: %w", serr)
	}
	return cred, nil
}

func (s *Server) serveConn(ctx context.Context, c net.Conn, lim Limits) {
	defer c.Close()
	if s.Authorize != nil {
		cred, err := PeerCred(c)
		if err == nil {
			err = s.Authorize(cred)
		}
		if err != nil {
			id := opid.New()
			s.Logger.Warn("rpc connection refused", append(peerAttrs(c), "op_id", id, "error", err.Error())...)
			writeResponse(c, &Response{OpID: id, Error: ToWire(errdefs.New(errdefs.ErrPermissionDenied, "%v", err), id)})
			return
		}
	}
	// Unblock a read waiting for the next request when the server shuts down, so Serve's
	// wait for connections ends; a handler in flight still writes its response.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if cred, err := PeerCred(c); err == nil {
		ctx = WithPeer(ctx, cred)
	}
	br := bufio.NewReaderSize(c, readBufSize)
	for {
		line, release, ok := s.readRequest(ctx, c, br, lim)
		if !ok {
			return
		}
		if len(bytes.TrimSpace(line)) == 0 {
			release()
			continue
		}
		// The line's bytes stay reserved while its call runs: they are still held.
		ok = s.dispatch(ctx, c, br, line)
		release()
		if !ok {
			return
		}
	}
}

// readRequest waits for the next request line under the idle deadline, then reads it under
// the line deadline and the server's pending-bytes budget, answering a line it refuses.
// The line's budget is returned with release; ok is false when the connection must close.
func (s *Server) readRequest(ctx context.Context, c net.Conn, br *bufio.Reader, lim Limits) (line []byte, release func(), ok bool) {
	if !readDeadline(ctx, c, time.Now().Add(lim.IdleTimeout)) {
		return nil, nil, false
	}
	if _, err := br.Peek(1); err != nil {
		if isTimeout(err) && ctx.Err() == nil {
			s.Logger.Info("rpc connection closed: idle", append(peerAttrs(c), "idle_timeout", lim.IdleTimeout.String())...)
		}
		return nil, nil, false
	}
	// A request has begun: all of its line must arrive within the line deadline.
	if !readDeadline(ctx, c, time.Now().Add(lim.LineTimeout)) {
		return nil, nil, false
	}
	grow, release := s.reserveLine(lim.PendingBytes)
	line, err := readLine(br, MaxLineBytes, grow)
	if err == nil {
		// The call itself (and a stream it turns into) runs without a read deadline.
		if readDeadline(ctx, c, time.Time{}) {
			return line, release, true
		}
	}
	release()
	id := opid.New()
	switch {
	case errors.Is(err, errBusy):
		s.Logger.Warn("rpc request refused", append(peerAttrs(c), "op_id", id, "error", err.Error(), "pending_bytes_limit", lim.PendingBytes)...)
		writeResponse(c, &Response{OpID: id, Error: newError(CodeUnavailable, id, "server busy: %v (limit %d bytes); send shorter requests or retry", err, lim.PendingBytes)})
	case errors.Is(err, ErrLineTooLong):
		s.Logger.Warn("rpc request rejected", append(peerAttrs(c), "op_id", id, "error", err.Error())...)
		writeResponse(c, &Response{OpID: id, Error: newError(CodeBadRequest, id, "request line exceeds %d bytes", MaxLineBytes)})
	case isTimeout(err) && ctx.Err() == nil:
		s.Logger.Warn("rpc connection dropped: request line incomplete", append(peerAttrs(c), "line_timeout", lim.LineTimeout.String())...)
	}
	return nil, nil, false
}

// readDeadline sets c's read deadline unless the server is shutting down: shutdown's
// past deadline, set after ctx ended, must not be overwritten by a later one.
func readDeadline(ctx context.Context, c net.Conn, t time.Time) bool {
	c.SetReadDeadline(t)
	return ctx.Err() == nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// DecodeRequest's Request carries op_id as the client sent it when that was a string ("" for
// a number or other JSON); the id to use is DecodeRequest's second result.

// wireRequest is a request as decoded: op_id stays raw, because a malformed one (a
// number, a bad string) is replaced by a fresh id rather than failing the request.
type wireRequest struct {
	Version int             `json:"version"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
	OpID    json.RawMessage `json:"op_id"`
}

// DecodeRequest parses one request line strictly (see DecodeStrict). Errors are wire
// errors with code bad_request or bad_version; the op id is adopted when it is well
// formed, otherwise minted.
func DecodeRequest(line []byte) (*Request, string, *ErrorResponse) {
	var wr wireRequest
	if err := DecodeStrict(line, &wr); err != nil {
		// Still answer under the client's id if one can be made out.
		var lenient struct {
			OpID json.RawMessage `json:"op_id"`
		}
		json.NewDecoder(bytes.NewReader(line)).Decode(&lenient)
		id := adoptID(lenient.OpID)
		return nil, id, newError(CodeBadRequest, id, "malformed request: %s", err.(*ErrorResponse).Message)
	}
	id := adoptID(wr.OpID)
	if wr.Version != Version {
		return nil, id, newError(CodeBadVersion, id, "unsupported protocol version %d; this server speaks version %d", wr.Version, Version)
	}
	if wr.Method == "" {
		return nil, id, newError(CodeBadRequest, id, "method: must not be empty")
	}
	var given string
	json.Unmarshal(wr.OpID, &given)
	return &Request{Version: wr.Version, Method: wr.Method, Params: wr.Params, OpID: given}, id, nil
}

// adoptID returns the request's op id if it is a well-formed string, else a fresh one.
func adoptID(raw json.RawMessage) string {
	var id string
	if json.Unmarshal(raw, &id) == nil && opid.Valid(id) {
		return id
	}
	return opid.New()
}

// dispatch serves one request; it returns false when the connection must close.
func (s *Server) dispatch(ctx context.Context, c net.Conn, br *bufio.Reader, line []byte) bool {
	req, id, werr := DecodeRequest(line)
	if werr != nil {
		s.Logger.Warn("rpc request rejected", "op_id", id, "code", werr.Code, "error", werr.Message)
		return writeResponse(c, &Response{OpID: id, Error: werr}) == nil
	}
	s.mu.RLock()
	h := s.methods[req.Method]
	sh := s.streams[req.Method]
	s.mu.RUnlock()
	if h == nil && sh == nil {
		werr := newError(CodeUnknownMethod, id, "unknown method %q", req.Method)
		s.Logger.Warn("rpc request rejected", "op_id", id, "method", req.Method, "code", werr.Code)
		return writeResponse(c, &Response{OpID: id, Error: werr}) == nil
	}
	start := time.Now()
	octx := opid.With(ctx, id)
	octx = oplog.Began(oplog.With(octx, s.Logger.With("method", req.Method)), start)
	log := oplog.G(octx)
	if !s.QuietOperations {
		log.Info("operation begin")
	}

	finish := func(err error) {
		d := time.Since(start)
		if s.Observe != nil {
			code := ""
			if err != nil {
				code = ToWire(err, id).Code
			}
			s.Observe(req.Method, code, d)
		}
		switch {
		case s.QuietOperations:
		case err != nil:
			code := CodeOf(err)
			log.Log(ctx, LogLevel(code), "operation failed", "duration_ms", d.Milliseconds(), "code", code, "error", err.Error())
		default:
			log.Info("operation done", "duration_ms", d.Milliseconds())
		}
	}

	if sh != nil {
		st := &Stream{conn: c, br: br, opID: id}
		err := recovered(log, req.Method, func() error { return sh(octx, req.Params, st) })
		if !st.accepted {
			if err == nil {
				err = errors.New("stream handler returned without accepting")
			}
			writeResponse(c, &Response{OpID: id, Error: ToWire(err, id)})
		}
		finish(err)
		return false
	}

	// The request's context ends when the server shuts down or the client hangs up (closes
	// the connection entirely; a half-close after the request, as `socat` sends, is not a
	// hang-up). Work that must outlive its client goes through the *.begin methods.
	rctx, stop := cancelOnHangup(octx, c)
	defer stop()
	var result any
	err := recovered(log, req.Method, func() (err error) {
		result, err = h(rctx, req.Params)
		return err
	})
	finish(err)
	if err != nil {
		return writeResponse(c, &Response{OpID: id, Error: ToWire(err, id)}) == nil
	}
	raw, merr := json.Marshal(result)
	if merr != nil {
		return writeResponse(c, &Response{OpID: id, Error: ToWire(fmt.Errorf("encoding result: %w", merr), id)}) == nil
	}
	return writeResponse(c, &Response{OpID: id, Result: raw}) == nil
}

// recovered runs fn, turning a panic into an internal error (the response carries the op
// id) and logging its stack, so one bad request cannot take the server down.
func recovered(log *slog.Logger, method string, fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("rpc handler panic", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = &ErrorResponse{Code: CodeInternal, Message: fmt.Sprintf("%s: internal error (a bug); the server log has the details under this op id", method)}
		}
	}()
	return fn()
}

func writeResponse(w io.Writer, r *Response) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Stream is a connection being turned into a raw byte stream by a StreamFunc.
type Stream struct {
	conn     net.Conn
	br       *bufio.Reader
	opID     string
	accepted bool
}

// Accept sends the success response; afterwards Read and Write carry raw bytes.
func (s *Stream) Accept(result any) error {
	raw, err := json.Marshal(result)
	if err != nil {
		return err
	}
	s.accepted = true
	return writeResponse(s.conn, &Response{OpID: s.opID, Result: raw})
}

func (s *Stream) Read(p []byte) (int, error)  { return s.br.Read(p) }
func (s *Stream) Write(p []byte) (int, error) { return s.conn.Write(p) }

// CloseWrite half-closes the stream so the peer reads EOF.
func (s *Stream) CloseWrite() error {
	if cw, ok := s.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close closes the connection.
func (s *Stream) Close() error { return s.conn.Close() }
