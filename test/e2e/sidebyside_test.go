package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
)

// TestDaemonsSideBySide starts two more daemons with nothing but --state-dir, --runtime-dir
// and --socket, in the namespace where the suite's own daemon already holds 127.0.0.1:10053,
// as the README promises. Both must start, serve RPC, and answer DNS on the address doctor
// reports for them.
func TestDaemonsSideBySide(t *testing.T) {
	x := need(t)
	var socks []string
	for i := range 2 {
		dir := t.TempDir()
		sock := filepath.Join(dir, "run", "bangerd.sock")
		log, err := os.Create(filepath.Join(dir, "bangerd.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("ip", "netns", "exec", x.netns, filepath.Join(x.bin, "bangerd"),
			"--state-dir", filepath.Join(dir, "state"), "--runtime-dir", filepath.Join(dir, "run"), "--socket", sock)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		})
		if err := waitFor(func() bool {
			out, _, code := runCLI(x.bin, sock, nil, nil, nil, "version")
			return code == 0 && strings.Contains(out, "\nbangerd ")
		}, 30*time.Second); err != nil {
			t.Fatalf("daemon %d did not come up: %s", i, readFile(log.Name()))
		}
		socks = append(socks, sock)
	}
	seen := map[string]bool{}
	for i, sock := range socks {
		addr := doctorDNSAddr(t, x, sock)
		if seen[addr] {
			t.Fatalf("daemon %d serves DNS at %s, already taken by another", i, addr)
		}
		seen[addr] = true
		host, port, _ := strings.Cut(addr, ":")
		out, err := exec.Command("ip", "netns", "exec", x.netns, "dig", "+time=2", "+tries=1", "@"+host, "-p", port,
			"nothing-here."+dnsDomain, "A").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "status: NXDOMAIN") {
			t.Fatalf("daemon %d's DNS at %s did not answer: %v\n%s", i, addr, err, out)
		}
	}
}

// doctorDNSAddr returns the first host DNS address `banger doctor` reports for the daemon.
func doctorDNSAddr(t *testing.T, x *env, sock string) string {
	t.Helper()
	out, _, _ := runCLI(x.bin, sock, nil, nil, nil, "doctor", "--json") // may exit 1 (no firecracker)
	var checks []api.DoctorCheck
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatalf("decoding doctor --json: %v\n%s", err, out)
	}
	for _, c := range checks {
		if c.Name == "dns" {
			if _, after, ok := strings.Cut(c.Detail, " at "); ok {
				return strings.Split(after, ", ")[0]
			}
		}
	}
	t.Fatalf("doctor reports no DNS address: %s", out)
	return fmt.Sprint()
}
