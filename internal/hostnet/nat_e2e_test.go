package hostnet

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"banger/internal/netnstest"
)

// startListener runs a TCP listener inside ns that answers with the peer's address.
func startListener(t *testing.T, ns, addr string) {
	t.Helper()
	cmd := netnstest.Command(t, "", ns, "listen", addr)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("listener on %s in %s did not start: %q %v\n%s", addr, ns, line, err, stderr.String())
	}
}

// dial connects from ns to addr and returns the peer address the listener saw.
func dial(t *testing.T, ns, addr string) (string, bool) {
	t.Helper()
	out, err := netnstest.Command(t, "", ns, "dial", addr).Output()
	return string(out), err == nil
}

// TestNATEndToEnd builds, entirely inside namespaces:
//
//	guest ns: eth0 172.30.0.5/24, default via 172.30.0.1
//	   │ veth
//	net ns (under test): bridge bgtbr0 172.30.0.1/24 ── up0 198.18.0.1/30
//	                                                     │ veth
//	inet ns (fake internet host): eth0 198.18.0.2/30, route to 172.30.0.0/24 via 198.18.0.1
//
// The inet host can route back to the guest subnet, so a connection that gets through
// without masquerading would succeed and show the guest's own address: seeing 198.18.0.1
// proves masquerade, and failing without NAT proves the forward drop.
func TestNATEndToEnd(t *testing.T) {
	netnstest.Require(t, "nft")
	nsNet := netnstest.New(t, "net")
	nsGuest := netnstest.New(t, "guest")
	nsInet := netnstest.New(t, "inet")
	n := testNet

	mustOp(t, nsNet, n, opArgs{Op: "ensure_bridge"})
	// Each veth is created inside a test namespace with its peer moved straight into
	// another, so no interface ever exists in the host namespace.
	netnstest.Run(t, "ip", "-n", nsNet, "link", "add", "vguest", "type", "veth", "peer", "name", "eth0", "netns", nsGuest)
	netnstest.Run(t, "ip", "-n", nsNet, "link", "set", "vguest", "master", n.Bridge, "up")
	netnstest.Run(t, "ip", "-n", nsGuest, "addr", "add", "172.30.0.5/24", "dev", "eth0")
	netnstest.Run(t, "ip", "-n", nsGuest, "link", "set", "eth0", "up")
	netnstest.Run(t, "ip", "-n", nsGuest, "route", "add", "default", "via", "172.30.0.1")

	netnstest.Run(t, "ip", "-n", nsNet, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", nsInet)
	netnstest.Run(t, "ip", "-n", nsNet, "addr", "add", "198.18.0.1/30", "dev", "up0")
	netnstest.Run(t, "ip", "-n", nsNet, "link", "set", "up0", "up")
	netnstest.Run(t, "ip", "-n", nsInet, "addr", "add", "198.18.0.2/30", "dev", "eth0")
	netnstest.Run(t, "ip", "-n", nsInet, "link", "set", "eth0", "up")
	netnstest.Run(t, "ip", "-n", nsInet, "route", "add", "172.30.0.0/24", "via", "198.18.0.1")

	startListener(t, nsInet, "198.18.0.2:8080")
	startListener(t, nsNet, "172.30.0.1:8081")
	startListener(t, nsGuest, "172.30.0.5:8082")

	// Without NAT the guest still reaches the bridge address (DNS lives there).
	if peer, ok := dial(t, nsGuest, "172.30.0.1:8081"); !ok || peer != "172.30.0.5" {
		t.Fatalf("guest -> bridge IP without NAT: ok=%v peer=%q", ok, peer)
	}
	// Another guest has NAT; this one must stay inside even though forwarding is on.
	mustOp(t, nsNet, n, opArgs{Op: "enable_nat", IP: "172.30.0.9"})
	if peer, ok := dial(t, nsGuest, "198.18.0.2:8080"); ok {
		t.Fatalf("guest without NAT reached the internet host (seen as %s)", peer)
	}

	mustOp(t, nsNet, n, opArgs{Op: "enable_nat", IP: "172.30.0.5"})
	peer, ok := dial(t, nsGuest, "198.18.0.2:8080")
	if !ok {
		t.Fatal("guest with NAT could not reach the internet host")
	}
	if peer != "198.18.0.1" {
		t.Fatalf("internet host saw %q, want the masqueraded 198.18.0.1", peer)
	}
	// NAT is outbound only: the outside cannot open connections to the guest.
	if peer, ok := dial(t, nsInet, "172.30.0.5:8082"); ok {
		t.Fatalf("internet host opened a connection into the guest (seen as %s)", peer)
	}

	mustOp(t, nsNet, n, opArgs{Op: "disable_nat", IP: "172.30.0.5"})
	if peer, ok := dial(t, nsGuest, "198.18.0.2:8080"); ok {
		t.Fatalf("guest reached the internet host after DisableNAT (seen as %s)", peer)
	}

	mustOp(t, nsNet, n, opArgs{Op: "cleanup"})
}
