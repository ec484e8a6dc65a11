// Package vmdns is the DNS server that gives VMs names: NAME.DOMAIN resolves to the VM's
// guest address and the address resolves back to the name. It runs inside the
// unprivileged daemon, listens on the bridge address for guests and on extra addresses for
// the host, answers for its domain authoritatively and forwards every other query to the
// host's upstream resolvers, so guests can use it as their only resolver.
package vmdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// ttl is short because VMs come and go within minutes; stale answers would outlive them.
const ttl = 5

// forwardTimeout bounds each upstream attempt so a dead upstream costs little.
const forwardTimeout = 2 * time.Second

// Server answers for one domain and forwards the rest. Records can be changed while it
// serves.
type Server struct {
	domain    string // canonical: lower case, fully qualified
	upstreams []string
	log       *slog.Logger

	mu     sync.RWMutex
	byName map[string]netip.Addr // canonical record name -> address
	byAddr map[netip.Addr]string // address -> canonical record name
	serial uint32

	smu     sync.Mutex
	servers []*dns.Server
	bound   []string
	closed  bool
	stop    context.CancelFunc
	ctx     context.Context
}

// New returns a server for domain (e.g. "banger.internal") forwarding to upstreams
// ("host" or "host:port"; port 53 is assumed).
func New(domain string, upstreams []string, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var ups []string
	for _, u := range upstreams {
		if u = strings.TrimSpace(u); u != "" {
			ups = append(ups, withPort(u))
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Server{
		domain:    dns.CanonicalName(domain),
		upstreams: ups,
		log:       log,
		byName:    map[string]netip.Addr{},
		byAddr:    map[netip.Addr]string{},
		serial:    uint32(time.Now().Unix()),
		ctx:       ctx,
		stop:      stop,
	}
}

// RecordName returns the fully qualified record name of a VM: "NAME.DOMAIN.", lower case.
func RecordName(name, domain string) string {
	return dns.CanonicalName(strings.TrimSuffix(name, ".") + "." + strings.TrimSuffix(domain, "."))
}

// Set publishes name (a VM name, one DNS label) at ip, replacing any earlier address.
func (s *Server) Set(name string, ip netip.Addr) {
	rn := RecordName(name, s.domain)
	ip = ip.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.byName[rn]; ok && s.byAddr[old] == rn {
		delete(s.byAddr, old)
	}
	s.byName[rn] = ip
	s.byAddr[ip] = rn
	s.serial++
}

// Lookup returns the address published for name.
func (s *Server) Lookup(name string) (netip.Addr, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ip, ok := s.byName[RecordName(name, s.domain)]
	return ip, ok
}

// Remove withdraws name; unknown names are ignored.
func (s *Server) Remove(name string) {
	rn := RecordName(name, s.domain)
	s.mu.Lock()
	defer s.mu.Unlock()
	ip, ok := s.byName[rn]
	if !ok {
		return
	}
	delete(s.byName, rn)
	if s.byAddr[ip] == rn {
		delete(s.byAddr, ip)
	}
	s.serial++
}

// ListenAndServe binds UDP and TCP on each address and serves in the background. It
// returns once every listener is bound and serving, or with the first error (having
// released whatever it bound). Serving stops when ctx ends or Close is called.
//
// An address with port 0 gets a random port, the same for UDP and TCP; Addrs reports it.
func (s *Server) ListenAndServe(ctx context.Context, addrs []string) error {
	return s.listenAndServe(ctx, addrs, false)
}

// ListenAndServeMovable is ListenAndServe for addresses whose port is a preference: one that
// is already taken (another bangerd on this host serves there) is bound on a free port of the
// same IP instead, with a warning, so daemons can run side by side. Addrs reports where each
// ended up. Addresses guests rely on (the bridge's :53) must not be movable.
func (s *Server) ListenAndServeMovable(ctx context.Context, addrs []string) error {
	return s.listenAndServe(ctx, addrs, true)
}

func (s *Server) listenAndServe(ctx context.Context, addrs []string, movable bool) error {
	if len(addrs) == 0 {
		return errors.New("dns: no listen addresses")
	}
	s.smu.Lock()
	defer s.smu.Unlock()
	if s.closed {
		return errors.New("dns: server closed")
	}
	var started []*dns.Server
	fail := func(err error) error {
		for _, srv := range started {
			_ = srv.Shutdown()
		}
		return err
	}
	var bound []string
	for _, addr := range addrs {
		pc, l, err := listenBoth(addr)
		if err != nil && movable && errors.Is(err, syscall.EADDRINUSE) {
			host, _, _ := net.SplitHostPort(addr)
			if pc, l, err = listenBoth(net.JoinHostPort(host, "0")); err == nil {
				s.log.Warn("dns address in use (another bangerd?); serving on a free port instead",
					"wanted", addr, "addr", pc.LocalAddr().String())
			}
		}
		if err != nil {
			return fail(err)
		}
		for _, srv := range []*dns.Server{
			{PacketConn: pc, Handler: s, Net: "udp"},
			{Listener: l, Handler: s, Net: "tcp"},
		} {
			if err := activate(srv); err != nil {
				pc.Close()
				l.Close()
				return fail(fmt.Errorf("dns: serving on %s: %w", addr, err))
			}
			started = append(started, srv)
		}
		bound = append(bound, pc.LocalAddr().String())
		s.log.Info("dns listening", "addr", pc.LocalAddr().String(), "domain", s.domain)
	}
	s.servers = append(s.servers, started...)
	s.bound = append(s.bound, bound...)
	context.AfterFunc(ctx, func() { _ = s.Close() })
	return nil
}

// listenBoth binds UDP and TCP on the same address and port.
func listenBoth(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: listen address %q: %w", addr, err)
	}
	// With port 0 the kernel picks UDP's port, which may be taken for TCP; retry a few times.
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listening on udp %s: %w", addr, err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		if port != "0" || attempt == 5 {
			return nil, nil, fmt.Errorf("dns: listening on tcp %s: %w", addr, err)
		}
	}
}

