// Package netnstest lets tests that change links, routes or firewall rules do so without
// touching the host's network. Only tests import it.
//
// A test creates a fresh network namespace with New and runs its privileged body as a
// child copy of the test binary inside it (Command, served by Main from TestMain). The
// child compares its own namespace with the parent's, passed in the environment, and
// refuses to run when they are the same, so a mistake in a test cannot reconfigure the
// host. Require skips a test whose prerequisites (root, ip and friends) are missing; with
// CI=true it fails instead, so a CI run cannot pass by skipping.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The child reads its mode, the parent's namespace and its arguments from these.
const (
	modeEnv   = "BANGER_NETNSTEST_MODE"
	hostNSEnv = "BANGER_NETNSTEST_HOST_NETNS"
	argsEnv   = "BANGER_NETNSTEST_ARGS"
)

// NamePrefix starts the name of every namespace New creates, so leftovers are easy to spot
// (`ip netns list | grep bgt-`).
const NamePrefix = "bgt-"

// Mode is a body the test binary runs as a child process.
type Mode struct {
	// HostNetns lets the mode run in the parent's namespace. Only for bodies that touch no
	// network configuration, such as a client talking to a unix socket.
	HostNetns bool
	// Run gets the JSON-encoded arguments given to Command and returns the exit code.
	Run func(args json.RawMessage) int
}

// Main is called from TestMain. In a child started by Command it runs the requested mode
// and exits; otherwise it runs the tests.
func Main(m *testing.M, modes map[string]Mode) {
	if name := os.Getenv(modeEnv); name != "" {
		os.Exit(runChild(name, modes))
	}
	os.Exit(m.Run())
}

func runChild(name string, modes map[string]Mode) int {
	mode, ok := modes[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown child mode %q\n", name)
		return 2
	}
	if !mode.HostNetns {
		host := os.Getenv(hostNSEnv)
		self, err := currentNetns()
		if err != nil || host == "" || self == host {
			fmt.Fprintf(os.Stderr, "refusing to run %s: not inside a test network namespace (self %q, host %q, %v)\n", name, self, host, err)
			return 3
		}
	}
	return mode.Run(json.RawMessage(os.Getenv(argsEnv)))
}

func currentNetns() (string, error) { return os.Readlink("/proc/self/ns/net") }

// Require skips the test (fails it under CI=true) unless it runs as root and ip and the
// given tools are in PATH.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	missing := func(why string) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("prerequisite missing (CI=true makes this a failure): %s", why)
		}
		t.Skipf("skipping: %s", why)
	}
	if os.Geteuid() != 0 {
		missing("needs root to create network namespaces and change links and firewall rules in them")
	}
	for _, bin := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(bin); err != nil {
			missing(bin + " not found in PATH")
		}
	}
}

// New creates a namespace named bgt-<tag>-<random> with loopback up and deletes it when
// the test ends.
func New(t testing.TB, tag string) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := NamePrefix + tag + "-" + hex.EncodeToString(b)
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v: %s", name, err, out)
		}
	})
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// Run runs a command (ip, nft) and returns its combined output, failing the test if it
// fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Command prepares a child running mode with args (JSON-encoded) inside namespace ns. bin
// is the test binary to run, empty for the running one (a copy lets unprivileged children
// execute it); ns empty runs the child in the current namespace, which only modes with
// HostNetns accept.
func Command(t testing.TB, bin, ns, mode string, args any) *exec.Cmd {
	t.Helper()
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		bin = self
	}
	host, err := currentNetns()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if ns != "" {
		cmd = exec.Command("ip", "netns", "exec", ns, bin, "-test.run=^$")
	} else {
		cmd = exec.Command(bin, "-test.run=^$")
	}
	// The race detector sleeps a second at exit by default; children exit often.
	cmd.Env = append(os.Environ(), modeEnv+"="+mode, hostNSEnv+"="+host, argsEnv+"="+string(raw),
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}
