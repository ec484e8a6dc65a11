package guest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
	"banger/internal/rpc"
)

// Agent answers requests on yamux sessions. The zero value is not usable; use NewAgent.
type Agent struct {
	log *slog.Logger
	// powerOff runs in the background after a shutdown request was answered; nil means
	// this agent cannot power anything off (it runs on a host, for tests or debugging).
	powerOff func(log *slog.Logger)
	// setIdentity applies an identity request (see Identity); nil refuses them, which is
	// what an agent on a host must do: it would renumber the host.
	setIdentity func(id agentproto.Identity, log *slog.Logger) error
	procs       *procTable
	// boot is the guest's boot stages, reported by ping; nil off a guest.
	boot *bootStages

	shutdownOnce sync.Once
	// watches record workspace changes for --diff (watch_linux.go).
	watches watchSet
}

// NewAgent returns an agent logging to log. powerOff is what a shutdown request does after
// it was answered; nil refuses shutdown requests.
func NewAgent(log *slog.Logger, powerOff func(*slog.Logger)) *Agent {
	if log == nil {
		log = slog.Default()
	}
	return &Agent{log: log, powerOff: powerOff, procs: newProcTable()}
}

// Serve answers streams on sess, one goroutine each, until sess ends or ctx is cancelled
// (which closes sess). Shutdown requests power off the way this process's situation
// allows: as PID 1 it is the init's power-off, inside a banger guest it signals PID 1, and
// anywhere else (a host) they are refused.
func Serve(ctx context.Context, sess *yamux.Session, log *slog.Logger) {
	NewDefaultAgent(log).Serve(ctx, sess)
}

// WithIdentity makes the agent apply identity requests with fn, and returns it.
func (a *Agent) WithIdentity(fn func(id agentproto.Identity, log *slog.Logger) error) *Agent {
	a.setIdentity = fn
	return a
}

// Serve answers streams on sess until it ends or ctx is cancelled.
func (a *Agent) Serve(ctx context.Context, sess *yamux.Session) {
	a.serve(ctx, sess)
}

// serve returns how many streams it handled and what ended the session (io.EOF: the
// channel's end), so the channel loops can tell a session that did work from one that
// ended at once (a port with no host attached).
func (a *Agent) serve(ctx context.Context, sess *yamux.Session) (int, error) {
	defer agentproto.BindContext(ctx, sess)()
	n := 0
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			if !sess.IsClosed() && !errors.Is(err, io.EOF) {
				a.log.Warn("agent session failed", "err", err)
			}
			_ = sess.Close()
			return n, err
		}
		n++
		go a.handle(st)
	}
}

// handle runs one request on one stream.
func (a *Agent) handle(conn io.ReadWriteCloser) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	var req agentproto.Request
	if err := agentproto.ReadJSONLine(br, &req); err != nil {
		if !errors.Is(err, io.EOF) {
			a.log.Warn("bad request header", "err", err)
			_ = agentproto.WriteJSONLine(conn, agentproto.ErrorReply(errdefs.New(errdefs.ErrInvalidArgument, "request header: %v", err)))
		}
		return
	}
	log := a.log.With("type", req.Type)
	if req.OpID != "" {
		log = log.With("op_id", req.OpID)
	}
	defer recoverRequest(conn, req, log)
	// Every request is logged with its op id, pings too: the host sends one pending ping
	// per boot rather than polling, and it ties the guest's log to the create's op id. One
	// line per request, after it is answered: the log goes to the emulated serial console,
	// and a line written before the answer (the boot's ping) delays readiness.
	level := slog.LevelInfo
	start := time.Now()
	log.Debug("request begin")
	var err error
	switch req.Type {
	case agentproto.TypePing:
		err = a.handlePing(conn)
	case agentproto.TypeExec:
		err = a.handleExec(conn, br, req, log)
	case agentproto.TypePut:
		err = a.handlePut(conn, br, req)
	case agentproto.TypeGet:
		err = a.handleGet(conn, req)
	case agentproto.TypeList:
		err = a.handleList(conn, req)
	case agentproto.TypeWatch:
		err = a.handleWatch(conn, req)
	case agentproto.TypeShutdown:
		err = a.handleShutdown(conn, log)
	case agentproto.TypeIdentity:
		err = a.handleIdentity(conn, req, log)
	default:
		err = errdefs.InvalidArgument("type", req.Type, "must be one of ping, exec, put, get, list, watch, shutdown, identity")
		_ = agentproto.WriteJSONLine(conn, agentproto.ErrorReply(err))
	}
	ms := time.Since(start).Milliseconds()
	if err != nil {
		log.Warn("request failed", "err", err, "duration_ms", ms)
		return
	}
	log.Log(context.Background(), level, "request done", "duration_ms", ms)
}

