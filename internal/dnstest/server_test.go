package dnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func query(t *testing.T, addr, network, name string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	r, err := tryQuery(context.Background(), addr, network, name, qtype, edns, 5*time.Second)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return r
}

func tryQuery(ctx context.Context, addr, network, name string, qtype uint16, edns bool, timeout time.Duration) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	c := &dns.Client{Net: network, Timeout: timeout}
	r, _, err := c.ExchangeContext(ctx, m, addr)
	return r, err
}

func TestRecordsOfEveryType(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddMX("example.com", 300, 10, "mx1.example.com")
	s.AddMX("example.com", 300, 20, "mx2.example.com")
	s.AddA("mx1.example.com", 60, "192.0.2.1", "192.0.2.2")
	s.AddAAAA("mx1.example.com", 61, "2001:db8::1")
	s.AddCNAME("www.example.com", 62, "example.com")
	s.AddTXT("example.com", 63, "v=spf1 -all")
	s.AddTLSA("_25._tcp.mx1.example.com", 64, 3, 1, 1, "abcdef0123")
	s.AddText("example.net. 65 IN MX 0 .")

	for _, tc := range []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"example.com", dns.TypeMX, []string{
			"example.com.\t300\tIN\tMX\t10 mx1.example.com.",
			"example.com.\t300\tIN\tMX\t20 mx2.example.com."}},
		{"MX1.Example.COM", dns.TypeA, []string{
			"mx1.example.com.\t60\tIN\tA\t192.0.2.1",
			"mx1.example.com.\t60\tIN\tA\t192.0.2.2"}},
		{"mx1.example.com", dns.TypeAAAA, []string{"mx1.example.com.\t61\tIN\tAAAA\t2001:db8::1"}},
		{"www.example.com", dns.TypeCNAME, []string{"www.example.com.\t62\tIN\tCNAME\texample.com."}},
		{"example.com", dns.TypeTXT, []string{"example.com.\t63\tIN\tTXT\t\"v=spf1 -all\""}},
		{"_25._tcp.mx1.example.com", dns.TypeTLSA, []string{"_25._tcp.mx1.example.com.\t64\tIN\tTLSA\t3 1 1 abcdef0123"}},
		{"example.net", dns.TypeMX, []string{"example.net.\t65\tIN\tMX\t0 ."}},
	} {
		for _, network := range []string{UDP, TCP} {
			r := query(t, s.Addr(), network, tc.name, tc.qtype, false)
			if r.Rcode != dns.RcodeSuccess || !r.RecursionAvailable || r.Authoritative || r.Truncated {
				t.Errorf("%s %s: header %+v", network, tc.name, r.MsgHdr)
			}
			if len(r.Answer) != len(tc.want) {
				t.Fatalf("%s %s: answer %v, want %v", network, tc.name, r.Answer, tc.want)
			}
			for i, rr := range r.Answer {
				if rr.String() != tc.want[i] {
					t.Errorf("%s %s: answer[%d] = %q, want %q", network, tc.name, i, rr.String(), tc.want[i])
				}
			}
		}
	}
}

