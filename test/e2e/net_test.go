package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// Timeouts use timeout(1): busybox wget -T crashes in Debian 12's busybox-static.
func TestVMNetworkDNSAndNAT(t *testing.T) {
	x := need(t)
	a := x.createVM(t, "e2e-net-a", "--nat")
	b := x.createVM(t, "e2e-net-b")

	// A TCP service in VM B, reached from the host side of the namespace by IP.
	x.mustCLI(t, "vm", "exec", "e2e-net-b", "--", "sh", "-c",
		"mkdir -p /root/www && echo hello-from-b > /root/www/index.html && busybox httpd -p 8000 -h /root/www")
	out, err := x.inNetns("timeout", "10", "busybox", "wget", "-q", "-O", "-", "http://"+b.GuestIP+":8000/")
	if err != nil || strings.TrimSpace(out) != "hello-from-b" {
		t.Fatalf("host -> vm b tcp: %v %q", err, out)
	}
	// Its DNS name resolves with a real client, on the bridge address.
	out, err = x.inNetns("dig", "+short", "+time=2", "+tries=1", "@"+bridgeIP, "e2e-net-b."+dnsDomain)
	if err != nil || strings.TrimSpace(out) != b.GuestIP {
		t.Fatalf("dig e2e-net-b: %v %q (want %s)", err, out, b.GuestIP)
	}
	out, err = x.inNetns("dig", "+short", "+time=2", "+tries=1", "@"+bridgeIP, "-x", b.GuestIP)
	if err != nil || strings.TrimSpace(out) != "e2e-net-b."+dnsDomain+"." {
		t.Fatalf("reverse lookup: %v %q", err, out)
	}
	// VM A reaches VM B by name.
	out = x.mustCLI(t, "vm", "exec", "e2e-net-a", "--", "sh", "-c",
		"ip=$(busybox nslookup e2e-net-b."+dnsDomain+" | awk '/^Address/ && !/#/ {print $2}' | tail -n1); timeout 10 wget -q -O - http://$ip:8000/")
	if strings.TrimSpace(out) != "hello-from-b" {
		t.Fatalf("vm a -> vm b by name: %q", out)
	}
	// NAT: A (--nat) reaches the fake internet, masqueraded; B does not.
	out = x.mustCLI(t, "vm", "exec", "e2e-net-a", "--", "timeout", "10", "wget", "-q", "-O", "-", "http://"+inetIP+":8080/")
	if !strings.Contains(out, "peer="+uplinkIP) {
		t.Fatalf("NAT: expected the fake internet to see %s, got %q", uplinkIP, out)
	}
	_, _, code := x.cli(nil, "vm", "exec", "e2e-net-b", "--", "timeout", "5", "wget", "-q", "-O", "-", "http://"+inetIP+":8080/")
	if code == 0 {
		t.Fatal("a VM without --nat reached the fake internet")
	}
	// After delete, nothing of A remains: no tap, no NAT element.
	x.mustCLI(t, "vm", "rm", "--force", "e2e-net-a")
	if _, err := x.inNetns("ip", "link", "show", a.Tap); err == nil {
		t.Fatalf("tap %s still exists after vm rm", a.Tap)
	}
	nft, _ := exec.Command("ip", "netns", "exec", x.netns, "nft", "list", "ruleset").CombinedOutput()
	if strings.Contains(string(nft), a.GuestIP) {
		t.Fatalf("nft still mentions %s after vm rm:\n%s", a.GuestIP, nft)
	}
}
