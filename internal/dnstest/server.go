package dnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Fault is what the server does with a query instead of answering it from
// its zones.
type Fault int

const (
	// NoFault answers from the zones (the default).
	NoFault Fault = iota
	// NXDomain answers with RCODE 3 (name error) and the zone's SOA.
	NXDomain
	// ServFail answers with RCODE 2 (server failure).
	ServFail
	// Refused answers with RCODE 5 (refused).
	Refused
	// Silence reads the query and never answers it: the client times out.
	Silence
	// Truncate answers over UDP with the TC bit and only the first half of
	// the answer records (none when there is a single one); over TCP the
	// answer is complete.
	Truncate
)

func (f Fault) String() string {
	switch f {
	case NoFault:
		return "none"
	case NXDomain:
		return "NXDOMAIN"
	case ServFail:
		return "SERVFAIL"
	case Refused:
		return "REFUSED"
	case Silence:
		return "silence"
	case Truncate:
		return "truncate"
	}
	return fmt.Sprintf("Fault(%d)", int(f))
}

// Transports, as passed to Received and Answered. The empty string matches
// both.
const (
	UDP = "udp"
	TCP = "tcp"
)

// maxChase bounds CNAME chasing inside the server.
const maxChase = 8

type nameType struct {
	name  string
	qtype uint16 // 0: every type
}

type faultKey struct {
	nameType
	transport string // "": both
}

type countKey struct {
	name      string
	qtype     uint16
	transport string
}

// TB is the part of testing.TB the server uses; *testing.T, *testing.B and
// *testing.F satisfy it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

var _ TB = testing.TB(nil)

// Server is a running DNS server. Create it with Start.
type Server struct {
	tb      TB
	addr    string
	udp     *dns.Server
	tcp     *dns.Server
	stopped chan struct{}
	stop    sync.Once

	mu       sync.Mutex
	records  map[string][]dns.RR // by canonical owner name
	faults   map[faultKey]Fault
	holds    map[nameType]chan struct{}
	adAll    bool
	adName   map[string]bool
	noChase  bool
	noEDNS   bool
	received map[countKey]int
	answered map[countKey]int
	changed  chan struct{} // closed and replaced whenever a count changes
}

// Start starts a server on 127.0.0.1 (UDP and TCP, same free port) and stops
// it when the test ends.
func Start(tb TB) *Server {
	tb.Helper()
	s := &Server{
		tb:       tb,
		stopped:  make(chan struct{}),
		records:  make(map[string][]dns.RR),
		faults:   make(map[faultKey]Fault),
		holds:    make(map[nameType]chan struct{}),
		adName:   make(map[string]bool),
		received: make(map[countKey]int),
		answered: make(map[countKey]int),
		changed:  make(chan struct{}),
	}
	pc, ln, err := listenPair()
	if err != nil {
		tb.Fatalf("dnstest: %v", err)
	}
	s.addr = pc.LocalAddr().String()
	mux := dns.NewServeMux()
	mux.Handle(".", s)

	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	s.udp = &dns.Server{PacketConn: pc, Net: "udp", Handler: mux, NotifyStartedFunc: notify}
	s.tcp = &dns.Server{Listener: ln, Net: "tcp", Handler: mux, NotifyStartedFunc: notify}
	done := make(chan error, 2)
	go func() { done <- s.udp.ActivateAndServe() }()
	go func() { done <- s.tcp.ActivateAndServe() }()
	tb.Cleanup(func() {
		s.Close()
		for range 2 {
			<-done
		}
	})
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for range 2 {
		select {
		case <-started:
		case err := <-done:
			tb.Fatalf("dnstest: server stopped while starting: %v", err)
		case <-timeout.C:
			tb.Fatalf("dnstest: server did not start within 10s")
		}
	}
	return s
}

// listenPair opens a UDP socket on a free loopback port and a TCP listener
// on the same port, retrying a few times when the TCP port is taken.
func listenPair() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no free port for UDP and TCP: %w", lastErr)
}

// Addr returns the server's address, "127.0.0.1:port", for UDP and TCP.
func (s *Server) Addr() string { return s.addr }

// Close stops the server before the end of the test; later queries go
// unanswered (UDP) or are refused (TCP). Held queries are dropped. It is
// safe to call more than once.
func (s *Server) Close() {
	s.stop.Do(func() {
		close(s.stopped)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.udp.ShutdownContext(ctx)
		_ = s.tcp.ShutdownContext(ctx)
	})
}