func TestNegativeAnswersCarrySOA(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddSOA("example.com", 3600, 300)
	s.AddA("mx.example.com", 60, "192.0.2.1")
	s.AddA("a.b.example.org", 60, "192.0.2.2")

	// NODATA: the name exists, not the type.
	r := query(t, s.Addr(), UDP, "mx.example.com", dns.TypeMX, false)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Fatalf("NODATA: %v", r)
	}
	if soa, ok := r.Ns[0].(*dns.SOA); !ok || soa.Minttl != 300 || soa.Hdr.Ttl != 3600 || soa.Hdr.Name != "example.com." {
		t.Fatalf("NODATA authority: %v", r.Ns)
	}
	// NXDOMAIN: nothing at or below the name.
	r = query(t, s.Addr(), UDP, "nope.example.com", dns.TypeMX, false)
	if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Fatalf("NXDOMAIN: %v", r)
	}
	// An empty non-terminal exists (RFC 8020), and a zone without SOA has
	// none in the authority section.
	r = query(t, s.Addr(), UDP, "b.example.org", dns.TypeA, false)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 0 {
		t.Fatalf("empty non-terminal: %v", r)
	}
	// Removing the records makes the name disappear.
	s.Remove("mx.example.com", dns.TypeA)
	if r = query(t, s.Addr(), UDP, "mx.example.com", dns.TypeA, false); r.Rcode != dns.RcodeNameError {
		t.Fatalf("after Remove: %v", r)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddSOA("example.com", 3600, 300)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("example.com", 300, "192.0.2.1")

	for _, tc := range []struct {
		fault Fault
		rcode int
	}{{NXDomain, dns.RcodeNameError}, {ServFail, dns.RcodeServerFailure}, {Refused, dns.RcodeRefused}} {
		s.SetFault("example.com", 0, tc.fault)
		for _, network := range []string{UDP, TCP} {
			for _, qt := range []uint16{dns.TypeMX, dns.TypeA} {
				r := query(t, s.Addr(), network, "example.com", qt, false)
				if r.Rcode != tc.rcode || len(r.Answer) != 0 || !r.RecursionAvailable {
					t.Errorf("%v over %s for %s: %v", tc.fault, network, dns.TypeToString[qt], r)
				}
			}
		}
	}
	// A per-type fault wins over the per-name one; NoFault clears.
	s.SetFault("example.com", 0, ServFail)
	s.SetFault("example.com", dns.TypeA, Refused)
	if r := query(t, s.Addr(), UDP, "example.com", dns.TypeA, false); r.Rcode != dns.RcodeRefused {
		t.Errorf("per-type fault: %v", dns.RcodeToString[r.Rcode])
	}
	if r := query(t, s.Addr(), UDP, "example.com", dns.TypeMX, false); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("per-name fault: %v", dns.RcodeToString[r.Rcode])
	}
	s.SetFault("example.com", 0, NoFault)
	s.SetFault("example.com", dns.TypeA, NoFault)
	if r := query(t, s.Addr(), UDP, "example.com", dns.TypeMX, false); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("after clearing: %v", r)
	}
}

func TestSilenceMakesTheClientTimeOut(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.SetFault("example.com", dns.TypeMX, Silence)
	for _, network := range []string{UDP, TCP} {
		_, err := tryQuery(context.Background(), s.Addr(), network, "example.com", dns.TypeMX, false, 200*time.Millisecond)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("%s: err = %v, want a timeout", network, err)
		}
		if got := s.Received("example.com", dns.TypeMX, network); got != 1 {
			t.Errorf("%s: received %d, want 1", network, got)
		}
	}
	if got := s.Answered("", 0, ""); got != 0 {
		t.Errorf("answered %d, want 0", got)
	}
}

func TestTruncateForcesTCP(t *testing.T) {
	t.Parallel()
	s := Start(t)
	for i := range 4 {
		s.AddMX("example.com", 300, uint16(10*i), fmt.Sprintf("mx%d.example.com", i))
	}
	s.SetFault("example.com", dns.TypeMX, Truncate)
	r := query(t, s.Addr(), UDP, "example.com", dns.TypeMX, true)
	if !r.Truncated || len(r.Answer) != 2 {
		t.Fatalf("UDP: TC=%v with %d records, want TC with 2", r.Truncated, len(r.Answer))
	}
	r = query(t, s.Addr(), TCP, "example.com", dns.TypeMX, true)
	if r.Truncated || len(r.Answer) != 4 {
		t.Fatalf("TCP: TC=%v with %d records, want 4 without TC", r.Truncated, len(r.Answer))
	}
}

func TestLargeAnswersAreTruncatedToTheClientBuffer(t *testing.T) {
	t.Parallel()
	s := Start(t)
	// 30 MX records of ~34 bytes each when compressed: more than 512, less
	// than 1232.
	for i := range 30 {
		s.AddMX("example.com", 300, uint16(i), fmt.Sprintf("mail-exchanger-%02d.example.com", i))
	}
	r := query(t, s.Addr(), UDP, "example.com", dns.TypeMX, false)
	if !r.Truncated || len(r.Answer) >= 30 {
		t.Fatalf("without EDNS0: TC=%v, %d records", r.Truncated, len(r.Answer))
	}
	r = query(t, s.Addr(), UDP, "example.com", dns.TypeMX, true)
	if r.Truncated || len(r.Answer) != 30 || r.IsEdns0() == nil {
		t.Fatalf("with EDNS0 1232: TC=%v, %d records, OPT %v", r.Truncated, len(r.Answer), r.IsEdns0())
	}
	r = query(t, s.Addr(), TCP, "example.com", dns.TypeMX, false)
	if r.Truncated || len(r.Answer) != 30 {
		t.Fatalf("TCP: TC=%v, %d records", r.Truncated, len(r.Answer))
	}
}

