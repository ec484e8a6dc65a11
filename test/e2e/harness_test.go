package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/imagebuild"
	"banger/internal/testkit"
)

// env is the shared test environment, set up once in TestMain.
type env struct {
	bin        string // dir with banger, bangerd, banger-agent
	dir        string
	netns      string // where the bridge, taps, helper and daemon live
	inetns     string // fake internet host 198.18.0.2
	socket     string
	helperSock string
	config     string
	stateDir   string
	daemon     *exec.Cmd
	helper     *exec.Cmd
	daemonLog  *os.File
	helperLog  *os.File
	inetSrv    *exec.Cmd
}

var e *env
var setupErr error

const (
	bridgeIP  = "172.30.0.1"
	inetIP    = "198.18.0.2"
	uplinkIP  = "198.18.0.1"
	dnsDomain = "banger.internal"
)

func missingPrereqs() []string {
	var miss []string
	if os.Geteuid() != 0 {
		miss = append(miss, "root")
	}
	for _, tool := range []string{"qemu-system-x86_64", "mkfs.ext4", "e2fsck", "ip", "nft", "dig", "socat", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			miss = append(miss, tool)
		}
	}
	if runtime.GOARCH != "amd64" {
		miss = append(miss, "amd64 host")
	}
	return miss
}

// need skips (or under CI=true fails) a test when the environment could not be set up.
func need(t *testing.T) *env {
	t.Helper()
	if miss := missingPrereqs(); len(miss) > 0 {
		msg := "e2e needs: " + strings.Join(miss, ", ") + " (run as root after scripts/install-deps.sh)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if setupErr != nil {
		t.Fatalf("e2e environment setup failed: %v", setupErr)
	}
	return e
}

func TestMain(m *testing.M) {
	code := func() int {
		if len(missingPrereqs()) > 0 {
			return m.Run()
		}
		var err error
		e, err = setup()
		if err != nil {
			setupErr = err
			if e != nil {
				e.teardown()
			}
			return m.Run()
		}
		defer e.teardown()
		return m.Run()
	}()
	os.Exit(code)
}

