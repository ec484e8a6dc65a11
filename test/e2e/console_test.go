package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// consoleLogMax is console_log_max in the harness's configuration: small, so that a guest
// under TCG overruns it within seconds.
const consoleLogMax = 256 << 10

// countingTail counts what it is given and keeps the end of it.
type countingTail struct {
	mu   sync.Mutex
	n    int64
	tail []byte
}

func (c *countingTail) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += int64(len(p))
	c.tail = append(c.tail, p...)
	if len(c.tail) > 64<<10 {
		c.tail = append([]byte(nil), c.tail[len(c.tail)-32<<10:]...)
	}
	return len(p), nil
}

func (c *countingTail) get() (int64, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, string(c.tail)
}

// TestConsoleSpamStaysCapped: a guest writing to its serial console at full speed for
// 25 seconds, through a daemon crash and restart, never makes either console log file
// exceed the cap; `vm logs -f` follows across the rotations; after the restart the daemon
// logs the console again, and `vm logs` prints only the capped rest.
func TestConsoleSpamStaysCapped(t *testing.T) {
	x := need(t)
	vm := x.createVM(t, "e2e-spam")
	logPath := filepath.Join(vm.Dir, "console.log")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	follow := exec.CommandContext(ctx, filepath.Join(x.bin, "banger"), "--socket", x.socket, "vm", "logs", "-f", "e2e-spam")
	followed := &countingTail{}
	follow.Stdout = followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}

	x.mustCLI(t, "vm", "exec", "e2e-spam", "--", "sh", "-c",
		// 45 s of spam: how fast the emulated guest writes varies by machine and day (31 KiB/s
		// to over 100), so the test waits for the rotations, not for a fixed time, and the
		// spam outlasts that wait and the daemon's restart.
		"(yes spam-spam-spam-spam > /dev/ttyS0 & p=$!; sleep 45; kill $p; echo SPAM-DONE > /dev/ttyS0) </dev/null >/dev/null 2>&1 &")
	began := time.Now()

	var largest int64
	watch := func(until time.Time) {
		for time.Now().Before(until) {
			for _, f := range []string{logPath, logPath + ".1"} {
				if fi, err := os.Stat(f); err == nil && fi.Size() > largest {
					largest = fi.Size()
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for deadline := began.Add(35 * time.Second); ; {
		watch(time.Now().Add(500 * time.Millisecond))
		if n, _ := followed.get(); n > 2*consoleLogMax || time.Now().After(deadline) {
			break
		}
	}
	n, _ := followed.get()
	if n <= 2*consoleLogMax {
		t.Errorf("vm logs -f saw %d bytes in %.0f s of spam, want more than two rotations (%d)", n, time.Since(began).Seconds(), 2*consoleLogMax)
	}
	t.Logf("guest console throughput: %d bytes followed in %.1f s (%.0f KiB/s)", n, time.Since(began).Seconds(), float64(n)/1024/time.Since(began).Seconds())
	cancel()
	follow.Wait()

	// The daemon crashes and comes back while the guest goes on writing.
	x.stopDaemon(syscall.SIGKILL)
	watch(time.Now().Add(2 * time.Second))
	if err := x.startDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(func() bool {
		b, _ := os.ReadFile(logPath)
		return bytes.Contains(b, []byte("SPAM-DONE"))
	}, 60*time.Second); err != nil {
		t.Fatalf("the guest's last line never reached the log after the daemon restart: %v", err)
	}
	watch(time.Now().Add(200 * time.Millisecond))
	if largest > consoleLogMax {
		t.Errorf("a console log file reached %d bytes, cap %d", largest, consoleLogMax)
	}
	out := x.mustCLI(t, "vm", "logs", "e2e-spam")
	if len(out) > 2*consoleLogMax || !strings.Contains(out, "SPAM-DONE") {
		t.Errorf("vm logs printed %d bytes (cap 2×%d), SPAM-DONE present: %v", len(out), consoleLogMax, strings.Contains(out, "SPAM-DONE"))
	}
	if st := x.show(t, "e2e-spam"); st.State != "running" || st.PID != vm.PID {
		t.Errorf("after the spam and the restart: state %s pid %d (was %d)", st.State, st.PID, vm.PID)
	}
}