func TestAuthenticatedData(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddA("a.example.com", 60, "192.0.2.1")
	s.AddA("b.example.com", 60, "192.0.2.2")
	if r := query(t, s.Addr(), UDP, "a.example.com", dns.TypeA, false); r.AuthenticatedData {
		t.Error("AD set by default")
	}
	s.SetAuthenticatedData(true)
	s.SetAuthenticatedDataFor("b.example.com", false)
	if r := query(t, s.Addr(), UDP, "a.example.com", dns.TypeA, false); !r.AuthenticatedData {
		t.Error("AD not set after SetAuthenticatedData(true)")
	}
	if r := query(t, s.Addr(), TCP, "b.example.com", dns.TypeA, false); r.AuthenticatedData {
		t.Error("AD set for a name overridden to false")
	}
}

func TestCNAMEChasing(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddCNAME("alias.example.com", 60, "mid.example.com")
	s.AddCNAME("mid.example.com", 60, "example.com")
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddCNAME("loop1.example.com", 60, "loop2.example.com")
	s.AddCNAME("loop2.example.com", 60, "loop1.example.com")
	s.AddCNAME("dangling.example.com", 60, "gone.example.net")

	r := query(t, s.Addr(), UDP, "alias.example.com", dns.TypeMX, false)
	if len(r.Answer) != 3 || r.Answer[2].Header().Rrtype != dns.TypeMX {
		t.Fatalf("chain: %v", r.Answer)
	}
	r = query(t, s.Addr(), UDP, "loop1.example.com", dns.TypeMX, false)
	if len(r.Answer) != 2 || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("loop: rcode %s, %v", dns.RcodeToString[r.Rcode], r.Answer)
	}
	r = query(t, s.Addr(), UDP, "dangling.example.com", dns.TypeMX, false)
	if len(r.Answer) != 1 || r.Rcode != dns.RcodeNameError {
		t.Fatalf("dangling: rcode %s, %v", dns.RcodeToString[r.Rcode], r.Answer)
	}
	s.SetChaseCNAME(false)
	r = query(t, s.Addr(), UDP, "alias.example.com", dns.TypeMX, false)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.CNAME).Target != "mid.example.com." {
		t.Fatalf("no chase: %v", r.Answer)
	}
}

func TestCounts(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1")
	query(t, s.Addr(), UDP, "example.com", dns.TypeMX, false)
	query(t, s.Addr(), UDP, "example.com", dns.TypeMX, false)
	query(t, s.Addr(), TCP, "example.com", dns.TypeMX, false)
	query(t, s.Addr(), TCP, "mx.example.com", dns.TypeA, false)
	query(t, s.Addr(), UDP, "EXAMPLE.com", dns.TypeA, false)

	for _, tc := range []struct {
		name      string
		qtype     uint16
		transport string
		want      int
	}{
		{"", 0, "", 5},
		{"example.com", 0, "", 4},
		{"example.com.", dns.TypeMX, "", 3},
		{"example.com", dns.TypeMX, UDP, 2},
		{"example.com", dns.TypeMX, TCP, 1},
		{"", dns.TypeA, "", 2},
		{"", 0, TCP, 2},
		{"mx.example.com", dns.TypeMX, "", 0},
	} {
		if got := s.Answered(tc.name, tc.qtype, tc.transport); got != tc.want {
			t.Errorf("Answered(%q, %s, %q) = %d, want %d", tc.name, dns.TypeToString[tc.qtype], tc.transport, got, tc.want)
		}
		if got := s.Received(tc.name, tc.qtype, tc.transport); got != tc.want {
			t.Errorf("Received(%q, %s, %q) = %d, want %d", tc.name, dns.TypeToString[tc.qtype], tc.transport, got, tc.want)
		}
	}
	s.ResetCounts()
	if got := s.Received("", 0, ""); got != 0 {
		t.Errorf("after reset: %d", got)
	}
}

