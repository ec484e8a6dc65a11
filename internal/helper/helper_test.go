package helper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/hostnet"
	"banger/internal/netnstest"
	"banger/internal/opid"
	"banger/internal/rpc"
	"banger/internal/testkit"
)

var testNet = hostnet.Net{Bridge: "bgtbr0", Prefix: netip.MustParsePrefix("172.30.0.1/24")}

func TestValidators(t *testing.T) {
	for _, name := range []string{"eth0", "lo", "bgrZZ", "bgr", "bgr0123456789abc", "bgtbr0", "bgr1/../x", ""} {
		err := ValidateTap(name)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "tap") || !strings.Contains(err.Error(), name) {
			t.Errorf("ValidateTap(%q) = %v, want invalid argument naming field and value", name, err)
		}
	}
	for _, name := range []string{"bgr0", "bgr1a2b3c4d5e6f"} {
		if err := ValidateTap(name); err != nil {
			t.Errorf("ValidateTap(%q) = %v", name, err)
		}
	}
	for _, ip := range []string{"10.0.0.5", "172.30.0.0", "172.30.0.1", "172.30.0.255", "172.30.1.5", "::ffff:172.30.0.5", "nope", ""} {
		if _, err := ValidateGuestIP(testNet, ip); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "ip") {
			t.Errorf("ValidateGuestIP(%q) = %v, want invalid argument", ip, err)
		}
	}
	if ip, err := ValidateGuestIP(testNet, "172.30.0.5"); err != nil || ip != netip.MustParseAddr("172.30.0.5") {
		t.Errorf("ValidateGuestIP(172.30.0.5) = %v, %v", ip, err)
	}
	if _, err := NewServer(Config{Socket: "/x", Net: hostnet.Net{Bridge: "bgr1", Prefix: testNet.Prefix}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("NewServer with a tap-named bridge = %v", err)
	}
	if _, err := NewServer(Config{Socket: "/x", Net: testNet, TapOwnerUID: -1}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("NewServer with tap owner -1 = %v", err)
	}
}

// helperUnderTest is a helper child serving inside its own namespace.
type helperUnderTest struct {
	ns, socket, log, bin string
}

// startHelper runs the helper in a fresh namespace, its socket in a world-searchable
// directory (so the socket's own mode and the peer check are what is tested), and a copy
// of the test binary that unprivileged callers can execute.
func startHelper(t *testing.T, a serveArgs) *helperUnderTest {
	t.Helper()
	dir := testkit.WorldDir(t, "banger-helper-test-")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "helper.test")
	src, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	h := &helperUnderTest{ns: netnstest.New(t, "helper"), socket: filepath.Join(dir, "helper.sock"), log: filepath.Join(dir, "helper.log"), bin: bin}
	a.Socket, a.Log, a.Bridge, a.Prefix = h.socket, h.log, testNet.Bridge, testNet.Prefix.String()
	cmd := netnstest.Command(t, self, h.ns, "serve", a)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := (&Client{Socket: h.socket}).Ping(ctx)
		cancel()
		if err == nil {
			return h
		}
		select {
		case err := <-exited:
			t.Fatalf("helper exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("helper did not answer: %v\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// callAs makes one raw call from a child process running with cred.
func (h *helperUnderTest) callAs(t *testing.T, cred *syscall.Credential, method string, params any, id string) callResult {
	t.Helper()
	raw, _ := json.Marshal(params)
	cmd := netnstest.Command(t, h.bin, "", "call", callArgs{Socket: h.socket, Method: method, Params: raw, OpID: id})
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Dir = "/"
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("caller child as %+v: %v\n%s", cred, err, stderr.String())
	}
	var res callResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("decoding caller output %q: %v", out, err)
	}
	return res
}

// logRecords returns the helper's JSON log records.
func (h *helperUnderTest) logRecords(t *testing.T) []map[string]any {
	t.Helper()
	f, err := os.Open(h.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		out = append(out, rec)
	}
	return out
}

func wantCode(t *testing.T, err error, code, mustMention string) {
	t.Helper()
	var we *rpc.ErrorResponse
	if !errors.As(err, &we) || we.Code != code {
		t.Errorf("got %v, want wire error %s", err, code)
		return
	}
	if !strings.Contains(we.Message, mustMention) {
		t.Errorf("error %q does not mention %q", we.Message, mustMention)
	}
}

