package hostnet

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"banger/internal/errdefs"
	"banger/internal/netnstest"
)

var testNet = Net{Bridge: "bgtbr0", Prefix: netip.MustParsePrefix("172.30.0.1/24")}

func TestValidation(t *testing.T) {
	if err := testNet.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []Net{
		{Bridge: "", Prefix: testNet.Prefix},
		{Bridge: "this-name-is-too-long", Prefix: testNet.Prefix},
		{Bridge: "bgr12", Prefix: testNet.Prefix},
		{Bridge: "br0", Prefix: netip.MustParsePrefix("172.30.0.0/24")},
		{Bridge: "br0", Prefix: netip.MustParsePrefix("172.30.0.255/24")},
		{Bridge: "br0", Prefix: netip.MustParsePrefix("172.30.0.1/31")},
		{Bridge: "br0", Prefix: netip.MustParsePrefix("fd00::1/64")},
		{Bridge: "br0", Prefix: testNet.Prefix, Uplink: "br0"},
		{Bridge: "br0", Prefix: testNet.Prefix, Uplink: "eth 0"},
	}
	for _, n := range bad {
		if err := n.Validate(); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Validate(%+v) = %v, want invalid argument", n, err)
		}
	}
	for ip, ok := range map[string]bool{
		"172.30.0.2": true, "172.30.0.254": true,
		"172.30.0.0": false, "172.30.0.1": false, "172.30.0.255": false, "172.30.1.2": false, "10.0.0.1": false,
	} {
		err := testNet.ValidGuestIP("ip", netip.MustParseAddr(ip))
		if (err == nil) != ok {
			t.Errorf("ValidGuestIP(%s) = %v, want ok=%v", ip, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), ip) {
			t.Errorf("ValidGuestIP(%s) error %q does not name the value", ip, err)
		}
	}
	if got := Broadcast(netip.MustParsePrefix("10.1.2.3/20")); got != netip.MustParseAddr("10.1.15.255") {
		t.Errorf("Broadcast = %s", got)
	}
	for name, ok := range map[string]bool{"bgr0": true, "bgr0123456789ab": true, "bgr": false, "bgrZZ": false, "bgr0123456789abc": false, "eth0": false, "lo": false} {
		if ValidTapName(name) != ok {
			t.Errorf("ValidTapName(%q) != %v", name, ok)
		}
	}
	for mac, ok := range map[string]bool{"02:b4:ac:1e:00:05": true, "03:00:00:00:00:01": false, "00:00:00:00:00:00": false, "zz": false, "02:00:00:00:00:00:00:01": false} {
		if _, err := ValidMAC("mac", mac); (err == nil) != ok {
			t.Errorf("ValidMAC(%q) = %v, want ok=%v", mac, err, ok)
		}
	}
}

// nftTable is the part of `nft -j list table` the test reads.
type nftTable struct {
	Nftables []map[string]json.RawMessage `json:"nftables"`
}

// listTable returns the set elements and rule comments of banger's table inside ns.
func listTable(t *testing.T, ns string) (elems []string, comments []string, ok bool) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "banger").Output()
	if err != nil {
		return nil, nil, false
	}
	var tbl nftTable
	if err := json.Unmarshal(out, &tbl); err != nil {
		t.Fatalf("parsing nft output: %v\n%s", err, out)
	}
	for _, obj := range tbl.Nftables {
		if raw, ok := obj["set"]; ok {
			var s struct {
				Name string            `json:"name"`
				Elem []json.RawMessage `json:"elem"`
			}
			_ = json.Unmarshal(raw, &s)
			for _, e := range s.Elem {
				var str string
				_ = json.Unmarshal(e, &str)
				elems = append(elems, str)
			}
		}
		if raw, ok := obj["rule"]; ok {
			var r struct {
				Chain   string `json:"chain"`
				Comment string `json:"comment"`
			}
			_ = json.Unmarshal(raw, &r)
			comments = append(comments, r.Chain+"/"+r.Comment)
		}
	}
	slices.Sort(elems)
	return elems, comments, true
}

