package guest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

// DefaultPath is the PATH of processes the agent runs, before the request's env.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

const (
	defaultCwd  = "/root"
	defaultTerm = "xterm-256color"
	defaultRows = 24
	defaultCols = 80
	// outputGrace bounds the wait for stdout/stderr to close after the process exited: a
	// background child that inherited them would otherwise hold the exit status forever.
	outputGrace = 2 * time.Second
	// hangupGrace is how long a process whose client vanished gets after SIGHUP.
	hangupGrace = 2 * time.Second
	// stdinQueue bounds buffered stdin chunks; past it the stream's flow control pushes
	// back on the client.
	stdinQueue = 64
)

// execEnv builds the environment: defaults, then the request's KEY=VAL entries replacing
// same-named defaults.
func execEnv(req agentproto.Request) ([]string, error) {
	env := []string{
		"PATH=" + DefaultPath,
		"HOME=/root",
		"USER=root",
		"LOGNAME=root",
		"SHELL=/bin/sh",
	}
	if req.TTY {
		term := req.Term
		if term == "" {
			term = defaultTerm
		}
		env = append(env, "TERM="+term)
	}
	index := make(map[string]int, len(env))
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		index[k] = i
	}
	for _, kv := range req.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsRune(kv, 0) {
			return nil, errdefs.InvalidArgument("env", kv, "entries must be KEY=VALUE")
		}
		if i, seen := index[k]; seen {
			env[i] = kv
			continue
		}
		index[k] = len(env)
		env = append(env, kv)
	}
	return env, nil
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

// lookPath resolves name against the process's PATH, not the agent's own.
func lookPath(name, pathEnv string) (string, error) {
	notFound := fmt.Errorf("%w: %s", agentproto.ErrCommandNotFound, name)
	executable := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return fmt.Errorf("%s is a directory", p)
		}
		if fi.Mode()&0o111 == 0 {
			return errdefs.New(errdefs.ErrPermissionDenied, "%s is not executable", p)
		}
		return nil
	}
	if strings.Contains(name, "/") {
		err := executable(name)
		if errors.Is(err, fs.ErrNotExist) {
			return "", notFound
		}
		if err != nil {
			return "", fmt.Errorf("cannot run %s: %w", name, err)
		}
		return name, nil
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", notFound
}

func execCwd(cwd string) (string, error) {
	if cwd == "" {
		if fi, err := os.Stat(defaultCwd); err == nil && fi.IsDir() {
			return defaultCwd, nil
		}
		return "/", nil
	}
	fi, err := os.Stat(cwd)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", errdefs.NotFound("working directory", cwd)
		}
		return "", fmt.Errorf("checking working directory %s: %w", cwd, err)
	}
	if !fi.IsDir() {
		return "", errdefs.InvalidArgument("cwd", cwd, "not a directory")
	}
	return cwd, nil
}

// maxGroups is NGROUPS_MAX.
const maxGroups = 65536

// rootedPaths resolves cwd (default /) and argv0 for a process chrooted into root. The
// names are paths inside root: symlinks in a container's rootfs point at the container's
// own root, so they are not followed from here (Lstat); the kernel resolves them after
// the chroot, and a dangling one fails the start as command not found.
func rootedPaths(root, cwd, argv0, pathEnv string) (string, string, error) {
	if !filepath.IsAbs(root) || filepath.Clean(root) == "/" {
		return "", "", errdefs.InvalidArgument("root", root, "must be an absolute directory other than /")
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return "", "", errdefs.NotFound("root directory", root)
	}
	if cwd == "" {
		cwd = "/"
	}
	if !filepath.IsAbs(cwd) {
		return "", "", errdefs.InvalidArgument("cwd", cwd, "must be absolute inside the root")
	}
	if _, err := os.Lstat(filepath.Join(root, cwd)); err != nil {
		return "", "", errdefs.NotFound("working directory", cwd)
	}
	exists := func(p string) bool {
		fi, err := os.Lstat(filepath.Join(root, p))
		return err == nil && !fi.IsDir()
	}
	if strings.Contains(argv0, "/") {
		p := argv0
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		if !exists(p) {
			return "", "", fmt.Errorf("%w: %s", agentproto.ErrCommandNotFound, argv0)
		}
		return cwd, p, nil
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		if p := filepath.Join(dir, argv0); exists(p) {
			return cwd, p, nil
		}
	}
	return "", "", fmt.Errorf("%w: %s", agentproto.ErrCommandNotFound, argv0)
}

// process is one running exec: the child plus the descriptors the agent keeps.
type process struct {
	cmd   *exec.Cmd
	pid   int
	ptmx  *os.File       // tty mode: the terminal's master side
	stdin io.WriteCloser // non-tty: write end of the stdin pipe; tty: ptmx
	outs  []*os.File     // read ends streamed to the client
}