func TestHelperEndToEnd(t *testing.T) {
	netnstest.Require(t, "nft")
	h := startHelper(t, serveArgs{SocketGroup: 65534, AllowUIDs: []int{1000}, AllowGIDs: []int{4242}, TapUID: 1000, TapGID: 1000})
	c := &Client{Socket: h.socket}

	fi, err := os.Stat(h.socket)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o660 || st.Uid != 0 || st.Gid != 65534 {
		t.Errorf("socket mode %v owner %d:%d, want 0660 0:65534", fi.Mode().Perm(), st.Uid, st.Gid)
	}

	t.Run("operations", func(t *testing.T) {
		ctx := context.Background()
		ping, err := c.Info(ctx)
		if err != nil || ping.Bridge != testNet.Bridge || ping.Prefix != testNet.Prefix.String() {
			t.Fatalf("ping = %+v, %v", ping, err)
		}
		if err := c.EnsureBridge(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.CreateTap(ctx, "bgr1a2b"); err != nil {
			t.Fatal(err)
		}
		if err := c.CreateTap(ctx, "bgr1a2b"); err != nil {
			t.Fatalf("CreateTap again: %v", err)
		}
		if owner := strings.TrimSpace(netnstest.Run(t, "ip", "netns", "exec", h.ns, "cat", "/sys/class/net/bgr1a2b/owner")); owner != "1000" {
			t.Errorf("tap owner %q, want the configured 1000", owner)
		}
		ip := netip.MustParseAddr("172.30.0.5")
		if err := c.EnableNAT(ctx, ip); err != nil {
			t.Fatal(err)
		}
		st, err := c.State(ctx)
		if err != nil || !slices.Equal(st.Taps, []string{"bgr1a2b"}) || !slices.Equal(st.NATIPs, []netip.Addr{ip}) || st.Bridge != testNet.Bridge {
			t.Fatalf("state = %+v, %v", st, err)
		}
		if err := c.DisableNAT(ctx, ip); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteTap(ctx, "bgr1a2b"); err != nil {
			t.Fatal(err)
		}
		if st, err := c.State(ctx); err != nil || len(st.Taps)+len(st.NATIPs) != 0 {
			t.Fatalf("state after delete = %+v, %v", st, err)
		}
		if err := c.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		if out := netnstest.Run(t, "ip", "-n", h.ns, "-o", "link", "show"); strings.Contains(out, "bgr") || strings.Contains(out, testNet.Bridge) {
			t.Errorf("links left after cleanup:\n%s", out)
		}
	})

	t.Run("invalid arguments", func(t *testing.T) {
		ctx := context.Background()
		for _, tap := range []string{"eth0", "lo", "bgrZZ", "bgtbr0", "bgr0123456789abc"} {
			wantCode(t, c.CreateTap(ctx, tap), rpc.CodeInvalidArgument, tap)
			wantCode(t, c.DeleteTap(ctx, tap), rpc.CodeInvalidArgument, tap)
		}
		for _, ip := range []string{"10.0.0.5", "172.30.1.5", "172.30.0.0", "172.30.0.1", "172.30.0.255"} {
			wantCode(t, c.EnableNAT(ctx, netip.MustParseAddr(ip)), rpc.CodeInvalidArgument, ip)
			wantCode(t, c.DisableNAT(ctx, netip.MustParseAddr(ip)), rpc.CodeInvalidArgument, ip)
		}
		raw := func(method string, params any) error {
			return rpc.Call(ctx, h.socket, method, params, nil)
		}
		wantCode(t, raw(MethodEnableNAT, map[string]string{"ip": "not-an-ip"}), rpc.CodeInvalidArgument, "not-an-ip")
		wantCode(t, raw(MethodCreateTap, map[string]string{"tap": "bgr1", "mac": "zz:zz"}), rpc.CodeInvalidArgument, "zz:zz")
		wantCode(t, raw(MethodCreateTap, map[string]string{"tap": "bgr1", "mac": "01:00:5e:00:00:01"}), rpc.CodeInvalidArgument, "01:00:5e:00:00:01")
		// The bridge (and the tap owner) come from the helper's config only.
		wantCode(t, raw(MethodCreateTap, map[string]string{"tap": "bgr1", "bridge": "eth0"}), rpc.CodeInvalidArgument, "bridge")
		wantCode(t, raw(MethodEnsureBridge, map[string]string{"bridge": "eth0"}), rpc.CodeInvalidArgument, "eth0")
		wantCode(t, raw(MethodCreateTap, nil), rpc.CodeInvalidArgument, "params")
		if out := netnstest.Run(t, "ip", "-n", h.ns, "-o", "link", "show"); strings.Contains(out, "bgr1") {
			t.Errorf("a refused call created a tap:\n%s", out)
		}
	})

	t.Run("authorization", func(t *testing.T) {
		// In the socket's group, so the file mode lets it connect: the peer check must refuse.
		res := h.callAs(t, &syscall.Credential{Uid: 65534, Gid: 65534}, MethodPing, nil, opid.New())
		if res.Code != rpc.CodePermissionDenied || !strings.Contains(res.Message, "uid 65534") {
			t.Errorf("uid 65534: %+v, want permission_denied", res)
		}
		res = h.callAs(t, &syscall.Credential{Uid: 65534, Gid: 65534}, MethodCreateTap, TapParams{Tap: "bgr99"}, opid.New())
		if res.Code != rpc.CodePermissionDenied {
			t.Errorf("uid 65534 create_tap: %+v, want permission_denied", res)
		}
		if out := netnstest.Run(t, "ip", "-n", h.ns, "-o", "link", "show"); strings.Contains(out, "bgr99") {
			t.Errorf("an unauthorised call created a tap:\n%s", out)
		}
		// Allowed by uid.
		if res := h.callAs(t, &syscall.Credential{Uid: 1000, Gid: 65534}, MethodPing, nil, opid.New()); res.Code != "" {
			t.Errorf("uid 1000: %+v, want success", res)
		}
		// Allowed by a supplementary group only.
		if res := h.callAs(t, &syscall.Credential{Uid: 2000, Gid: 65534, Groups: []uint32{4242}}, MethodPing, nil, opid.New()); res.Code != "" {
			t.Errorf("uid 2000 in group 4242: %+v, want success", res)
		}
	})

	t.Run("one log line per call", func(t *testing.T) {
		okID, failID := opid.New(), opid.New()
		ctx := opid.With(context.Background(), okID)
		if _, err := c.State(ctx); err != nil {
			t.Fatal(err)
		}
		wantCode(t, c.CreateTap(opid.With(context.Background(), failID), "eth0"), rpc.CodeInvalidArgument, "eth0")
		var okRecs, failRecs []map[string]any
		for _, rec := range h.logRecords(t) {
			if msg, _ := rec["msg"].(string); strings.HasPrefix(msg, "operation ") {
				t.Errorf("rpc operation record leaked into the helper log: %v", rec)
			}
			switch rec["op_id"] {
			case okID:
				okRecs = append(okRecs, rec)
			case failID:
				failRecs = append(failRecs, rec)
			}
		}
		if len(okRecs) != 1 || okRecs[0]["msg"] != "helper rpc completed" || okRecs[0]["method"] != MethodState {
			t.Errorf("records for successful call: %v", okRecs)
		} else if _, ok := okRecs[0]["duration_ms"].(float64); !ok {
			t.Errorf("record has no duration_ms: %v", okRecs[0])
		}
		if len(failRecs) != 1 || failRecs[0]["msg"] != "helper rpc failed" || failRecs[0]["method"] != MethodCreateTap {
			t.Errorf("records for failed call: %v", failRecs)
		} else if e, _ := failRecs[0]["error"].(string); !strings.Contains(e, "eth0") {
			t.Errorf("failed record error %q does not name the value", e)
		} else if _, ok := failRecs[0]["duration_ms"].(float64); !ok {
			t.Errorf("record has no duration_ms: %v", failRecs[0])
		}
	})
}

func TestClientUnavailable(t *testing.T) {
	c := &Client{Socket: filepath.Join(t.TempDir(), "missing.sock")}
	err := c.EnsureBridge(context.Background())
	if !errors.Is(err, errdefs.ErrUnavailable) || errdefs.HintOf(err) == "" {
		t.Errorf("missing helper: %v (hint %q), want unavailable with a hint", err, errdefs.HintOf(err))
	}
	var empty Client
	if err := empty.Cleanup(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("no socket: %v", err)
	}
}
