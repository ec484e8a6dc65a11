package hostnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/netnstest"
)

// Every test here changes links and firewall rules, so none of it may run in the host's
// network namespace: each operation runs in a child copy of the test binary inside a
// namespace the test created (netnstest), which refuses to act in the parent's namespace.

func TestMain(m *testing.M) {
	netnstest.Main(m, map[string]netnstest.Mode{
		"op":     {Run: childOp},
		"listen": {Run: childListen},
		"dial":   {Run: childDial},
	})
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
	cmd := netnstest.Command(t, "", ns, "op", a)
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

// childOp performs one operation and prints an opResult.
func childOp(raw json.RawMessage) int {
	var a opArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_ = json.NewEncoder(os.Stdout).Encode(performOp(a))
	return 0
}

func performOp(a opArgs) opResult {
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
		err = n.DeleteTap(ctx, a.Name, a.UID, a.GID)
	case "enable_nat":
		err = n.EnableNAT(ctx, ip)
	case "disable_nat":
		err = n.DisableNAT(ctx, ip)
	case "cleanup":
		err = n.Cleanup(ctx, a.UID, a.GID)
	case "state":
		res.Taps, res.NAT, err = n.State(ctx, a.UID, a.GID)
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
func childListen(raw json.RawMessage) int {
	var addr string
	if err := json.Unmarshal(raw, &addr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
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

func childDial(raw json.RawMessage) int {
	var addr string
	if err := json.Unmarshal(raw, &addr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
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