func (a *Agent) startProcess(req agentproto.Request) (*process, error) {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return nil, errdefs.InvalidArgument("argv", req.Argv, "a command is required")
	}
	env, err := execEnv(req)
	if err != nil {
		return nil, err
	}
	var cwd, path string
	if req.Root != "" {
		cwd, path, err = rootedPaths(req.Root, req.Cwd, req.Argv[0], envValue(env, "PATH"))
	} else {
		cwd, err = execCwd(req.Cwd)
		if err == nil {
			path, err = lookPath(req.Argv[0], envValue(env, "PATH"))
		}
	}
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: path, Args: req.Argv, Env: env, Dir: cwd}
	// Its own process group, so a signal frame reaches the command's children too (the
	// tty branch replaces it with a session of its own). The kernel applies Chroot before
	// Dir, so both are paths inside the root.
	attr := &syscall.SysProcAttr{Setpgid: true, Chroot: req.Root}
	if req.UID != 0 || req.GID != 0 || len(req.Groups) > 0 {
		if len(req.Groups) > maxGroups {
			return nil, errdefs.InvalidArgument("groups", len(req.Groups), fmt.Sprintf("at most %d supplementary groups", maxGroups))
		}
		attr.Credential = &syscall.Credential{Uid: req.UID, Gid: req.GID, Groups: req.Groups}
	}
	cmd.SysProcAttr = attr
	p := &process{cmd: cmd}

	if req.TTY {
		attr.Setpgid = false // Setsid (set by pty) makes it a group leader already
		ws := &pty.Winsize{Rows: req.Rows, Cols: req.Cols}
		if ws.Rows == 0 {
			ws.Rows = defaultRows
		}
		if ws.Cols == 0 {
			ws.Cols = defaultCols
		}
		// StartWithSize makes the child a session leader with the terminal as its
		// controlling tty, so ^C typed into it reaches the foreground job.
		err := a.procs.start(func() (int, error) {
			ptmx, err := pty.StartWithSize(cmd, ws)
			if err != nil {
				return 0, err
			}
			p.ptmx = ptmx
			return cmd.Process.Pid, nil
		})
		if err != nil {
			return nil, startError(req.Argv[0], err)
		}
		p.stdin = p.ptmx
		p.outs = []*os.File{p.ptmx}
		p.pid = cmd.Process.Pid
		return p, nil
	}

	var closeOnErr, childEnds []*os.File
	fail := func(err error) (*process, error) {
		for _, f := range append(closeOnErr, childEnds...) {
			f.Close()
		}
		return nil, err
	}
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("creating pipes for %s: %w", req.Argv[0], err)
		}
		return r, w, nil
	}
	inR, inW, err := pipe()
	if err != nil {
		return fail(err)
	}
	closeOnErr, childEnds = append(closeOnErr, inW), append(childEnds, inR)
	outR, outW, err := pipe()
	if err != nil {
		return fail(err)
	}
	closeOnErr, childEnds = append(closeOnErr, outR), append(childEnds, outW)
	errR, errW, err := pipe()
	if err != nil {
		return fail(err)
	}
	closeOnErr, childEnds = append(closeOnErr, errR), append(childEnds, errW)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	if err := a.procs.start(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	}); err != nil {
		return fail(startError(req.Argv[0], err))
	}
	for _, f := range childEnds {
		f.Close()
	}
	p.stdin = inW
	p.outs = []*os.File{outR, errR}
	p.pid = cmd.Process.Pid
	return p, nil
}

func startError(name string, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return errdefs.New(errdefs.ErrPermissionDenied, "starting %s: %w", name, err)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", agentproto.ErrCommandNotFound, name)
	}
	return fmt.Errorf("starting %s: %w", name, err)
}

// signalGroup signals the process group led by pid (every exec child leads one).
func signalGroup(pid int, sig syscall.Signal) error {
	err := syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		// The leader may have left its group (setsid in a script); reach it directly.
		err = syscall.Kill(pid, sig)
	}
	return err
}