// Add adds records to the zones. The records are copied.
func (s *Server) Add(rrs ...dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rr := range rrs {
		rr = dns.Copy(rr)
		h := rr.Header()
		h.Name = dns.CanonicalName(h.Name)
		if h.Class == 0 {
			h.Class = dns.ClassINET
		}
		s.records[h.Name] = append(s.records[h.Name], rr)
	}
}

// AddText adds records written in zone file syntax, one per string, e.g.
// "example.com. 300 IN MX 10 mx1.example.com.". A record that does not parse
// fails the test; call it from the test's goroutine.
func (s *Server) AddText(records ...string) {
	s.tb.Helper()
	for _, text := range records {
		rr, err := dns.NewRR(text)
		if err != nil {
			s.tb.Fatalf("dnstest: %q: %v", text, err)
		}
		if rr == nil {
			s.tb.Fatalf("dnstest: %q: no record", text)
		}
		s.Add(rr)
	}
}

func hdr(name string, rrtype uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: dns.CanonicalName(name), Rrtype: rrtype, Class: dns.ClassINET, Ttl: ttl}
}

// AddMX adds "name MX pref host". A host of "." is a null MX (RFC 7505).
func (s *Server) AddMX(name string, ttl uint32, pref uint16, host string) {
	s.Add(&dns.MX{Hdr: hdr(name, dns.TypeMX, ttl), Preference: pref, Mx: dns.Fqdn(host)})
}

// AddA adds one A record per address. An address that is not IPv4 fails
// the test.
func (s *Server) AddA(name string, ttl uint32, addrs ...string) {
	s.tb.Helper()
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil || !ip.Is4() {
			s.tb.Fatalf("dnstest: A %s: %q is not an IPv4 address", name, a)
		}
		s.Add(&dns.A{Hdr: hdr(name, dns.TypeA, ttl), A: ip.AsSlice()})
	}
}

// AddAAAA adds one AAAA record per address. An address that is not IPv6
// fails the test.
func (s *Server) AddAAAA(name string, ttl uint32, addrs ...string) {
	s.tb.Helper()
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil || !ip.Is6() || ip.Is4In6() {
			s.tb.Fatalf("dnstest: AAAA %s: %q is not an IPv6 address", name, a)
		}
		s.Add(&dns.AAAA{Hdr: hdr(name, dns.TypeAAAA, ttl), AAAA: ip.AsSlice()})
	}
}

// AddCNAME adds "name CNAME target".
func (s *Server) AddCNAME(name string, ttl uint32, target string) {
	s.Add(&dns.CNAME{Hdr: hdr(name, dns.TypeCNAME, ttl), Target: dns.Fqdn(target)})
}

// AddTXT adds one TXT record made of the given strings.
func (s *Server) AddTXT(name string, ttl uint32, txt ...string) {
	s.Add(&dns.TXT{Hdr: hdr(name, dns.TypeTXT, ttl), Txt: txt})
}

// AddTLSA adds a TLSA record (RFC 6698); certData is hexadecimal.
func (s *Server) AddTLSA(name string, ttl uint32, usage, selector, matchingType uint8, certData string) {
	s.Add(&dns.TLSA{Hdr: hdr(name, dns.TypeTLSA, ttl), Usage: usage, Selector: selector,
		MatchingType: matchingType, Certificate: certData})
}

// AddSOA adds the SOA of a zone. Negative answers (NXDOMAIN, NODATA) for
// names in the zone carry it in the authority section, which gives them
// their TTL: min(ttl, minimum) (RFC 2308 §5).
func (s *Server) AddSOA(zone string, ttl, minimum uint32) {
	zone = dns.CanonicalName(zone)
	s.Add(&dns.SOA{Hdr: hdr(zone, dns.TypeSOA, ttl), Ns: "ns." + zone, Mbox: "hostmaster." + zone,
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: minimum})
}

