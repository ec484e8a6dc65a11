package vmdns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// All servers in these tests, banger's and the fake upstream, listen on 127.0.0.1 with
// random ports; no query ever leaves loopback.

const domain = "banger.internal"

func startServer(t *testing.T, upstreams []string) (*Server, string) {
	t.Helper()
	s := New(domain, upstreams, nil)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		_ = s.Close()
	})
	if err := s.ListenAndServe(ctx, []string{"127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	addrs := s.Addrs()
	if len(addrs) != 1 {
		t.Fatalf("Addrs = %v", addrs)
	}
	return s, addrs[0]
}

func query(t *testing.T, addr, name string, qtype uint16, netw string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: netw, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], netw, err)
	}
	return resp
}

func answerA(t *testing.T, m *dns.Msg) []string {
	t.Helper()
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func TestRecordName(t *testing.T) {
	for _, c := range [][3]string{
		{"web", "banger.internal", "web.banger.internal."},
		{"Web", "Banger.Internal.", "web.banger.internal."},
	} {
		if got := RecordName(c[0], c[1]); got != c[2] {
			t.Errorf("RecordName(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
}

func TestAuthoritativeAnswers(t *testing.T) {
	s, addr := startServer(t, nil)
	s.Set("web", netip.MustParseAddr("172.30.0.5"))
	s.Set("db", netip.MustParseAddr("172.30.0.6"))

	for _, netw := range []string{"udp", "tcp"} {
		resp := query(t, addr, "web.banger.internal.", dns.TypeA, netw)
		if resp.Rcode != dns.RcodeSuccess || !resp.Authoritative || !slices.Equal(answerA(t, resp), []string{"172.30.0.5"}) {
			t.Errorf("%s: A web = %v", netw, resp)
		}
	}
	// Case does not matter, and the question's spelling is echoed.
	resp := query(t, addr, "WeB.BANGER.internal.", dns.TypeA, "udp")
	if !slices.Equal(answerA(t, resp), []string{"172.30.0.5"}) || resp.Answer[0].Header().Name != "WeB.BANGER.internal." {
		t.Errorf("mixed case A = %v", resp)
	}
	// Known name, other type: NOERROR without answers.
	resp = query(t, addr, "web.banger.internal.", dns.TypeAAAA, "udp")
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 || len(resp.Ns) != 1 {
		t.Errorf("AAAA web = %v", resp)
	}
	// Unknown names in the domain: NXDOMAIN with the SOA for negative caching.
	for _, name := range []string{"nope.banger.internal.", "a.web.banger.internal."} {
		resp = query(t, addr, name, dns.TypeA, "udp")
		if resp.Rcode != dns.RcodeNameError || len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Errorf("A %s = %v", name, resp)
		}
	}
	resp = query(t, addr, "banger.internal.", dns.TypeSOA, "udp")
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("SOA = %v", resp)
	}
	// Reverse lookups of guest addresses.
	rev, _ := dns.ReverseAddr("172.30.0.6")
	resp = query(t, addr, rev, dns.TypePTR, "udp")
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.PTR).Ptr != "db.banger.internal." {
		t.Errorf("PTR 172.30.0.6 = %v", resp)
	}

	// Changes take effect immediately.
	s.Set("web", netip.MustParseAddr("172.30.0.9"))
	if got := answerA(t, query(t, addr, "web.banger.internal.", dns.TypeA, "udp")); !slices.Equal(got, []string{"172.30.0.9"}) {
		t.Errorf("after Set: %v", got)
	}
	rev5, _ := dns.ReverseAddr("172.30.0.5")
	if resp := query(t, addr, rev5, dns.TypePTR, "udp"); len(resp.Answer) != 0 {
		t.Errorf("old address still has a PTR: %v", resp)
	}
	s.Remove("web")
	if resp := query(t, addr, "web.banger.internal.", dns.TypeA, "udp"); resp.Rcode != dns.RcodeNameError {
		t.Errorf("after Remove: %v", resp)
	}
	rev9, _ := dns.ReverseAddr("172.30.0.9")
	if resp := query(t, addr, rev9, dns.TypePTR, "udp"); len(resp.Answer) != 0 {
		t.Errorf("removed name still has a PTR: %v", resp)
	}
}

// fakeUpstream is a DNS server on loopback that answers every A query with 192.0.2.1 and
// counts the queries it sees.
type fakeUpstream struct {
	mu    sync.Mutex
	names []string
}

func (f *fakeUpstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	f.mu.Lock()
	f.names = append(f.names, r.Question[0].Name)
	f.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	m.Answer = append(m.Answer, &dns.A{
		Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
		A:   net.ParseIP("192.0.2.1"),
	})
	_ = w.WriteMsg(m)
}

func (f *fakeUpstream) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.names...)
}

func startUpstream(t *testing.T) (*fakeUpstream, string) {
	t.Helper()
	f := &fakeUpstream{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: f}, {Listener: l, Handler: f}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return f, pc.LocalAddr().String()
}

// deadUpstream returns a loopback UDP address where nothing answers.
func deadUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

func TestForwarding(t *testing.T) {
	up, upAddr := startUpstream(t)
	s, addr := startServer(t, []string{deadUpstream(t), upAddr})
	s.Set("web", netip.MustParseAddr("172.30.0.5"))

	for _, netw := range []string{"udp", "tcp"} {
		resp := query(t, addr, "example.test.", dns.TypeA, netw)
		if resp.Rcode != dns.RcodeSuccess || !slices.Equal(answerA(t, resp), []string{"192.0.2.1"}) {
			t.Errorf("%s: forwarded A = %v", netw, resp)
		}
	}
	// Names in banger's domain never leave, even unknown ones.
	query(t, addr, "nope.banger.internal.", dns.TypeA, "udp")
	query(t, addr, "web.banger.internal.", dns.TypeMX, "udp")
	for _, n := range up.seen() {
		if strings.HasSuffix(n, "banger.internal.") {
			t.Errorf("query for %s was forwarded", n)
		}
	}
	if got := up.seen(); len(got) != 2 {
		t.Errorf("upstream saw %v, want the two forwarded queries", got)
	}
}

