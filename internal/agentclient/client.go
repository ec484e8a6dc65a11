package agentclient

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"banger/internal/agentarchive"
	"banger/internal/agentproto"
	"banger/internal/errdefs"
	"banger/internal/model"
)

// The host-side calls below each consume one stream (conn): they close it before returning,
// and closing it is also how they honour ctx, so a cancelled call unblocks at once and the
// agent sees the stream end.

// PingInfo is what the agent reports about the guest.
type PingInfo struct {
	Hostname      string
	Kernel        string
	AgentVersion  string
	UptimeSeconds float64
	// Boot is the guest's boot stages that passed the host's checks; BootDropped counts
	// the ones that did not, BootDroppedWhy says why the first did not.
	Boot           []model.BootStage
	BootDropped    int
	BootDroppedWhy string
}

// ExecRequest describes a process to run in the guest.
type ExecRequest struct {
	Argv, Env  []string
	Cwd        string
	TTY        bool
	Rows, Cols uint16
	Term       string
	OpID       string
	// Root chroots the process into a guest directory (a container's rootfs); UID/GID
	// set its credentials. See the exec request in the package documentation.
	Root     string
	UID, GID uint32
	Groups   []uint32
}

// ExecIO connects a guest process to the caller. A nil Stdin sends EOF at once; nil Stdout
// or Stderr discard. Resize (rows, cols) and Signals may be nil.
type ExecIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Resize         <-chan [2]uint16
	Signals        <-chan syscall.Signal
	// Started, if set, is called once the agent reported the process running, before any
	// output: a caller that must answer "started" (containerd's task start) learns it
	// here, and an error from Exec before it was called means the process never ran.
	Started func()
}