// Remove removes the records of a type at name; qtype 0 removes every
// record at name.
func (s *Server) Remove(name string, qtype uint16) {
	name = dns.CanonicalName(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if qtype == 0 {
		delete(s.records, name)
		return
	}
	kept := s.records[name][:0:0]
	for _, rr := range s.records[name] {
		if rr.Header().Rrtype != qtype {
			kept = append(kept, rr)
		}
	}
	if len(kept) == 0 {
		delete(s.records, name)
	} else {
		s.records[name] = kept
	}
}

// SetFault sets what happens to queries for name and qtype; qtype 0 covers
// every type not given its own fault. NoFault removes the setting. Faults
// apply to the queried name only, not to the names a CNAME chain reaches.
func (s *Server) SetFault(name string, qtype uint16, f Fault) {
	s.SetFaultOn("", name, qtype, f)
}

// SetFaultOn is SetFault for one transport (UDP or TCP; "" for both). A
// setting for a transport wins over one for both at the same name and type;
// a setting for the type wins over one for every type.
func (s *Server) SetFaultOn(transport, name string, qtype uint16, f Fault) {
	k := faultKey{nameType{dns.CanonicalName(name), qtype}, transport}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == NoFault {
		delete(s.faults, k)
	} else {
		s.faults[k] = f
	}
}

// Hold makes queries for name and qtype (0: every type) wait before they
// are answered, until release is called or the server stops. Queries that
// arrive after release are answered at once. Release is idempotent.
func (s *Server) Hold(name string, qtype uint16) (release func()) {
	k := nameType{dns.CanonicalName(name), qtype}
	ch := make(chan struct{})
	s.mu.Lock()
	s.holds[k] = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.holds[k] == ch {
				delete(s.holds, k)
			}
			s.mu.Unlock()
			close(ch)
		})
	}
}

// SetAuthenticatedData sets the AD bit (RFC 4035 §3.2.3) on every reply,
// except for names given their own setting with SetAuthenticatedDataFor.
func (s *Server) SetAuthenticatedData(on bool) {
	s.mu.Lock()
	s.adAll = on
	s.mu.Unlock()
}

// SetAuthenticatedDataFor sets the AD bit on replies to queries for name,
// overriding SetAuthenticatedData.
func (s *Server) SetAuthenticatedDataFor(name string, on bool) {
	s.mu.Lock()
	s.adName[dns.CanonicalName(name)] = on
	s.mu.Unlock()
}

// SetChaseCNAME chooses whether the server follows CNAMEs in its own data
// (true, the default) or answers with the first CNAME alone.
func (s *Server) SetChaseCNAME(on bool) {
	s.mu.Lock()
	s.noChase = !on
	s.mu.Unlock()
}

// SetRejectEDNS0 makes the server behave like one that predates EDNS
// (RFC 6891 §7): a query with an OPT record gets FORMERR without one.
func (s *Server) SetRejectEDNS0(on bool) {
	s.mu.Lock()
	s.noEDNS = on
	s.mu.Unlock()
}

// Received returns how many queries were received for name, qtype and
// transport. An empty name, a zero qtype and an empty transport match any.
func (s *Server) Received(name string, qtype uint16, transport string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sum(s.received, name, qtype, transport)
}

// Answered is like Received but counts only the queries replied to; a reply
// is counted before it is sent, so a client that has it sees it counted.
// Silenced queries and queries dropped while held are not answered.
func (s *Server) Answered(name string, qtype uint16, transport string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sum(s.answered, name, qtype, transport)
}

func sum(m map[countKey]int, name string, qtype uint16, transport string) int {
	if name != "" {
		name = dns.CanonicalName(name)
	}
	n := 0
	for k, c := range m {
		if (name == "" || k.name == name) && (qtype == 0 || k.qtype == qtype) &&
			(transport == "" || k.transport == transport) {
			n += c
		}
	}
	return n
}

// ResetCounts sets every count to zero.
func (s *Server) ResetCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.received)
	clear(s.answered)
	s.notifyLocked()
}

// ErrWaitEnded is returned by WaitReceived when its context ends first.
var ErrWaitEnded = errors.New("dnstest: wait ended before the queries arrived")

// WaitReceived waits until at least n queries matching name, qtype and
// transport (as for Received) have been received, or ctx ends.
func (s *Server) WaitReceived(ctx context.Context, name string, qtype uint16, transport string, n int) error {
	for {
		s.mu.Lock()
		got := sum(s.received, name, qtype, transport)
		ch := s.changed
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: %d of %d: %w", ErrWaitEnded, got, n, ctx.Err())
		}
	}
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func transportOf(w dns.ResponseWriter) string {
	if _, ok := w.LocalAddr().(*net.TCPAddr); ok {
		return TCP
	}
	return UDP
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		resp := new(dns.Msg)
		resp.SetRcodeFormatError(req)
		_ = w.WriteMsg(resp)
		return
	}
	transport := transportOf(w)
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	key := countKey{name, q.Qtype, transport}

	s.mu.Lock()
	s.received[key]++
	s.notifyLocked()
	hold := s.holds[nameType{name, q.Qtype}]
	if hold == nil {
		hold = s.holds[nameType{name, 0}]
	}
	s.mu.Unlock()

	if hold != nil {
		select {
		case <-hold:
		case <-s.stopped:
			return
		}
	}

	resp := s.reply(req, name, q.Qtype, transport)
	if resp == nil {
		return
	}
	if transport == UDP {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
		resp.Truncate(size)
	}
	// Count before writing, so that a client that has the reply always
	// sees it counted.
	s.mu.Lock()
	s.answered[key]++
	s.notifyLocked()
	s.mu.Unlock()
	if err := w.WriteMsg(resp); err != nil {
		s.mu.Lock()
		s.answered[key]--
		s.notifyLocked()
		s.mu.Unlock()
	}
}