func TestHoldDelaysAnswersUntilRelease(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	release := s.Hold("example.com", dns.TypeMX)

	const n = 5
	results := make(chan error, n)
	for range n {
		go func() {
			r, err := tryQuery(context.Background(), s.Addr(), UDP, "example.com", dns.TypeMX, false, 10*time.Second)
			if err == nil && len(r.Answer) != 1 {
				err = fmt.Errorf("answer %v", r.Answer)
			}
			results <- err
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReceived(ctx, "example.com", dns.TypeMX, UDP, n); err != nil {
		t.Fatal(err)
	}
	if got := s.Answered("", 0, ""); got != 0 {
		t.Fatalf("answered %d while held", got)
	}
	release()
	release()
	for range n {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Answered("example.com", dns.TypeMX, UDP); got != n {
		t.Fatalf("answered %d, want %d", got, n)
	}
	// WaitReceived gives up when its context ends.
	short, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if err := s.WaitReceived(short, "other.example", 0, "", 1); !errors.Is(err, ErrWaitEnded) {
		t.Fatalf("WaitReceived = %v", err)
	}
}

func TestCloseStopsServing(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddA("example.com", 60, "192.0.2.1")
	release := s.Hold("held.example.com", 0)
	defer release()
	go tryQuery(context.Background(), s.Addr(), TCP, "held.example.com", dns.TypeA, false, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReceived(ctx, "held.example.com", 0, "", 1); err != nil {
		t.Fatal(err)
	}
	s.Close() // must not wait for the held query
	s.Close()
	if _, err := tryQuery(context.Background(), s.Addr(), TCP, "example.com", dns.TypeA, false, time.Second); err == nil {
		t.Fatal("TCP query answered after Close")
	}
}

func TestConcurrentProgrammingAndQueries(t *testing.T) {
	t.Parallel()
	s := Start(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 25 {
				name := fmt.Sprintf("h%d-%d.example.com", i, j)
				s.AddA(name, 60, "192.0.2.1")
				s.SetFault(name, dns.TypeAAAA, ServFail)
				s.SetAuthenticatedDataFor(name, j%2 == 0)
				r, err := tryQuery(context.Background(), s.Addr(), UDP, name, dns.TypeA, true, 5*time.Second)
				if err != nil || len(r.Answer) != 1 {
					t.Errorf("%s: %v %v", name, err, r)
					return
				}
				s.Remove(name, 0)
			}
		})
	}
	wg.Wait()
	if got := s.Answered("", dns.TypeA, UDP); got != 100 {
		t.Fatalf("answered %d, want 100", got)
	}
}

func TestFaultPerTransport(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddMX("example.com", 300, 10, "mx1.example.com")
	s.AddMX("example.com", 300, 20, "mx2.example.com")
	s.SetFault("example.com", 0, Truncate)
	s.SetFaultOn(TCP, "example.com", 0, Silence)
	r := query(t, s.Addr(), UDP, "example.com", dns.TypeMX, false)
	if !r.Truncated || len(r.Answer) != 1 {
		t.Fatalf("UDP: TC=%v, %d records", r.Truncated, len(r.Answer))
	}
	_, err := tryQuery(context.Background(), s.Addr(), TCP, "example.com", dns.TypeMX, false, 200*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("TCP: err = %v, want a timeout", err)
	}
	// The per-transport setting wins only on its transport; clearing it
	// restores the per-name one.
	s.SetFaultOn(UDP, "example.com", dns.TypeMX, ServFail)
	if r := query(t, s.Addr(), UDP, "example.com", dns.TypeMX, false); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("UDP per-type per-transport: %s", dns.RcodeToString[r.Rcode])
	}
	s.SetFaultOn(UDP, "example.com", dns.TypeMX, NoFault)
	s.SetFaultOn(TCP, "example.com", 0, NoFault)
	if r := query(t, s.Addr(), TCP, "example.com", dns.TypeMX, false); r.Truncated || len(r.Answer) != 2 {
		t.Fatalf("TCP after clearing: TC=%v, %d records", r.Truncated, len(r.Answer))
	}
}

func TestRejectEDNS0(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.AddA("example.com", 60, "192.0.2.1")
	s.SetRejectEDNS0(true)
	r := query(t, s.Addr(), UDP, "example.com", dns.TypeA, true)
	if r.Rcode != dns.RcodeFormatError || r.IsEdns0() != nil || len(r.Answer) != 0 {
		t.Fatalf("with EDNS0: %v", r)
	}
	if r = query(t, s.Addr(), UDP, "example.com", dns.TypeA, false); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("without EDNS0: %v", r)
	}
}