// failure prefers the context's cause: once ctx closed the stream, the I/O error it caused
// says nothing useful.
func failure(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// roundTrip sends a header and reads the reply line.
func roundTrip(ctx context.Context, conn io.ReadWriter, br *bufio.Reader, req agentproto.Request) (agentproto.Reply, error) {
	if err := agentproto.WriteJSONLine(conn, req); err != nil {
		return agentproto.Reply{}, failure(ctx, "sending "+req.Type+" request to the guest agent", err)
	}
	var r agentproto.Reply
	if err := agentproto.ReadJSONLine(br, &r); err != nil {
		if errors.Is(err, io.EOF) {
			err = errdefs.New(errdefs.ErrUnavailable, "guest agent closed the stream without replying")
		}
		return agentproto.Reply{}, failure(ctx, "reading the guest agent's "+req.Type+" reply", err)
	}
	return r, nil
}

// maxPingField bounds each string of a ping reply (a hostname is at most 64 bytes, a
// kernel release 65).
const maxPingField = 256

// Ping asks the agent who it is; it is also the readiness check after boot.
func Ping(ctx context.Context, conn io.ReadWriteCloser, opID string) (PingInfo, error) {
	defer conn.Close()
	defer agentproto.BindContext(ctx, conn)()
	r, err := roundTrip(ctx, conn, bufio.NewReader(conn), agentproto.Request{Type: agentproto.TypePing, OpID: opID})
	if err != nil {
		return PingInfo{}, err
	}
	if err := r.Err(); err != nil {
		return PingInfo{}, fmt.Errorf("ping: %w", err)
	}
	if r.Protocol != agentproto.ProtocolVersion {
		return PingInfo{}, &ProtocolMismatchError{Agent: r.Protocol, AgentVersion: agentproto.PeerText(r.AgentVersion, maxPingField)}
	}
	// These strings come from the guest and are printed in progress lines and logs.
	info := PingInfo{
		Hostname:      agentproto.PeerText(r.Hostname, maxPingField),
		Kernel:        agentproto.PeerText(r.Kernel, maxPingField),
		AgentVersion:  agentproto.PeerText(r.AgentVersion, maxPingField),
		UptimeSeconds: r.UptimeSeconds,
	}
	info.Boot, info.BootDropped, info.BootDroppedWhy = peerBootStages(r.Boot)
	return info, nil
}

// ProtocolMismatchError is Ping's answer when the agent speaks another protocol version:
// retrying cannot help, the image's agent must be rebuilt (or banger updated). It is a
// conflict, so the wire code says the request cannot succeed as things are.
type ProtocolMismatchError struct {
	Agent        int // 0: an agent too old to report one
	AgentVersion string
}

func (e *ProtocolMismatchError) Error() string {
	return fmt.Sprintf("the guest agent (version %q) speaks protocol %d, this banger speaks %d: rebuild the image's agent with this banger (`banger image rm IMAGE`, then build or pull it again)",
		e.AgentVersion, e.Agent, agentproto.ProtocolVersion)
}

// Is makes a mismatch an errdefs.ErrConflict.
func (e *ProtocolMismatchError) Is(target error) bool { return target == errdefs.ErrConflict }

// Shutdown asks the agent to power the VM off. It returns once the agent accepted; the VMM
// process exits shortly after (wait for it with vmm.Wait).
func Shutdown(ctx context.Context, conn io.ReadWriteCloser, opID string) error {
	defer conn.Close()
	defer agentproto.BindContext(ctx, conn)()
	r, err := roundTrip(ctx, conn, bufio.NewReader(conn), agentproto.Request{Type: agentproto.TypeShutdown, OpID: opID})
	if err != nil {
		return err
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// Exec runs req in the guest with stdio attached and returns its exit status (128+signo
// when a signal killed it). An error means the process could not be started or the stream
// broke; errors.Is(err, ErrCommandNotFound) when argv[0] does not exist in the guest.
func Exec(ctx context.Context, conn io.ReadWriteCloser, req ExecRequest, stdio ExecIO) (int, error) {
	defer conn.Close()
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return -1, errdefs.InvalidArgument("argv", req.Argv, "a command is required")
	}
	defer agentproto.BindContext(ctx, conn)()
	br := bufio.NewReader(conn)
	r, err := roundTrip(ctx, conn, br, agentproto.Request{
		Type: agentproto.TypeExec, OpID: req.OpID,
		Argv: req.Argv, Env: req.Env, Cwd: req.Cwd,
		TTY: req.TTY, Rows: req.Rows, Cols: req.Cols, Term: req.Term,
		Root: req.Root, UID: req.UID, GID: req.GID, Groups: req.Groups,
	})
	if err != nil {
		return -1, err
	}
	if err := r.Err(); err != nil {
		return -1, fmt.Errorf("exec %s: %w", req.Argv[0], err)
	}
	if stdio.Started != nil {
		stdio.Started()
	}

	fw := &agentproto.FrameWriter{W: conn}
	done := make(chan struct{})
	defer close(done)
	// The stdin pump may stay blocked in Read after Exec returns (a terminal cannot be
	// interrupted); its next write then fails on the closed stream and it ends.
	go pumpStdin(fw, stdio.Stdin)
	go pumpControl(fw, stdio.Resize, stdio.Signals, done)

	stdout, stderr := stdio.Stdout, stdio.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		kind, payload, err := agentproto.ReadFrame(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errdefs.New(errdefs.ErrUnavailable, "guest agent closed the stream before the exit status")
			}
			return -1, failure(ctx, "exec "+req.Argv[0], err)
		}
		if ctx.Err() != nil {
			// A read already waiting when ctx ended may still deliver a frame, typically
			// the exit of the process the cancellation hung up: the call was cancelled.
			return -1, failure(ctx, "exec "+req.Argv[0], ctx.Err())
		}
		switch kind {
		case agentproto.FrameStdout:
			if _, err := stdout.Write(payload); err != nil {
				return -1, fmt.Errorf("writing the output of %s: %w", req.Argv[0], err)
			}
		case agentproto.FrameStderr:
			if _, err := stderr.Write(payload); err != nil {
				return -1, fmt.Errorf("writing the error output of %s: %w", req.Argv[0], err)
			}
		case agentproto.FrameExit:
			code, err := agentproto.PayloadInt32(kind, payload)
			if err != nil {
				return -1, fmt.Errorf("exec %s: %w", req.Argv[0], err)
			}
			return int(code), nil
		case agentproto.FrameError:
			return -1, fmt.Errorf("exec %s: guest agent: %s", req.Argv[0], agentproto.PeerText(string(payload), agentproto.MaxPeerMessage))
		default:
			return -1, fmt.Errorf("exec %s: unexpected frame kind %d from the guest agent", req.Argv[0], kind)
		}
	}
}

func pumpStdin(fw *agentproto.FrameWriter, in io.Reader) {
	if in == nil {
		_ = fw.Write(agentproto.FrameStdinEOF, nil)
		return
	}
	buf := make([]byte, agentproto.ChunkSize)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if werr := fw.Write(agentproto.FrameStdin, buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// A read error other than EOF still ends the input: the process must not wait
			// for bytes that will never come.
			_ = fw.Write(agentproto.FrameStdinEOF, nil)
			return
		}
	}
}

