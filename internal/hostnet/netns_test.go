package hostnet

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"banger/internal/errdefs"
)

// Every test here changes links and firewall rules, so none of it may run in the host's
// network namespace. The test binary re-executes itself under `ip netns exec` in a
// namespace the test created; the child refuses to act if its namespace is the parent's.

const (
	childEnv  = "BANGER_HOSTNET_TEST_CHILD" // op, listen, dial
	hostNSEnv = "BANGER_HOSTNET_TEST_HOST_NETNS"
	argsEnv   = "BANGER_HOSTNET_TEST_ARGS"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}

// requireNetns skips (or fails under CI=true) unless the test can create namespaces.
func requireNetns(t *testing.T) {
	t.Helper()
	missing := func(why string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("prerequisite missing (CI=true makes this a failure): %s", why)
		}
		t.Skipf("skipping: %s", why)
	}
	if os.Geteuid() != 0 {
		missing("needs root to create network namespaces, bridges, taps and nftables rules")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing(bin + " not found in PATH")
		}
	}
}

func selfNetns() (string, error) { return os.Readlink("/proc/self/ns/net") }

// newNetns creates a namespace with loopback up and deletes it when the test ends.
func newNetns(t *testing.T, tag string) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "bgt-" + tag + "-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// run runs a command (ip, nft) and fails the test if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// childCmd prepares the test binary to run mode inside netns ns.
func childCmd(t *testing.T, ns, mode string, args any) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	host, err := selfNetns()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, self, "-test.run=^$")
	// The race detector sleeps a second at exit by default; children exit often.
	cmd.Env = append(os.Environ(), childEnv+"="+mode, hostNSEnv+"="+host, argsEnv+"="+string(raw),
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}

// opArgs is one hostnet operation for the child to perform.
type opArgs struct {
	Bridge string `json:"bridge"`
	Prefix string `json:"prefix"`
	Uplink string `json:"uplink,omitempty"`
	Op     string `json:"op"`
	Name   string `json:"name,omitempty"`
	UID    int    `json:"uid,omitempty"`
	GID    int    `json:"gid,omitempty"`
	MAC    string `json:"mac,omitempty"`
	IP     string `json:"ip,omitempty"`
}

// opResult is what the child reports.
type opResult struct {
	Error string       `json:"error,omitempty"`
	Kind  string       `json:"kind,omitempty"`
	Taps  []string     `json:"taps,omitempty"`
	NAT   []netip.Addr `json:"nat,omitempty"`
}

// hostOp performs one hostnet operation inside ns and returns the child's report.
func hostOp(t *testing.T, ns string, n Net, a opArgs) opResult {
	t.Helper()
	a.Bridge, a.Prefix, a.Uplink = n.Bridge, n.Prefix.String(), n.Uplink
	var stderr bytes.Buffer
	cmd := childCmd(t, ns, "op", a)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child for %s in %s: %v\n%s", a.Op, ns, err, stderr.String())
	}
	var res opResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("child for %s: decoding %q: %v\n%s", a.Op, out, err, stderr.String())
	}
	return res
}

// mustOp is hostOp that expects success.
func mustOp(t *testing.T, ns string, n Net, a opArgs) opResult {
	t.Helper()
	res := hostOp(t, ns, n, a)
	if res.Error != "" {
		t.Fatalf("%s %+v: %s", a.Op, a, res.Error)
	}
	return res
}

// wantKind expects the operation to fail with the given error kind.
func wantKind(t *testing.T, ns string, n Net, a opArgs, kind string) opResult {
	t.Helper()
	res := hostOp(t, ns, n, a)
	if res.Kind != kind {
		t.Fatalf("%s %+v: got error %q kind %q, want kind %q", a.Op, a, res.Error, res.Kind, kind)
	}
	return res
}

func runChild(mode string) int {
	host := os.Getenv(hostNSEnv)
	self, err := selfNetns()
	if err != nil || host == "" || self == host {
		fmt.Fprintf(os.Stderr, "refusing to run %s: not inside a test network namespace (self %q, host %q, %v)\n", mode, self, host, err)
		return 3
	}
	raw := []byte(os.Getenv(argsEnv))
	switch mode {
	case "op":
		var a opArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		res := childOp(a)
		_ = json.NewEncoder(os.Stdout).Encode(res)
		return 0
	case "listen":
		var addr string
		_ = json.Unmarshal(raw, &addr)
		return childListen(addr)
	case "dial":
		var addr string
		_ = json.Unmarshal(raw, &addr)
		return childDial(addr)
	}
	fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
	return 2
}

func childOp(a opArgs) opResult {
	ctx := context.Background()
	n := Net{Bridge: a.Bridge, Uplink: a.Uplink}
	n.Prefix, _ = netip.ParsePrefix(a.Prefix)
	ip, _ := netip.ParseAddr(a.IP)
	var res opResult
	var err error
	switch a.Op {
	case "ensure_bridge":
		err = n.EnsureBridge(ctx)
	case "create_tap":
		err = n.CreateTap(ctx, a.Name, a.UID, a.GID, a.MAC)
	case "delete_tap":
		err = n.DeleteTap(ctx, a.Name)
	case "enable_nat":
		err = n.EnableNAT(ctx, ip)
	case "disable_nat":
		err = n.DisableNAT(ctx, ip)
	case "cleanup":
		err = n.Cleanup(ctx)
	case "state":
		res.Taps, res.NAT, err = n.State(ctx)
	default:
		err = fmt.Errorf("unknown op %q", a.Op)
	}
	if err != nil {
		res.Error = err.Error()
		res.Kind = "other"
		for kind, sentinel := range map[string]error{
			"invalid_argument": errdefs.ErrInvalidArgument,
			"conflict":         errdefs.ErrConflict,
		} {
			if errors.Is(err, sentinel) {
				res.Kind = kind
			}
		}
	}
	return res
}

// childListen accepts TCP connections and answers each with the peer's IP, so the test
// can see whether the source address was masqueraded.
func childListen(addr string) int {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		_, _ = io.WriteString(c, host)
		c.Close()
	}
}

func childDial(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 1500*time.Millisecond)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Print(string(b))
	return 0
}