func (a *Agent) handleExec(conn io.ReadWriteCloser, br *bufio.Reader, req agentproto.Request, log *slog.Logger) error {
	p, err := a.startProcess(req)
	if err != nil {
		return reply(conn, agentproto.Reply{}, err)
	}
	defer a.procs.forget(p.pid)
	log = log.With("pid", p.pid)
	if err := reply(conn, agentproto.Reply{}, nil); err != nil {
		_ = signalGroup(p.pid, syscall.SIGKILL)
		_ = p.cmd.Wait()
		p.closeAll()
		return err
	}
	log.Debug("process started", "argv0", req.Argv[0], "tty", req.TTY)

	fw := &agentproto.FrameWriter{W: conn}
	var outputs sync.WaitGroup
	kinds := []byte{agentproto.FrameStdout, agentproto.FrameStderr}
	for i, f := range p.outs {
		outputs.Add(1)
		go func() {
			defer outputs.Done()
			pumpOutput(f, fw, kinds[i])
		}()
	}

	exited := make(chan struct{})
	go a.execInput(br, p, req.TTY, exited, log)

	waitErr := p.cmd.Wait()
	close(exited)
	code := exitStatus(p.cmd, waitErr, log)

	drained := make(chan struct{})
	go func() { outputs.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(outputGrace):
		log.Warn("output still open after the process exited (a background process holds it); not waiting for it")
		for _, f := range p.outs {
			// An expired deadline ends the pending read; closing the fd under a reader
			// would be a race on the descriptor.
			_ = f.SetReadDeadline(time.Now())
		}
		<-drained
	}
	p.closeAll()
	log.Info("process exited", "argv0", req.Argv[0], "exit_code", code)
	if err := fw.WriteInt32(agentproto.FrameExit, int32(code)); err != nil {
		return fmt.Errorf("sending the exit status: %w", err)
	}
	return nil
}

func (p *process) closeAll() {
	if p.ptmx == nil {
		p.stdin.Close()
	}
	for _, f := range p.outs {
		f.Close()
	}
}

// exitStatus is the shell's convention: the exit code, or 128+signo for a signal.
func exitStatus(cmd *exec.Cmd, waitErr error, log *slog.Logger) int {
	if cmd.ProcessState == nil {
		log.Error("waiting for the process failed", "err", waitErr)
		return 255
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return cmd.ProcessState.ExitCode()
}

func pumpOutput(f *os.File, fw *agentproto.FrameWriter, kind byte) {
	buf := make([]byte, agentproto.ChunkSize)
	clientGone := false
	for {
		n, err := f.Read(buf)
		if n > 0 && !clientGone {
			// Once the client is gone keep draining, so the process is not blocked on a
			// full pipe while it is being hung up.
			clientGone = fw.Write(kind, buf[:n]) != nil
		}
		if err != nil {
			// EOF for pipes, EIO for a terminal whose last slave closed.
			return
		}
	}
}

// execInput applies the client's frames to the process until the stream ends. A stream
// that ends before the process exited means the client went away: hang the process up.
func (a *Agent) execInput(br *bufio.Reader, p *process, tty bool, exited <-chan struct{}, log *slog.Logger) {
	chunks := make(chan []byte, stdinQueue)
	go feedStdin(p, tty, chunks)
	stdinOpen := true
	closeStdin := func() {
		if stdinOpen {
			stdinOpen = false
			close(chunks)
		}
	}
	defer closeStdin()
	for {
		kind, payload, err := agentproto.ReadFrame(br)
		if err != nil {
			select {
			case <-exited:
			default:
				log.Warn("client went away before the process exited; hanging it up", "err", err)
				go hangUp(p.pid, exited)
			}
			return
		}
		switch kind {
		case agentproto.FrameStdin:
			if !stdinOpen {
				continue
			}
			select {
			case chunks <- payload:
			case <-exited:
			}
		case agentproto.FrameStdinEOF:
			closeStdin()
		case agentproto.FrameSignal:
			v, err := agentproto.PayloadInt32(kind, payload)
			if err != nil || v < 1 || v > 64 {
				log.Warn("ignoring a bad signal frame", "payload", payload)
				continue
			}
			if err := signalGroup(p.pid, syscall.Signal(v)); err != nil && !errors.Is(err, syscall.ESRCH) {
				log.Warn("delivering a signal failed", "signal", v, "err", err)
			}
		case agentproto.FrameResize:
			if len(payload) != 4 || p.ptmx == nil {
				continue
			}
			ws := &pty.Winsize{Rows: binary.BigEndian.Uint16(payload[0:2]), Cols: binary.BigEndian.Uint16(payload[2:4])}
			if err := pty.Setsize(p.ptmx, ws); err != nil {
				log.Warn("resizing the terminal failed", "err", err)
			}
		default:
			log.Warn("ignoring an unexpected frame", "kind", kind)
		}
	}
}

// feedStdin writes queued chunks to the process. Write errors (the process closed its
// stdin or exited) only stop the writing; the queue is still drained.
func feedStdin(p *process, tty bool, chunks <-chan []byte) {
	var failed bool
	for b := range chunks {
		if failed {
			continue
		}
		if _, err := p.stdin.Write(b); err != nil {
			failed = true
		}
	}
	if tty {
		// A terminal has no EOF to close; ^D at the start of a line is how a reader on
		// it sees end of input.
		if !failed {
			_, _ = p.stdin.Write([]byte{4})
		}
		return
	}
	p.stdin.Close()
}

func hangUp(pid int, exited <-chan struct{}) {
	_ = signalGroup(pid, syscall.SIGHUP)
	select {
	case <-exited:
	case <-time.After(hangupGrace):
		_ = signalGroup(pid, syscall.SIGKILL)
	}
}
