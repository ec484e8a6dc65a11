package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// PIDFileName is the file in a VM's directory that holds its VMM's pid.
const PIDFileName = "vmm.pid"

// Process is a running VMM process: a child started by Launch, or a process found again
// by Adopt after the daemon restarted. Its Done channel closes when the process exits.
type Process struct {
	pid     int
	start   uint64 // start time in clock ticks since boot: with pid, the process's identity
	cmdline []string
	done    chan struct{}

	// mu guards pidfd and cmd against the exit watcher closing the fd while Kill uses it,
	// and console against the watcher reading it while AttachConsole sets it.
	mu      sync.Mutex
	pidfd   int // -1 when not open
	cmd     *exec.Cmd
	console *console
}

// Launch starts cmd as a VMM in its own session, so that it survives the daemon being
// killed, with stdout and stderr going to its console log at logPath (files capped at
// logMax bytes, 0 for DefaultConsoleLogMax) through the console FIFO in dir (see
// ConsolePipeName), and records its pid in dir/vmm.pid. The VMM must write its serial
// console to its stdout. cmd must not have been started.
func Launch(cmd *exec.Cmd, logPath string, logMax int64, dir string) (*Process, error) {
	c, w, err := newConsole(dir, logPath, logMax)
	if err != nil {
		return nil, fmt.Errorf("preparing the VMM console: %w", err)
	}
	// The child keeps its own copy of the write end; ours must go, or the drain would
	// never see the end of the output.
	defer w.Close()

	cmd.Stdout = w
	cmd.Stderr = w
	cmd.Stdin = nil
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		w.Close()
		c.wait(drainGrace)
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	p := &Process{
		pid:     cmd.Process.Pid,
		cmdline: append([]string(nil), cmd.Args...),
		done:    make(chan struct{}),
		pidfd:   -1,
		cmd:     cmd,
		console: c,
	}
	// Read before Wait can reap the child, so the pid still names it.
	p.start, _ = StartTime(p.pid)
	go func() {
		_ = cmd.Wait()
		p.drainConsole()
		close(p.done)
	}()
	if err := WritePIDFile(dir, p.pid); err != nil {
		_ = p.Kill()
		<-p.done
		return nil, err
	}
	return p, nil
}

// Adopt finds a VMM process started earlier, possibly by another daemon. match decides
// from the process's command line whether it is the expected VMM, and a nonzero start must
// equal the process's start time (so a recycled pid is never adopted); a process that is
// gone, a zombie, or does not match gives ErrNotRunning.
func Adopt(pid int, start uint64, match func(argv []string) bool) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d: %w", pid, ErrNotRunning)
	}
	// Opening the pidfd before checking the command line pins the process: if the pid is
	// recycled after the check, the fd still refers to the process that was checked.
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("pid %d: %w", pid, ErrNotRunning)
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
		fd = -1 // old kernel or restricted: fall back to polling /proc
	case err != nil:
		return nil, fmt.Errorf("opening pidfd for %d: %w", pid, err)
	}
	argv, err := readCmdline(pid)
	got, serr := StartTime(pid)
	if err != nil || serr != nil || isZombie(pid) || !match(argv) || (start != 0 && got != start) {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
		return nil, fmt.Errorf("pid %d is not this VM's VMM: %w", pid, ErrNotRunning)
	}
	p := &Process{pid: pid, start: got, cmdline: argv, done: make(chan struct{}), pidfd: fd}
	go p.watch()
	return p, nil
}

// watch waits for an adopted (non-child) process to exit.
func (p *Process) watch() {
	if p.pidfd >= 0 {
		fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, -1)
			if err == nil && n > 0 {
				break
			}
			if err != nil && !errors.Is(err, unix.EINTR) {
				p.pollUntilGone()
				break
			}
		}
	} else {
		p.pollUntilGone()
	}
	p.drainConsole()
	p.mu.Lock()
	if p.pidfd >= 0 {
		_ = unix.Close(p.pidfd)
		p.pidfd = -1
	}
	close(p.done)
	p.mu.Unlock()
}