func pumpControl(fw *agentproto.FrameWriter, resize <-chan [2]uint16, signals <-chan syscall.Signal, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case sz, ok := <-resize:
			if !ok {
				resize = nil
				continue
			}
			var b [4]byte
			binary.BigEndian.PutUint16(b[0:2], sz[0])
			binary.BigEndian.PutUint16(b[2:4], sz[1])
			if fw.Write(agentproto.FrameResize, b[:]) != nil {
				return
			}
		case sig, ok := <-signals:
			if !ok {
				signals = nil
				continue
			}
			if fw.WriteInt32(agentproto.FrameSignal, int32(sig)) != nil {
				return
			}
		}
	}
}

// Put copies a host file or directory into the guest; see the package documentation for
// where it lands.
func Put(ctx context.Context, conn io.ReadWriteCloser, opID, srcHostPath, dstGuestPath string, opts CopyOptions) error {
	defer conn.Close()
	opts = opts.withDefaults()
	if dstGuestPath == "" {
		return errdefs.InvalidArgument("destination", dstGuestPath, "a guest path is required")
	}
	fi, err := os.Stat(srcHostPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errdefs.NotFound("host path", srcHostPath)
		}
		return fmt.Errorf("copying %s to the guest: %w", srcHostPath, err)
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return errdefs.InvalidArgument("source", srcHostPath, "only regular files and directories can be copied")
	}
	ctx, idle := watchIdle(ctx, opts.IdleTimeout)
	defer idle.stop()
	defer agentproto.BindContext(ctx, conn)()
	conn = progressConn{conn, idle}
	if err := agentproto.WriteJSONLine(conn, agentproto.Request{Type: agentproto.TypePut, OpID: opID, Path: dstGuestPath, Mode: agentarchive.UnixMode(fi.Mode())}); err != nil {
		return failure(ctx, "sending put request to the guest agent", err)
	}

	// The agent may refuse before reading the whole archive; reading its reply concurrently
	// lets us stop sending instead of blocking on a flow-control window nobody drains.
	type result struct {
		r   agentproto.Reply
		err error
	}
	replies := make(chan result, 1)
	go func() {
		var r agentproto.Reply
		err := agentproto.ReadJSONLine(bufio.NewReader(conn), &r)
		replies <- result{r, err}
	}()
	sent := make(chan error, 1)
	go func() {
		fw := &agentproto.FrameWriter{W: conn}
		dw := agentproto.DataWriter{FW: fw}
		if err := agentarchive.WriteTar(dw, srcHostPath); err != nil {
			_ = fw.Write(agentproto.FrameError, []byte(err.Error()))
			sent <- err
			return
		}
		sent <- dw.Close()
	}()

	what := fmt.Sprintf("copying %s to guest %s", srcHostPath, dstGuestPath)
	var res result
	select {
	case res = <-replies:
		if res.err == nil && res.r.OK {
			// Only a complete archive earns an ok; collect the sender's result.
			if err := <-sent; err != nil {
				return failure(ctx, what, err)
			}
		}
	case err := <-sent:
		if err != nil {
			_ = conn.Close()
			return failure(ctx, what, err)
		}
		res = <-replies
	}
	if res.err != nil {
		if errors.Is(res.err, io.EOF) {
			res.err = errdefs.New(errdefs.ErrUnavailable, "guest agent closed the stream without replying")
		}
		return failure(ctx, what, res.err)
	}
	if err := res.r.Err(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// Get copies a guest file or directory to the host. The guest is not trusted: the archive
// must hold only srcGuestPath's base name at its top level, it is capped at opts.MaxBytes,
// its modes are masked (no setuid, setgid or sticky; umask applied), and nothing may land
// outside dstHostPath, go through a symlink, or replace anything but the named target;
// see extractTar.
func Get(ctx context.Context, conn io.ReadWriteCloser, opID, srcGuestPath, dstHostPath string, opts CopyOptions) error {
	defer conn.Close()
	opts = opts.withDefaults()
	if dstHostPath == "" {
		return errdefs.InvalidArgument("destination", dstHostPath, "a host path is required")
	}
	pol, err := hostPolicy(srcGuestPath, opts.MaxBytes)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("copying guest %s to %s", srcGuestPath, dstHostPath)
	ctx, idle := watchIdle(ctx, opts.IdleTimeout)
	defer idle.stop()
	defer agentproto.BindContext(ctx, conn)()
	conn = progressConn{conn, idle}
	br := bufio.NewReader(conn)
	r, err := roundTrip(ctx, conn, br, agentproto.Request{Type: agentproto.TypeGet, OpID: opID, Path: srcGuestPath})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	// extractTar reads up to data_eof, so an archive cut short by an agent error fails.
	if err := agentarchive.ExtractTar(&agentproto.DataReader{R: br}, dstHostPath, pol); err != nil {
		return failure(ctx, what, err)
	}
	return nil
}
