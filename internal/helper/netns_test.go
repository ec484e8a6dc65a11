package helper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"banger/internal/hostnet"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// The helper changes links and firewall rules, so the server under test runs as a child
// process under `ip netns exec` in a namespace the test created, and refuses to start if
// that namespace is the parent's. Callers only need the unix socket, which works across
// network namespaces, so they run as ordinary (possibly unprivileged) child processes.

const (
	childEnv  = "BANGER_HELPER_TEST_CHILD" // serve, call
	hostNSEnv = "BANGER_HELPER_TEST_HOST_NETNS"
	argsEnv   = "BANGER_HELPER_TEST_ARGS"
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
		missing("needs root to create network namespaces and run the helper")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing(bin + " not found in PATH")
		}
	}
}

// newNetns creates a namespace and deletes it when the test ends.
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
	return name
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// childCmd prepares bin (the test binary or a copy) to run mode; ns may be empty.
func childCmd(t *testing.T, bin, ns, mode string, args any) *exec.Cmd {
	t.Helper()
	host, err := os.Readlink("/proc/self/ns/net")
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
	cmd.Env = append(os.Environ(), childEnv+"="+mode, hostNSEnv+"="+host, argsEnv+"="+string(raw),
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}

// serveArgs configures the helper child.
type serveArgs struct {
	Socket      string `json:"socket"`
	SocketGroup int    `json:"socket_group"`
	AllowUIDs   []int  `json:"allow_uids"`
	AllowGIDs   []int  `json:"allow_gids"`
	Bridge      string `json:"bridge"`
	Prefix      string `json:"prefix"`
	TapUID      int    `json:"tap_uid"`
	TapGID      int    `json:"tap_gid"`
	Log         string `json:"log"`
}

// callArgs is one call made by the caller child.
type callArgs struct {
	Socket string          `json:"socket"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
	OpID   string          `json:"op_id"`
}

// callResult is the caller child's report.
type callResult struct {
	Code    string          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
}

func runChild(mode string) int {
	raw := []byte(os.Getenv(argsEnv))
	switch mode {
	case "serve":
		self, err := os.Readlink("/proc/self/ns/net")
		if host := os.Getenv(hostNSEnv); err != nil || host == "" || self == host {
			fmt.Fprintf(os.Stderr, "refusing to serve: not inside a test network namespace (self %q, host %q)\n", self, host)
			return 3
		}
		var a serveArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		return childServe(a)
	case "call":
		var a callArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		var res callResult
		var out json.RawMessage
		err := rpc.Call(opid.With(context.Background(), a.OpID), a.Socket, a.Method, a.Params, &out)
		if err != nil {
			res.Code, res.Message = "transport", err.Error()
			if we, ok := err.(*rpc.ErrorResponse); ok {
				res.Code, res.Message = we.Code, we.Message
			}
		}
		res.Result = out
		_ = json.NewEncoder(os.Stdout).Encode(res)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
	return 2
}

func childServe(a serveArgs) int {
	var logw io.Writer = os.Stderr
	if a.Log != "" {
		f, err := os.OpenFile(a.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		logw = f
	}
	prefix, err := netip.ParsePrefix(a.Prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s, err := NewServer(Config{
		Socket: a.Socket, SocketGroup: a.SocketGroup, AllowUIDs: a.AllowUIDs, AllowGIDs: a.AllowGIDs,
		Net:         hostnet.Net{Bridge: a.Bridge, Prefix: prefix},
		TapOwnerUID: a.TapUID, TapOwnerGID: a.TapGID,
		Logger: slog.New(slog.NewJSONHandler(logw, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := s.Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