// activate starts srv in the background and waits until it serves.
func activate(srv *dns.Server) error {
	started := make(chan struct{})
	failed := make(chan error, 1)
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { failed <- srv.ActivateAndServe() }()
	select {
	case <-started:
		return nil
	case err := <-failed:
		return err
	}
}

// Addrs returns the bound addresses, with the ports actually chosen.
func (s *Server) Addrs() []string {
	s.smu.Lock()
	defer s.smu.Unlock()
	return append([]string(nil), s.bound...)
}

// Close stops serving and cancels queries being forwarded.
func (s *Server) Close() error {
	s.smu.Lock()
	defer s.smu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.stop()
	var errs []error
	for _, srv := range s.servers {
		if err := srv.Shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	s.servers = nil
	return errors.Join(errs...)
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		m := new(dns.Msg)
		code := dns.RcodeFormatError
		if r.Opcode != dns.OpcodeQuery {
			code = dns.RcodeNotImplemented
		}
		_ = w.WriteMsg(m.SetRcode(r, code))
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	if dns.IsSubDomain(s.domain, name) {
		_ = w.WriteMsg(s.answerDomain(r, q, name))
		return
	}
	if q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY {
		if m := s.answerReverse(r, name); m != nil {
			_ = w.WriteMsg(m)
			return
		}
	}
	s.forward(w, r)
}

// reply starts an authoritative answer, echoing EDNS0 if the query used it.
func reply(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = true
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(dns.DefaultMsgSize, false)
	}
	return m
}

// answerDomain answers a query for the domain or a name in it; nothing there is forwarded.
func (s *Server) answerDomain(r *dns.Msg, q dns.Question, name string) *dns.Msg {
	m := reply(r)
	s.mu.RLock()
	ip, known := s.byName[name]
	serial := s.serial
	s.mu.RUnlock()
	soa := s.soa(serial)
	switch {
	case name == s.domain:
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, soa)
		} else {
			m.Ns = append(m.Ns, soa)
		}
	case !known:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soa)
	case (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY) && q.Qclass == dns.ClassINET:
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
			A:   ip.AsSlice(),
		})
	default:
		// The name exists but has no record of this type (AAAA, MX...): NOERROR, no data.
		m.Ns = append(m.Ns, soa)
	}
	return m
}

