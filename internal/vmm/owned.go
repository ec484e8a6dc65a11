package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Owned is a VMM process found on the host that provably belongs to a VM directory under
// a daemon's VMs directory.
type Owned struct {
	PID   int
	Start uint64
	VMID  string // the directory name under the VMs directory, i.e. the VM id
	Argv  []string
}

// FindOwned lists the processes of this user whose command line runs one of binaries (by
// base name, as MatchCmdline does) and names a path inside vmsDir/<id>/. Those are the only
// processes a daemon may treat as its VMMs: another user's, another state directory's, or
// any other program's processes are never listed.
func FindOwned(vmsDir string, binaries []string) ([]Owned, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	prefix := filepath.Clean(vmsDir) + "/"
	uid := os.Getuid()
	var out []Owned
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if owner, err := procUID(pid); err != nil || owner != uid {
			continue
		}
		argv, err := readCmdline(pid)
		if err != nil || !runsOneOf(argv, binaries) {
			continue
		}
		id := vmIDIn(argv, prefix)
		if id == "" || isZombie(pid) {
			continue
		}
		start, err := StartTime(pid)
		if err != nil {
			continue
		}
		out = append(out, Owned{PID: pid, Start: start, VMID: id, Argv: argv})
	}
	return out, nil
}

func runsOneOf(argv, binaries []string) bool {
	for _, b := range binaries {
		if MatchCmdline(b)(argv) {
			return true
		}
	}
	return false
}

// vmIDIn returns the first path component after prefix in any argument ("unix:" and
// option lists like "file=…,if=none" included), or "".
func vmIDIn(argv []string, prefix string) string {
	for _, a := range argv {
		i := strings.Index(a, prefix)
		if i < 0 {
			continue
		}
		rest := a[i+len(prefix):]
		if j := strings.IndexAny(rest, "/,"); j > 0 {
			return rest[:j]
		}
	}
	return ""
}

func procUID(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("Uid:")); ok {
			f := strings.Fields(string(rest))
			if len(f) > 0 {
				return strconv.Atoi(f[0])
			}
		}
	}
	return -1, errors.New("no Uid line")
}

// KillOwned kills o if it is still the same process (pid, start time, and command line
// naming its VM directory) and waits up to wait for it to exit. The check and the signal go
// through one pidfd, so a pid recycled in between is never signalled.
func KillOwned(o Owned, vmsDir string, binaries []string, wait time.Duration) error {
	fd, err := unix.PidfdOpen(o.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening pidfd of %d: %w", o.PID, err)
	}
	defer unix.Close(fd)
	argv, err := readCmdline(o.PID)
	start, serr := StartTime(o.PID)
	if err != nil || serr != nil || start != o.Start || !runsOneOf(argv, binaries) ||
		vmIDIn(argv, filepath.Clean(vmsDir)+"/") != o.VMID {
		return nil // gone, or no longer that VMM
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("killing VMM pid %d: %w", o.PID, err)
	}
	// The pidfd turns readable when the process exits (a non-child stays a zombie only
	// until its parent, init or a subreaper, reaps it).
	deadline := time.Now().Add(wait)
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(PollInterval/time.Millisecond))
		if (err == nil && n > 0) || isZombie(o.PID) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("VMM pid %d did not exit within %s of SIGKILL", o.PID, wait)
		}
	}
}