// drainConsole waits, bounded, for the exited VMM's last console output to reach the log,
// so that whoever waits on Done sees all of it.
func (p *Process) drainConsole() {
	p.mu.Lock()
	c := p.console
	p.mu.Unlock()
	if c != nil {
		c.wait(drainGrace)
	}
}

// AttachConsole resumes draining the console FIFO in dir into logPath, for a VMM found
// again by Adopt after the daemon restarted (output written meanwhile was dropped). A VMM
// started before consoles went through a FIFO has none; that is not an error.
func (p *Process) AttachConsole(logPath string, logMax int64, dir string) error {
	path := filepath.Join(dir, ConsolePipeName)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	r, err := openFIFO(path, os.O_RDONLY)
	if err != nil {
		return err
	}
	c := startConsole(r, logPath, logMax)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.console != nil || p.Exited() {
		c.wait(0)
		return nil
	}
	p.console = c
	return nil
}

func (p *Process) pollUntilGone() {
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	for range t.C {
		if err := unix.Kill(p.pid, 0); errors.Is(err, unix.ESRCH) || isZombie(p.pid) {
			return
		}
	}
}

// PID returns the process id.
func (p *Process) PID() int { return p.pid }

// StartTime returns the process's start time in clock ticks since boot.
func (p *Process) StartTime() uint64 { return p.start }

// Cmdline returns the process's argument vector.
func (p *Process) Cmdline() []string { return p.cmdline }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL to this process only. Killing an exited process is not an error.
func (p *Process) Kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Exited() {
		return nil
	}
	var err error
	switch {
	case p.cmd != nil:
		err = p.cmd.Process.Kill()
		if errors.Is(err, os.ErrProcessDone) {
			err = nil
		}
	case p.pidfd >= 0:
		err = unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
		if errors.Is(err, unix.ESRCH) {
			err = nil
		}
	default:
		err = unix.Kill(p.pid, unix.SIGKILL)
		if errors.Is(err, unix.ESRCH) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("killing VMM pid %d: %w", p.pid, err)
	}
	return nil
}

// WritePIDFile records pid in dir/vmm.pid, replacing the file atomically so that a reader
// never sees a partial pid.
func WritePIDFile(dir string, pid int) error {
	path := filepath.Join(dir, PIDFileName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing pidfile %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing pidfile %s: %w", path, err)
	}
	return nil
}

// ReadPIDFile returns the pid recorded in dir/vmm.pid.
func ReadPIDFile(dir string) (int, error) {
	path := filepath.Join(dir, PIDFileName)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s: bad pid %q", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// MatchCmdline returns a matcher for Adopt: the command line must run binary (compared by
// base name, since a daemon may have resolved it through PATH differently) and mention
// every one of needles in some argument.
func MatchCmdline(binary string, needles ...string) func(argv []string) bool {
	base := filepath.Base(binary)
	return func(argv []string) bool {
		if len(argv) == 0 {
			return false
		}
		found := false
		// Scripts run as "interpreter script args": accept the binary in the first two.
		for _, a := range argv[:min(2, len(argv))] {
			if filepath.Base(a) == base {
				found = true
			}
		}
		if !found {
			return false
		}
		for _, n := range needles {
			hit := false
			for _, a := range argv {
				if strings.Contains(a, n) {
					hit = true
					break
				}
			}
			if !hit {
				return false
			}
		}
		return true
	}
}

func readCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil, errors.New("empty command line")
	}
	return strings.Split(string(b), "\x00"), nil
}

// StartTime reads pid's start time (field 22 of /proc/PID/stat, clock ticks since boot):
// together with the pid it names one process for the host's uptime.
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading start time of pid %d: %w", pid, err)
	}
	// The command name is in parentheses and may contain anything; fields follow the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: malformed stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: state is field 3, starttime field 22, so index 22-3 here.
	if len(f) < 20 {
		return 0, fmt.Errorf("pid %d: short stat", pid)
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("pid %d: start time %q: %w", pid, f[19], err)
	}
	return v, nil
}

// isZombie reports whether pid has exited but not been reaped (its /proc entry remains).
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] == 'Z' || b[i+2] == 'X'
}

// FileSize returns the size of path, or 0 if it does not exist.
func FileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}
