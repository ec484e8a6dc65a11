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
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/errdefs"
	"banger/internal/opid"
)

// HandlerFunc serves one method. The returned value is marshalled as the result.
type HandlerFunc func(ctx context.Context, params json.RawMessage) (any, error)

// StreamFunc serves a method that turns the connection into a byte stream: it calls
// s.Accept once it is ready (sending the success response), then owns s until it returns.
// An error returned before Accept is sent as the error response.
type StreamFunc func(ctx context.Context, params json.RawMessage, s *Stream) error

// Server dispatches requests to handlers.
type Server struct {
	Logger *slog.Logger
	// Authorize, when set, is called with the peer's credentials for every connection;
	// an error refuses the connection (the root helper uses it).
	Authorize func(cred *unix.Ucred) error
	// Observe, when set, is called once per dispatched call with the method, the wire
	// code ("" on success) and the duration, for metrics.
	Observe func(method, code string, d time.Duration)

	mu      sync.RWMutex
	methods map[string]HandlerFunc
	streams map[string]StreamFunc
	conns   sync.WaitGroup
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
	go func() {
		<-ctx.Done()
		l.Close()
	}()
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
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			s.serveConn(ctx, c)
		}()
	}
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

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	if s.Authorize != nil {
		cred, err := PeerCred(c)
		if err == nil {
			err = s.Authorize(cred)
		}
		if err != nil {
			id := opid.New()
			s.Logger.Warn("rpc connection refused", "op_id", id, "error", err.Error())
			writeResponse(c, &Response{OpID: id, Error: ToWire(errdefs.New(errdefs.ErrPermissionDenied, "%v", err), id)})
			return
		}
	}
	// Unblock a read waiting for the next request when the server shuts down, so Serve's
	// wait for connections ends; a handler in flight still writes its response.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	br := bufio.NewReaderSize(c, 64<<10)
	for {
		line, err := readLine(br, MaxLineBytes)
		if errors.Is(err, errLineTooLong) {
			id := opid.New()
			s.Logger.Warn("rpc request rejected", "op_id", id, "error", err.Error())
			writeResponse(c, &Response{OpID: id, Error: newError(CodeBadRequest, id, "request line exceeds %d bytes", MaxLineBytes)})
			return
		}
		if err != nil {
			return
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if !s.dispatch(ctx, c, br, line) {
			return
		}
	}
}

var errLineTooLong = errors.New("line too long")

// readLine reads one '\n'-terminated line of at most max bytes without buffering more.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		buf = append(buf, frag...)
		if len(buf) > max {
			return nil, errLineTooLong
		}
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

// DecodeRequest parses one request line. Errors are wire errors with code bad_request or
// bad_version; the op id is adopted when it is well formed, otherwise minted.
func DecodeRequest(line []byte) (*Request, string, *ErrorResponse) {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&req); err != nil {
		id := opid.New()
		return nil, id, newError(CodeBadRequest, id, "malformed request: %v", err)
	}
	id := req.OpID
	if !opid.Valid(id) {
		id = opid.New()
	}
	// Decoder.More misses a stray '}' or ']', so look at the rest of the line itself; only
	// JSON whitespace may follow, exactly what json.Unmarshal would accept.
	if len(bytes.TrimLeft(line[dec.InputOffset():], " \t\r\n")) > 0 {
		return nil, id, newError(CodeBadRequest, id, "malformed request: trailing data after the JSON object")
	}
	if req.Version != Version {
		return nil, id, newError(CodeBadVersion, id, "unsupported protocol version %d; this server speaks version %d", req.Version, Version)
	}
	if req.Method == "" {
		return nil, id, newError(CodeBadRequest, id, "method: must not be empty")
	}
	return &req, id, nil
}

type startKey struct{}
type methodKey struct{}
type loggerKey struct{}

// Logger returns the operation's logger (with op_id and method) carried by ctx, or base.
func Logger(ctx context.Context, base *slog.Logger) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return opid.Logger(ctx, base)
}

// WithLogger attaches an operation logger to ctx.
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// Stage logs one stage of the operation carried by ctx with the elapsed time since it began.
func Stage(ctx context.Context, base *slog.Logger, stage string, attrs ...any) {
	l := Logger(ctx, base)
	args := []any{"stage", stage}
	if t, ok := ctx.Value(startKey{}).(time.Time); ok {
		args = append(args, "elapsed_ms", time.Since(t).Milliseconds())
	}
	l.Info("operation stage", append(args, attrs...)...)
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
	log := s.Logger.With("op_id", id, "method", req.Method)
	octx := opid.With(ctx, id)
	octx = context.WithValue(octx, startKey{}, start)
	octx = context.WithValue(octx, methodKey{}, req.Method)
	octx = WithLogger(octx, log)
	log.Info("operation begin")

	finish := func(err error) {
		d := time.Since(start)
		if s.Observe != nil {
			code := ""
			if err != nil {
				code = ToWire(err, id).Code
			}
			s.Observe(req.Method, code, d)
		}
		if err != nil {
			log.Error("operation failed", "duration_ms", d.Milliseconds(), "error", err.Error())
		} else {
			log.Info("operation done", "duration_ms", d.Milliseconds())
		}
	}

	if sh != nil {
		st := &Stream{conn: c, br: br, opID: id}
		err := sh(octx, req.Params, st)
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
	result, err := h(rctx, req.Params)
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
