package guest

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// procTable knows which children the agent waits for itself (exec requests), so the PID 1
// reaper collects only orphans and never steals an exit status os/exec is waiting for.
type procTable struct {
	mu   sync.Mutex
	pids map[int]struct{}
}

func newProcTable() *procTable { return &procTable{pids: map[int]struct{}{}} }

// start runs fn, which starts a child and returns its pid, under the table's lock: a child
// that dies at once is then registered before the reaper can look at it.
func (t *procTable) start(fn func() (int, error)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	pid, err := fn()
	if err != nil {
		return err
	}
	t.pids[pid] = struct{}{}
	return nil
}

func (t *procTable) forget(pid int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pids, pid)
}

// reapOrphans waits for every zombie child of this process that is not an exec child and
// returns how many it collected. It finds them in /proc rather than with wait4(-1), which
// would also take the exit status of registered children.
func (t *procTable) reapOrphans() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	self := os.Getpid()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ours := t.pids[pid]; ours {
			continue
		}
		state, ppid, ok := procStat(pid)
		if !ok || ppid != self || state != 'Z' {
			continue
		}
		var ws syscall.WaitStatus
		if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err == nil && got == pid {
			n++
		}
	}
	return n
}

// procStat returns the state and parent pid from /proc/PID/stat. The command name may
// contain spaces and parentheses, so fields are counted after its last ')'.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := bytes.Fields(b[i+1:])
	if len(fields) < 2 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(string(fields[1]))
	if err != nil {
		return 0, 0, false
	}
	return fields[0][0], ppid, true
}

// reap collects orphaned zombies on every SIGCHLD until ctx ends. The periodic sweep is a
// safety net: signals coalesce, and a zombie that appeared while a sweep held the lock
// would otherwise wait for the next child to die.
func (t *procTable) reap(ctx context.Context, log *slog.Logger) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGCHLD)
	defer signal.Stop(ch)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-tick.C:
		}
		if n := t.reapOrphans(); n > 0 {
			log.Debug("reaped orphaned processes", "count", n)
		}
	}
}