// linkedNamespaces creates namespaces inner and outer with loopback up, joined by a veth
// pair (innerIf with innerIP/30 in inner, outerIf with outerIP/30 in outer), and routes
// inner's default traffic to outer — a host and its only upstream.
func linkedNamespaces(inner, outer, innerIf, outerIf, innerIP, outerIP string) error {
	for _, c := range [][]string{
		{"ip", "netns", "add", inner},
		{"ip", "netns", "add", outer},
		{"ip", "-n", inner, "link", "set", "lo", "up"},
		{"ip", "-n", outer, "link", "set", "lo", "up"},
		{"ip", "-n", inner, "link", "add", innerIf, "type", "veth", "peer", "name", outerIf, "netns", outer},
		{"ip", "-n", inner, "addr", "add", innerIP + "/30", "dev", innerIf},
		{"ip", "-n", inner, "link", "set", innerIf, "up"},
		{"ip", "-n", outer, "addr", "add", outerIP + "/30", "dev", outerIf},
		{"ip", "-n", outer, "link", "set", outerIf, "up"},
		{"ip", "-n", inner, "route", "add", "default", "via", outerIP},
	} {
		if err := run(c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func setup() (*env, error) {
	x := &env{}
	x.bin = os.Getenv("BANGER_BIN")
	var err error
	x.dir, err = os.MkdirTemp("", "banger-e2e-")
	if err != nil {
		return nil, err
	}
	if x.bin == "" {
		x.bin = filepath.Join(x.dir, "bin")
		root, _ := filepath.Abs("../..")
		for _, b := range []struct {
			name, pkg string
			static    bool
		}{
			{"banger", "./cmd/banger", false}, {"bangerd", "./cmd/bangerd", false}, {"banger-agent", "./cmd/banger-agent", true},
			{"containerd-shim-banger-v2", "./cmd/containerd-shim-banger-v2", false},
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(x.bin, b.name), b.pkg)
			cmd.Dir = root
			cmd.Env = os.Environ()
			if b.static {
				cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				return x, fmt.Errorf("building %s: %v: %s", b.name, err, out)
			}
		}
	}
	suffix := fmt.Sprintf("%d", os.Getpid())
	x.netns = "bgr-e2e-" + suffix
	x.inetns = "bgr-inet-" + suffix
	// The namespaces: netns holds the bridge and VMs; inetns is the fake internet, linked to
	// netns by a veth pair. Nothing is routed beyond them.
	if err := linkedNamespaces(x.netns, x.inetns, "uplink0", "inet0", uplinkIP, inetIP); err != nil {
		return x, err
	}
	// The fake internet answers every HTTP request on :8080 with the peer address it saw,
	// so tests can check the source was masqueraded. It reads the request first: closing
	// with unread data would reset the connection.
	peer := filepath.Join(x.dir, "peer.sh")
	script := "#!/bin/sh\nwhile IFS= read -r line; do case \"$line\" in ''|\"$(printf '\\r')\") break;; esac; done\n" +
		"printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\npeer=%s\\n' \"$SOCAT_PEERADDR\"\n"
	if err := os.WriteFile(peer, []byte(script), 0o755); err != nil {
		return x, err
	}
	x.inetSrv = exec.Command("ip", "netns", "exec", x.inetns, "socat", "TCP-LISTEN:8080,reuseaddr,fork", "EXEC:"+peer)
	if err := x.inetSrv.Start(); err != nil {
		return x, err
	}

	// The daemon runs in a namespace with no route to Debian's mirror, so the kernel package
	// the tiny builder needs is fetched here, in the host namespace, into a shared cache.
	cacheDir := testkit.CacheDir()
	if _, err := imagebuild.DebianKernel(context.Background(), cacheDir, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		return x, fmt.Errorf("fetching the Debian kernel for the tiny image: %w", err)
	}
	x.stateDir = filepath.Join(x.dir, "state")
	x.socket = filepath.Join(x.dir, "run", "bangerd.sock")
	x.helperSock = filepath.Join(x.dir, "helper.sock")
	x.config = filepath.Join(x.dir, "bangerd.yaml")
	cfg := fmt.Sprintf(`state_dir: %s
runtime_dir: %s
cache_dir: %s
network:
  enabled: true
  helper_socket: %s
  bridge: banger0
  cidr: %s/24
  uplink: uplink0
dns:
  domain: %s
  listen: ["127.0.0.1:10053"]
  upstreams: ["127.0.0.1:9"]
defaults:
  memory: 256M
  vcpu: %d
  system_overlay_size: 1G
  work_disk_size: 1G
vmm: qemu
agent_path: %s
console_log_max: 256K
workspace:
  max_size: 256M
`, x.stateDir, filepath.Join(x.dir, "run"), cacheDir, x.helperSock, bridgeIP, dnsDomain, benchVCPU(), filepath.Join(x.bin, "banger-agent"))
	if err := os.WriteFile(x.config, []byte(cfg), 0o644); err != nil {
		return x, err
	}
	x.helperLog, _ = os.Create(filepath.Join(x.dir, "helper.log"))
	if err := x.startHelper(); err != nil {
		return x, err
	}
	if err := x.startDaemon(); err != nil {
		return x, err
	}
	return x, nil
}

// startHelper runs the root helper in the test namespace and waits for its socket.
func (x *env) startHelper() error {
	os.Remove(x.helperSock) // a killed helper leaves its socket behind
	x.helper = exec.Command("ip", "netns", "exec", x.netns, filepath.Join(x.bin, "bangerd"), "helper", "--config", x.config)
	x.helper.Stdout, x.helper.Stderr = x.helperLog, x.helperLog
	if err := x.helper.Start(); err != nil {
		return err
	}
	if err := waitFor(func() bool { _, err := os.Stat(x.helperSock); return err == nil }, 20*time.Second); err != nil {
		return fmt.Errorf("root helper did not create its socket: %s", readFile(x.helperLog.Name()))
	}
	return nil
}

// killHelper ends the root helper with SIGKILL, as a crash.
func (x *env) killHelper() {
	if x.helper == nil || x.helper.Process == nil {
		return
	}
	x.helper.Process.Kill()
	x.helper.Wait()
	x.helper = nil
}

func (x *env) startDaemon() error {
	if x.daemonLog == nil {
		x.daemonLog, _ = os.OpenFile(filepath.Join(x.dir, "bangerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	}
	x.daemon = exec.Command("ip", "netns", "exec", x.netns, filepath.Join(x.bin, "bangerd"), "--config", x.config, "--socket", x.socket)
	x.daemon.Stdout, x.daemon.Stderr = x.daemonLog, x.daemonLog
	if err := x.daemon.Start(); err != nil {
		return err
	}
	if err := waitFor(func() bool {
		out, _, code := x.cli(nil, "version")
		return code == 0 && strings.Contains(out, "\nbangerd ") && strings.Contains(out, "(protocol 1, pid")
	}, 30*time.Second); err != nil {
		return fmt.Errorf("bangerd did not come up: %s", readFile(x.daemonLog.Name()))
	}
	return nil
}

// stopDaemon ends the daemon: gracefully (SIGTERM) or as a crash (SIGKILL).
func (x *env) stopDaemon(sig syscall.Signal) {
	if x.daemon == nil || x.daemon.Process == nil {
		return
	}
	// `ip netns exec` execs the daemon, so the pid is the daemon's own.
	x.daemon.Process.Signal(sig)
	done := make(chan struct{})
	go func() { x.daemon.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		x.daemon.Process.Kill()
		<-done
	}
	x.daemon = nil
}

func (x *env) teardown() {
	// Stop every VM and remove every network object, then the namespaces themselves.
	if x.daemon != nil {
		x.daemon.Process.Signal(syscall.SIGTERM)
		x.daemon.Wait()
		x.daemon = nil
		cmd := exec.Command("ip", "netns", "exec", x.netns, filepath.Join(x.bin, "bangerd"), "--config", x.config,
			"--socket", x.socket, "--cleanup")
		cmd.Stdout, cmd.Stderr = x.daemonLog, x.daemonLog
		if cmd.Start() == nil {
			time.Sleep(3 * time.Second)
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}
	}
	if x.helper != nil && x.helper.Process != nil {
		x.helper.Process.Signal(syscall.SIGTERM)
		x.helper.Wait()
	}
	if x.inetSrv != nil && x.inetSrv.Process != nil {
		x.inetSrv.Process.Kill()
		x.inetSrv.Wait()
	}
	if os.Getenv("BANGER_E2E_KEEP_LOGS") != "" || os.Getenv("CI") == "true" {
		fmt.Fprintf(os.Stderr, "e2e logs kept in %s\n", x.dir)
		// Print the tail of the daemon log to help diagnose CI failures.
		if x.daemonLog != nil {
			fmt.Fprintf(os.Stderr, "--- bangerd log tail ---\n%s\n", tail(readFile(x.daemonLog.Name()), 40))
		}
	} else {
		os.RemoveAll(x.dir)
	}
	exec.Command("ip", "netns", "del", x.netns).Run()
	exec.Command("ip", "netns", "del", x.inetns).Run()
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func waitFor(cond func() bool, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s", d)
}

// cli runs the banger CLI and returns stdout, stderr and the exit code.
func (x *env) cli(stdin io.Reader, args ...string) (string, string, int) {
	return runCLI(x.bin, x.socket, stdin, nil, nil, args...)
}

// runCLI runs bin/banger against socket, optionally as another user (attr) with env.
func runCLI(bin, socket string, stdin io.Reader, attr *syscall.SysProcAttr, env []string, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "banger"), append([]string{"--socket", socket}, args...)...)
	cmd.SysProcAttr, cmd.Env = attr, env
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return stdout.String(), stderr.String(), code
}

// mustCLI runs the CLI and fails the test on a non-zero exit.
func (x *env) mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := x.cli(nil, args...)
	if code != 0 {
		t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// inNetns runs a command on the host side of the test namespace.
func (x *env) inNetns(name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", x.netns, name}, args...)...).CombinedOutput()
	return string(out), err
}

type vmRecord struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	State   string `json:"state"`
	GuestIP string `json:"guest_ip"`
	Tap     string `json:"tap"`
	Dir     string `json:"dir"`
	PID     int    `json:"pid"`
	VMM     string `json:"vmm"`
	Accel   string `json:"accel"`
}

func (x *env) show(t *testing.T, name string) vmRecord {
	t.Helper()
	var vm vmRecord
	if err := json.Unmarshal([]byte(x.mustCLI(t, "vm", "show", "--json", name)), &vm); err != nil {
		t.Fatalf("decoding vm show: %v", err)
	}
	return vm
}

// createVM creates and boots a VM and removes it when the test ends.
func (x *env) createVM(t *testing.T, name string, extra ...string) vmRecord {
	t.Helper()
	x.mustCLI(t, append([]string{"vm", "create", "--name", name}, extra...)...)
	t.Cleanup(func() { x.cli(nil, "vm", "rm", "--force", name) })
	return x.show(t, name)
}