// reply builds the reply to a query, or returns nil for silence.
func (s *Server) reply(req *dns.Msg, name string, qtype uint16, transport string) *dns.Msg {
	s.mu.Lock()
	defer s.mu.Unlock()

	var fault Fault
	for _, k := range [...]faultKey{
		{nameType{name, qtype}, transport}, {nameType{name, qtype}, ""},
		{nameType{name, 0}, transport}, {nameType{name, 0}, ""},
	} {
		if f, ok := s.faults[k]; ok {
			fault = f
			break
		}
	}
	if fault == Silence {
		return nil
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = false
	resp.RecursionAvailable = true
	resp.AuthenticatedData = s.adAll
	if ad, ok := s.adName[name]; ok {
		resp.AuthenticatedData = ad
	}
	if opt := req.IsEdns0(); opt != nil {
		if s.noEDNS {
			resp.Rcode = dns.RcodeFormatError
			return resp
		}
		resp.SetEdns0(min(max(opt.UDPSize(), dns.MinMsgSize), 4096), false)
	}

	switch fault {
	case NXDomain:
		resp.Rcode = dns.RcodeNameError
		resp.Ns = s.soaLocked(name)
		return resp
	case ServFail:
		resp.Rcode = dns.RcodeServerFailure
		return resp
	case Refused:
		resp.Rcode = dns.RcodeRefused
		return resp
	}

	cur := name
	seen := map[string]bool{cur: true}
	for range maxChase {
		rrs := s.records[cur]
		var cname *dns.CNAME
		if qtype != dns.TypeCNAME && qtype != dns.TypeANY {
			for _, rr := range rrs {
				if c, ok := rr.(*dns.CNAME); ok {
					cname = c
					break
				}
			}
		}
		if cname != nil {
			resp.Answer = append(resp.Answer, dns.Copy(cname))
			next := dns.CanonicalName(cname.Target)
			if s.noChase || seen[next] {
				break
			}
			seen[next] = true
			cur = next
			continue
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype == qtype || qtype == dns.TypeANY {
				resp.Answer = append(resp.Answer, dns.Copy(rr))
			}
		}
		if len(rrs) == 0 && !s.existsLocked(cur) {
			resp.Rcode = dns.RcodeNameError
		}
		if len(resp.Answer) == 0 || resp.Rcode == dns.RcodeNameError ||
			resp.Answer[len(resp.Answer)-1].Header().Rrtype == dns.TypeCNAME {
			resp.Ns = s.soaLocked(cur)
		}
		break
	}

	if fault == Truncate && transport == UDP {
		resp.Answer = resp.Answer[:len(resp.Answer)/2]
		resp.Ns = nil
		resp.Truncated = true
	}
	return resp
}

// existsLocked reports whether name owns records or is an empty
// non-terminal (RFC 8020: NXDOMAIN means nothing exists below either).
func (s *Server) existsLocked(name string) bool {
	if len(s.records[name]) > 0 {
		return true
	}
	for owner := range s.records {
		if owner != name && dns.IsSubDomain(name, owner) {
			return true
		}
	}
	return false
}

// soaLocked returns the SOA of the closest enclosing zone of name, if any.
func (s *Server) soaLocked(name string) []dns.RR {
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		for _, rr := range s.records[name[off:]] {
			if rr.Header().Rrtype == dns.TypeSOA {
				return []dns.RR{dns.Copy(rr)}
			}
		}
	}
	for _, rr := range s.records["."] {
		if rr.Header().Rrtype == dns.TypeSOA {
			return []dns.RR{dns.Copy(rr)}
		}
	}
	return nil
}