type ipLink struct {
	Name     string   `json:"ifname"`
	Master   string   `json:"master"`
	Address  string   `json:"address"`
	Flags    []string `json:"flags"`
	AddrInfo []struct {
		Family string `json:"family"`
		Local  string `json:"local"`
		Len    int    `json:"prefixlen"`
	} `json:"addr_info"`
}

func links(t *testing.T, ns string) map[string]ipLink {
	t.Helper()
	var ls []ipLink
	if err := json.Unmarshal([]byte(netnstest.Run(t, "ip", "-n", ns, "-j", "addr", "show")), &ls); err != nil {
		t.Fatal(err)
	}
	out := map[string]ipLink{}
	for _, l := range ls {
		out[l.Name] = l
	}
	return out
}

func TestBridgeTapNATLifecycle(t *testing.T) {
	netnstest.Require(t, "nft")
	ns := netnstest.New(t, "life")
	n := testNet

	mustOp(t, ns, n, opArgs{Op: "ensure_bridge"})
	mustOp(t, ns, n, opArgs{Op: "ensure_bridge"})
	br, ok := links(t, ns)["bgtbr0"]
	if !ok {
		t.Fatal("bridge bgtbr0 missing after EnsureBridge")
	}
	var v4 []string
	for _, a := range br.AddrInfo {
		if a.Family == "inet" {
			v4 = append(v4, a.Local)
		}
	}
	if !slices.Equal(v4, []string{"172.30.0.1"}) || !slices.Contains(br.Flags, "UP") || br.Address != "02:b4:ac:1e:00:01" {
		t.Fatalf("bridge after EnsureBridge twice: addrs %v flags %v mac %s", v4, br.Flags, br.Address)
	}

	mustOp(t, ns, n, opArgs{Op: "create_tap", Name: "bgr1a2b", UID: 1000, GID: 1000})
	mustOp(t, ns, n, opArgs{Op: "create_tap", Name: "bgr1a2b", UID: 1000, GID: 1000})
	if owner := strings.TrimSpace(netnstest.Run(t, "ip", "netns", "exec", ns, "cat", "/sys/class/net/bgr1a2b/owner")); owner != "1000" {
		t.Errorf("tap owner = %q, want 1000", owner)
	}
	if group := strings.TrimSpace(netnstest.Run(t, "ip", "netns", "exec", ns, "cat", "/sys/class/net/bgr1a2b/group")); group != "1000" {
		t.Errorf("tap group = %q, want 1000", group)
	}
	tap := links(t, ns)["bgr1a2b"]
	if tap.Master != "bgtbr0" || !slices.Contains(tap.Flags, "UP") {
		t.Errorf("tap master %q flags %v, want master bgtbr0 and UP", tap.Master, tap.Flags)
	}
	wantKind(t, ns, n, opArgs{Op: "create_tap", Name: "bgr1a2b", UID: 1001, GID: 1000}, "conflict")
	mustOp(t, ns, n, opArgs{Op: "create_tap", Name: "bgr2", UID: 1000, GID: 1000, MAC: "02:00:00:00:00:aa"})
	if mac := links(t, ns)["bgr2"].Address; mac != "02:00:00:00:00:aa" {
		t.Errorf("tap bgr2 MAC = %s", mac)
	}
	for _, bad := range []string{"eth0", "lo", "bgrZZ", "bgtbr0", "bgr0123456789abc"} {
		wantKind(t, ns, n, opArgs{Op: "create_tap", Name: bad, UID: 1000, GID: 1000}, "invalid_argument")
		wantKind(t, ns, n, opArgs{Op: "delete_tap", Name: bad}, "invalid_argument")
	}
	wantKind(t, ns, n, opArgs{Op: "create_tap", Name: "bgr3", UID: 1000, GID: 1000, MAC: "ff:ff:ff:ff:ff:ff"}, "invalid_argument")
	// A non-tap interface that happens to carry a tap-shaped name is not touched.
	netnstest.Run(t, "ip", "-n", ns, "link", "add", "bgrdead", "type", "veth", "peer", "name", "bgtpeer")
	wantKind(t, ns, n, opArgs{Op: "delete_tap", Name: "bgrdead"}, "conflict")
	netnstest.Run(t, "ip", "-n", ns, "link", "del", "bgrdead")

	if st := mustOp(t, ns, n, opArgs{Op: "state", UID: 1000, GID: 1000}); !slices.Equal(st.Taps, []string{"bgr1a2b", "bgr2"}) || len(st.NAT) != 0 {
		t.Errorf("state = %+v", st)
	}

	mustOp(t, ns, n, opArgs{Op: "enable_nat", IP: "172.30.0.5"})
	mustOp(t, ns, n, opArgs{Op: "enable_nat", IP: "172.30.0.5"})
	elems, comments, ok := listTable(t, ns)
	if !ok || !slices.Equal(elems, []string{"172.30.0.5"}) {
		t.Fatalf("after EnableNAT twice: table present %v, elements %v", ok, elems)
	}
	wantComments := []string{
		"postrouting/banger:masquerade-nat-guests oif!=bgtbr0 daddr!=172.30.0.0/24",
		"forward/banger:accept-guest-to-guest 172.30.0.0/24",
		"forward/banger:accept-established",
		"forward/banger:accept-nat-guests iif=bgtbr0 oif!=bgtbr0",
		"forward/banger:drop-from-guests iif=bgtbr0",
		"forward/banger:drop-to-guests oif=bgtbr0",
	}
	if !slices.Equal(comments, wantComments) {
		t.Errorf("rules = %q, want %q", comments, wantComments)
	}
	if fwd := strings.TrimSpace(netnstest.Run(t, "ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward")); fwd != "1" {
		t.Errorf("ip_forward = %s after EnableNAT", fwd)
	}
	for _, bad := range []string{"172.30.1.5", "172.30.0.0", "172.30.0.1", "172.30.0.255", "8.8.8.8"} {
		wantKind(t, ns, n, opArgs{Op: "enable_nat", IP: bad}, "invalid_argument")
	}
	mustOp(t, ns, n, opArgs{Op: "enable_nat", IP: "172.30.0.6"})

	// A changed uplink rebuilds the rules in place and keeps the NAT guests.
	up := n
	up.Uplink = "uplink0"
	mustOp(t, ns, up, opArgs{Op: "enable_nat", IP: "172.30.0.7"})
	elems, comments, _ = listTable(t, ns)
	if !slices.Equal(elems, []string{"172.30.0.5", "172.30.0.6", "172.30.0.7"}) || len(comments) != 6 ||
		comments[0] != "postrouting/banger:masquerade-nat-guests oif=uplink0 daddr!=172.30.0.0/24" {
		t.Errorf("after uplink change: elements %v rules %q", elems, comments)
	}

	mustOp(t, ns, n, opArgs{Op: "disable_nat", IP: "172.30.0.5"})
	mustOp(t, ns, n, opArgs{Op: "disable_nat", IP: "172.30.0.5"})
	if st := mustOp(t, ns, n, opArgs{Op: "state", UID: 1000, GID: 1000}); !slices.Equal(st.NAT, []netip.Addr{netip.MustParseAddr("172.30.0.6"), netip.MustParseAddr("172.30.0.7")}) {
		t.Errorf("state NAT after DisableNAT = %v", st.NAT)
	}

	mustOp(t, ns, n, opArgs{Op: "delete_tap", Name: "bgr2", UID: 1000, GID: 1000})
	mustOp(t, ns, n, opArgs{Op: "delete_tap", Name: "bgr2", UID: 1000, GID: 1000})
	if st := mustOp(t, ns, n, opArgs{Op: "state", UID: 1000, GID: 1000}); !slices.Equal(st.Taps, []string{"bgr1a2b"}) {
		t.Errorf("taps after DeleteTap = %v", st.Taps)
	}

	mustOp(t, ns, n, opArgs{Op: "cleanup", UID: 1000, GID: 1000})
	mustOp(t, ns, n, opArgs{Op: "cleanup", UID: 1000, GID: 1000})
	for name := range links(t, ns) {
		if strings.HasPrefix(name, "bgr") || name == "bgtbr0" {
			t.Errorf("interface %s left after Cleanup", name)
		}
	}
	if _, _, ok := listTable(t, ns); ok {
		t.Error("nftables table banger left after Cleanup")
	}
	if st := mustOp(t, ns, n, opArgs{Op: "state", UID: 1000, GID: 1000}); len(st.Taps)+len(st.NAT) != 0 {
		t.Errorf("state after Cleanup = %+v", st)
	}
}