// answerReverse answers a PTR query for a known guest address, or returns nil.
func (s *Server) answerReverse(r *dns.Msg, name string) *dns.Msg {
	ip, ok := parseReverse(name)
	if !ok {
		return nil
	}
	s.mu.RLock()
	target, known := s.byAddr[ip]
	s.mu.RUnlock()
	if !known {
		return nil
	}
	m := reply(r)
	m.Answer = append(m.Answer, &dns.PTR{
		Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: ttl},
		Ptr: target,
	})
	return m
}

// parseReverse turns "4.3.2.1.in-addr.arpa." into 1.2.3.4.
func parseReverse(name string) (netip.Addr, bool) {
	rest, ok := strings.CutSuffix(name, ".in-addr.arpa.")
	if !ok {
		return netip.Addr{}, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(parts[3] + "." + parts[2] + "." + parts[1] + "." + parts[0])
	return ip, err == nil
}

func (s *Server) soa(serial uint32) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: s.domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      "ns." + s.domain,
		Mbox:    "hostmaster." + s.domain,
		Serial:  serial,
		Refresh: 3600, Retry: 600, Expire: 86400,
		Minttl: ttl, // negative answers are cached this long
	}
}

// forward relays r to the upstreams in order over the transport it arrived on and returns
// the first answer; SERVFAIL if none answers.
func (s *Server) forward(w dns.ResponseWriter, r *dns.Msg) {
	netw := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		netw = "tcp"
	}
	c := &dns.Client{Net: netw, Timeout: forwardTimeout}
	q := r.Question[0]
	for _, up := range s.upstreams {
		if s.isSelf(up) {
			continue
		}
		resp, _, err := c.ExchangeContext(s.ctx, r, up)
		if err != nil {
			s.log.Debug("dns forward failed", "upstream", up, "name", q.Name, "type", dns.TypeToString[q.Qtype], "error", err.Error())
			continue
		}
		resp.Id = r.Id
		_ = w.WriteMsg(resp)
		return
	}
	s.log.Warn("dns query unanswered: no upstream replied", "name", q.Name, "type", dns.TypeToString[q.Qtype], "upstreams", s.upstreams)
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeServerFailure)
	m.RecursionAvailable = true
	_ = w.WriteMsg(m)
}

// isSelf reports whether upstream is one of this server's own listeners, which would make
// a query loop until it timed out (e.g. when resolv.conf points at banger's address).
func (s *Server) isSelf(upstream string) bool {
	uh, up, err := net.SplitHostPort(upstream)
	if err != nil {
		return false
	}
	uip, err := netip.ParseAddr(uh)
	if err != nil {
		return false
	}
	s.smu.Lock()
	defer s.smu.Unlock()
	for _, b := range s.bound {
		ap, err := netip.ParseAddrPort(b)
		if err != nil || fmt.Sprint(ap.Port()) != up {
			continue
		}
		if ap.Addr().Unmap() == uip.Unmap() || (ap.Addr().IsUnspecified() && uip.IsLoopback()) {
			return true
		}
	}
	return false
}

// withPort adds port 53 to an upstream given without one.
func withPort(u string) string {
	if _, _, err := net.SplitHostPort(u); err == nil {
		return u
	}
	return net.JoinHostPort(strings.Trim(u, "[]"), "53")
}

// UpstreamsFromResolvConf returns the name servers of a resolv.conf as "host:port", or
// nil if the file cannot be read.
func UpstreamsFromResolvConf(path string) []string {
	cfg, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, srv := range cfg.Servers {
		out = append(out, net.JoinHostPort(srv, cfg.Port))
	}
	return out
}