// recoverRequest, deferred, turns a panic in a request into an internal error reply naming
// the op id and logs the stack: a bug in one request must not take PID 1 (and the VM) down.
func recoverRequest(w io.Writer, req agentproto.Request, log *slog.Logger) {
	if p := recover(); p != nil {
		log.Error("agent request panic", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		_ = agentproto.WriteJSONLine(w, agentproto.Reply{OK: false, Code: rpc.CodeInternal,
			Error: fmt.Sprintf("guest agent internal error in %s request %s; the guest log has the details", req.Type, req.OpID)})
	}
}

// reply sends r, or the error reply for err; it returns err so handlers can end with it.
func reply(w io.Writer, r agentproto.Reply, err error) error {
	if err != nil {
		if werr := agentproto.WriteJSONLine(w, agentproto.ErrorReply(err)); werr != nil {
			return errors.Join(err, fmt.Errorf("sending the error reply: %w", werr))
		}
		return err
	}
	r.OK = true
	if werr := agentproto.WriteJSONLine(w, r); werr != nil {
		return fmt.Errorf("sending the reply: %w", werr)
	}
	return nil
}

func (a *Agent) handlePing(conn io.Writer) error {
	host, err := os.Hostname()
	if err != nil {
		return reply(conn, agentproto.Reply{}, fmt.Errorf("reading the hostname: %w", err))
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return reply(conn, agentproto.Reply{}, fmt.Errorf("reading the kernel release: %w", err))
	}
	up, err := uptime()
	if err != nil {
		return reply(conn, agentproto.Reply{}, err)
	}
	return reply(conn, agentproto.Reply{
		Hostname:      host,
		Kernel:        unix.ByteSliceToString(uts.Release[:]),
		UptimeSeconds: up,
		AgentVersion:  Version,
		Protocol:      agentproto.ProtocolVersion,
		Boot:          a.boot.list(),
	}, nil)
}

// uptime reads the system uptime in seconds from /proc/uptime.
func uptime() (float64, error) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, fmt.Errorf("reading uptime: %w", err)
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0, fmt.Errorf("reading uptime: /proc/uptime is empty")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return 0, fmt.Errorf("reading uptime: %w", err)
	}
	return v, nil
}

func (a *Agent) handleShutdown(conn io.Writer, log *slog.Logger) error {
	if a.powerOff == nil {
		return reply(conn, agentproto.Reply{}, errdefs.New(errdefs.ErrUnavailable, "this agent does not run in a banger guest and cannot power it off"))
	}
	if err := reply(conn, agentproto.Reply{}, nil); err != nil {
		return err
	}
	a.shutdownOnce.Do(func() {
		// Let the reply reach the host before processes start dying; the power-off
		// itself takes longer than this anyway.
		go func() {
			time.Sleep(100 * time.Millisecond)
			a.powerOff(log)
		}()
	})
	return nil
}

// NewDefaultAgent is NewAgent with the power-off Serve uses: right for wherever this
// process runs, and refusing shutdown on a host.
func NewDefaultAgent(log *slog.Logger) *Agent {
	a := NewAgent(log, defaultPowerOff())
	if os.Getpid() == 1 || inBangerGuest() {
		a.setIdentity = applyIdentity
	}
	return a
}