// TestForeignTapsSurvive: a tap-shaped name does not make a device banger's. A tap owned by
// another uid, a tap with banger's uid but another group, a root-made tap without an owner
// and a tun are refused by DeleteTap, hidden from State and kept by Cleanup; banger's own
// tap is removed.
func TestForeignTapsSurvive(t *testing.T) {
	netnstest.Require(t, "nft")
	ns := netnstest.New(t, "foreign")
	n := testNet
	own := opArgs{UID: 1000, GID: 1000}

	mustOp(t, ns, n, opArgs{Op: "create_tap", Name: "bgr1", UID: 1000, GID: 1000})
	netnstest.Run(t, "ip", "-n", ns, "tuntap", "add", "dev", "bgr2", "mode", "tap", "user", "1001", "group", "1000")
	netnstest.Run(t, "ip", "-n", ns, "tuntap", "add", "dev", "bgr3", "mode", "tap", "user", "1000", "group", "1001")
	netnstest.Run(t, "ip", "-n", ns, "tuntap", "add", "dev", "bgr4", "mode", "tap")
	netnstest.Run(t, "ip", "-n", ns, "tuntap", "add", "dev", "bgr5", "mode", "tun", "user", "1000", "group", "1000")
	foreign := []string{"bgr2", "bgr3", "bgr4", "bgr5"}

	if st := mustOp(t, ns, n, opArgs{Op: "state", UID: own.UID, GID: own.GID}); !slices.Equal(st.Taps, []string{"bgr1"}) {
		t.Errorf("state lists taps %v, want only banger's bgr1", st.Taps)
	}
	for _, name := range foreign {
		wantKind(t, ns, n, opArgs{Op: "delete_tap", Name: name, UID: own.UID, GID: own.GID}, "conflict")
	}
	// A daemon running as root owns its taps as 0:0; a root-made tap without an owner is
	// still not one of them.
	wantKind(t, ns, n, opArgs{Op: "delete_tap", Name: "bgr4", UID: 0, GID: 0}, "conflict")

	mustOp(t, ns, n, opArgs{Op: "cleanup", UID: own.UID, GID: own.GID})
	left := links(t, ns)
	if _, ok := left["bgr1"]; ok {
		t.Error("banger's tap bgr1 survived Cleanup")
	}
	for _, name := range foreign {
		if _, ok := left[name]; !ok {
			t.Errorf("Cleanup deleted %s, which is not banger's", name)
		}
	}
	mustOp(t, ns, n, opArgs{Op: "create_tap", Name: "bgr1", UID: 1000, GID: 1000})
	mustOp(t, ns, n, opArgs{Op: "delete_tap", Name: "bgr1", UID: own.UID, GID: own.GID})
	left = links(t, ns)
	if _, ok := left["bgr1"]; ok {
		t.Error("banger's tap bgr1 survived DeleteTap")
	}
	for _, name := range foreign {
		if _, ok := left[name]; !ok {
			t.Errorf("%s is gone", name)
		}
	}
}