func TestForwardingFailure(t *testing.T) {
	_, addr := startServer(t, []string{deadUpstream(t)})
	start := time.Now()
	resp := query(t, addr, "example.test.", dns.TypeA, "udp")
	if resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("no upstream: rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("SERVFAIL took %s", d)
	}
	_, addr = startServer(t, nil)
	if resp := query(t, addr, "example.test.", dns.TypeA, "udp"); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("no upstreams configured: %v", resp)
	}
}

func TestConcurrentUpdates(t *testing.T) {
	s, addr := startServer(t, nil)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("vm%d", i)
			for j := range 50 {
				s.Set(name, netip.AddrFrom4([4]byte{172, 30, 0, byte(10 + i)}))
				if j%2 == 0 {
					s.Remove(name)
				}
			}
		}()
	}
	for range 20 {
		query(t, addr, "vm1.banger.internal.", dns.TypeA, "udp")
	}
	wg.Wait()
	if got := answerA(t, query(t, addr, "vm3.banger.internal.", dns.TypeA, "udp")); !slices.Equal(got, []string{"172.30.0.13"}) {
		t.Errorf("vm3 = %v", got)
	}
}

func TestListenErrorsAndClose(t *testing.T) {
	s, addr := startServer(t, nil)
	// The same address again is taken.
	s2 := New(domain, nil, nil)
	if err := s2.ListenAndServe(context.Background(), []string{addr}); err == nil {
		s2.Close()
		t.Fatal("second server bound an address in use")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	c := &dns.Client{Timeout: 300 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("web.banger.internal.", dns.TypeA)
	if _, _, err := c.Exchange(m, addr); err == nil {
		t.Error("server still answers after Close")
	}
	if err := s.ListenAndServe(context.Background(), []string{"127.0.0.1:0"}); err == nil {
		t.Error("ListenAndServe after Close succeeded")
	}
}

func TestContextStopsServer(t *testing.T) {
	s := New(domain, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.ListenAndServe(ctx, []string{"127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0]
	cancel()
	deadline := time.Now().Add(3 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("server still accepts TCP after its context ended")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte("# comment\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch example.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := UpstreamsFromResolvConf(p); !slices.Equal(got, []string{"192.0.2.53:53", "[2001:db8::53]:53"}) {
		t.Errorf("UpstreamsFromResolvConf = %v", got)
	}
	if got := UpstreamsFromResolvConf(filepath.Join(t.TempDir(), "missing")); got != nil {
		t.Errorf("missing file: %v", got)
	}
}

func TestLoopPrevention(t *testing.T) {
	// An upstream that is the server itself is skipped instead of looping until timeout.
	// Reserve a free port, release it, and give the server its own address as upstream.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	self := pc.LocalAddr().String()
	pc.Close()
	s := New(domain, []string{self}, nil)
	if err := s.ListenAndServe(context.Background(), []string{self}); err != nil {
		t.Skipf("skipping: reserved port was taken meanwhile: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	start := time.Now()
	if resp := query(t, self, "example.test.", dns.TypeA, "udp"); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("self as upstream: %v", resp)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("self-forwarding was attempted (%s)", d)
	}
}

func TestDig(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("skipping: dig not installed")
	}
	s, addr := startServer(t, nil)
	s.Set("web", netip.MustParseAddr("172.30.0.5"))
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("dig", "@"+host, "-p", port, "+short", "+time=2", "+tries=1", "WEB.banger.internal", "A").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "172.30.0.5" {
		t.Errorf("dig: %v: %q", err, out)
	}
	out, err = exec.Command("dig", "@"+host, "-p", port, "+short", "+time=2", "+tries=1", "-x", "172.30.0.5").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "web.banger.internal." {
		t.Errorf("dig -x: %v: %q", err, out)
	}
}

// A second daemon's DNS whose preferred address is taken moves to a free port of the same IP
// and answers there with its own records, while the first keeps its address.
func TestMovableAddressInUseMovesToFreePort(t *testing.T) {
	first, addr := startServer(t, nil)
	first.Set("one", netip.MustParseAddr("172.30.0.2"))
	second := New(domain, nil, nil)
	t.Cleanup(func() { _ = second.Close() })
	second.Set("two", netip.MustParseAddr("172.30.0.3"))
	if err := second.ListenAndServeMovable(context.Background(), []string{addr}); err != nil {
		t.Fatalf("movable listen on a taken address: %v", err)
	}
	moved := second.Addrs()
	if len(moved) != 1 || moved[0] == addr || !strings.HasPrefix(moved[0], "127.0.0.1:") {
		t.Fatalf("second server bound %v, want a different port of 127.0.0.1 than %s", moved, addr)
	}
	if got := answerA(t, query(t, moved[0], "two.banger.internal.", dns.TypeA, "tcp")); !slices.Equal(got, []string{"172.30.0.3"}) {
		t.Fatalf("second server answered %v", got)
	}
	if got := answerA(t, query(t, addr, "one.banger.internal.", dns.TypeA, "udp")); !slices.Equal(got, []string{"172.30.0.2"}) {
		t.Fatalf("first server answered %v", got)
	}
}
