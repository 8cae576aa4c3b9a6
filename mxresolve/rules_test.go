package mxresolve

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/hamail/hamail/internal/dnstest"
	"github.com/miekg/dns"
)

func TestCNAMEAtTheDomain(t *testing.T) {
	t.Parallel()
	for _, chase := range []bool{true, false} {
		t.Run(fmt.Sprintf("server chases %v", chase), func(t *testing.T) {
			t.Parallel()
			s := dnstest.Start(t)
			s.SetChaseCNAME(chase)
			s.AddCNAME("alias.example.com", 300, "mid.example.net")
			s.AddCNAME("mid.example.net", 300, "real.example.org")
			s.AddMX("real.example.org", 300, 10, "mx.example.org")
			s.AddA("mx.example.org", 300, "192.0.2.1")
			r := newResolver(t, nil, s)
			res := resolve(t, r, "alias.example.com")
			if res.Domain != "alias.example.com" || !slices.Equal(res.CNAME, []string{"mid.example.net", "real.example.org"}) {
				t.Fatalf("domain %q, CNAME %v", res.Domain, res.CNAME)
			}
			if !slices.Equal(hostNames(res), []string{"mx.example.org"}) {
				t.Fatalf("hosts %v", hostNames(res))
			}
		})
	}
}

func TestCNAMELoop(t *testing.T) {
	t.Parallel()
	for _, chase := range []bool{true, false} {
		t.Run(fmt.Sprintf("server chases %v", chase), func(t *testing.T) {
			t.Parallel()
			s := dnstest.Start(t)
			s.SetChaseCNAME(chase)
			s.AddCNAME("a.example.com", 300, "b.example.com")
			s.AddCNAME("b.example.com", 300, "c.example.com")
			s.AddCNAME("c.example.com", 300, "a.example.com")
			r := newResolver(t, nil, s)
			wantCode(t, resolveErr(t, r, "a.example.com"), 451, [3]int{4, 4, 3}, ErrCNAMELoop)
			// Bounded: without chasing, one query per link until the loop
			// shows.
			if n := s.Received("", dns.TypeMX, ""); n > 3 {
				t.Fatalf("%d queries for a 3-link loop", n)
			}
		})
	}
}

func TestLongCNAMEChain(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.SetChaseCNAME(false)
	for i := range 12 {
		s.AddCNAME(fmt.Sprintf("c%d.example.com", i), 300, fmt.Sprintf("c%d.example.com", i+1))
	}
	s.AddMX("c12.example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1")
	r := newResolver(t, nil, s)
	wantCode(t, resolveErr(t, r, "c0.example.com"), 451, [3]int{4, 4, 3}, ErrCNAMELoop)
	if n := s.Received("", dns.TypeMX, ""); n > maxCNAME+1 {
		t.Fatalf("%d queries, want at most %d", n, maxCNAME+1)
	}
	// A chain within the bound works.
	res := resolve(t, r, "c5.example.com")
	if len(res.CNAME) != 7 || res.CNAME[6] != "c12.example.com" {
		t.Fatalf("CNAME %v", res.CNAME)
	}
}

func TestCNAMEAtTheDomainWithoutMX(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddSOA("example.org", 3600, 60)
	s.AddCNAME("alias.example.com", 300, "host.example.org")
	s.AddA("host.example.org", 300, "192.0.2.5")
	r := newResolver(t, &Options{AddressPolicy: IPv4Only}, s)
	res := resolve(t, r, "alias.example.com")
	if !res.Implicit || len(res.Hosts) != 1 {
		t.Fatalf("result %+v", res)
	}
	h := res.Hosts[0]
	if h.Name != "alias.example.com" || h.CNAME != "host.example.org" || !slices.Equal(h.Addrs, addrs("192.0.2.5")) {
		t.Fatalf("host %+v", h)
	}
}

func TestMXTargetThatIsAnAlias(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddCNAME("mx.example.com", 300, "real-mx.example.net")
	s.AddA("real-mx.example.net", 300, "192.0.2.8")
	s.AddAAAA("real-mx.example.net", 300, "2001:db8::8")
	r := newResolver(t, nil, s)
	res := resolve(t, r, "example.com")
	h := res.Hosts[0]
	if h.Name != "mx.example.com" || h.CNAME != "real-mx.example.net" || len(h.Addrs) != 2 {
		t.Fatalf("host %+v", h)
	}
}

func TestMXTargetThatIsAnAddressIsSkipped(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "192.0.2.1")
	s.AddMX("example.com", 300, 20, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.2")
	s.AddMX("literal.example.com", 300, 10, "192.0.2.1")
	r := newResolver(t, nil, s)
	res := resolve(t, r, "example.com")
	if !slices.Equal(hostNames(res), []string{"mx.example.com"}) {
		t.Fatalf("hosts %v", hostNames(res))
	}
	wantCode(t, resolveErr(t, r, "literal.example.com"), 550, [3]int{5, 4, 4}, ErrNoAddress)
	if n := s.Received("192.0.2.1", 0, ""); n != 0 {
		t.Fatalf("address literal looked up (%d queries)", n)
	}
}

func TestDuplicateMXTargetsKeepTheBestPreference(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 30, "mx1.example.com")
	s.AddMX("example.com", 300, 10, "MX1.example.com")
	s.AddMX("example.com", 300, 20, "mx2.example.com")
	s.AddA("mx1.example.com", 300, "192.0.2.1")
	s.AddA("mx2.example.com", 300, "192.0.2.2")
	r := newResolver(t, nil, s)
	res := resolve(t, r, "example.com")
	if !slices.Equal(hostNames(res), []string{"mx1.example.com", "mx2.example.com"}) || res.Hosts[0].Preference != 10 {
		t.Fatalf("hosts %+v", res.Hosts)
	}
}

func localZone(s *dnstest.Server) {
	s.AddMX("example.com", 300, 10, "mx1.example.com")
	s.AddMX("example.com", 300, 20, "self.example.net")
	s.AddMX("example.com", 300, 20, "peer.example.com")
	s.AddMX("example.com", 300, 30, "backup.example.com")
	s.AddA("mx1.example.com", 300, "192.0.2.1")
	s.AddA("self.example.net", 300, "198.51.100.25")
	s.AddA("peer.example.com", 300, "192.0.2.20")
	s.AddA("backup.example.com", 300, "192.0.2.30")
}

func TestOwnNameRemovesEqualAndWorsePreferences(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	localZone(s)
	s.AddMX("backup-only.example.com", 300, 10, "self.example.net")
	s.AddMX("backup-only.example.com", 300, 20, "backup.example.com")
	r := newResolver(t, &Options{LocalNames: []string{"SELF.example.net."}, AddressPolicy: IPv4Only}, s)

	res := resolve(t, r, "example.com")
	if !slices.Equal(hostNames(res), []string{"mx1.example.com"}) {
		t.Fatalf("hosts %v: peer.example.com (equal) and backup.example.com (worse) must go", hostNames(res))
	}
	// Worse exchangers are not even looked up.
	if n := s.Received("backup.example.com", 0, ""); n != 0 {
		t.Fatalf("backup.example.com looked up %d times", n)
	}
	// The best exchanger is this host: nothing is left.
	wantCode(t, resolveErr(t, r, "backup-only.example.com"), 550, [3]int{5, 4, 6}, ErrLoopsBack)
}

func TestOwnAddressRemovesEqualAndWorsePreferences(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	localZone(s)
	s.AddA("self.example.com", 300, "198.51.100.25")
	r := newResolver(t, &Options{LocalAddrs: []netip.Addr{netip.MustParseAddr("198.51.100.25")}}, s)
	res := resolve(t, r, "example.com")
	if !slices.Equal(hostNames(res), []string{"mx1.example.com"}) {
		t.Fatalf("hosts %v", hostNames(res))
	}
	// Implicit MX pointing at this host.
	wantCode(t, resolveErr(t, r, "self.example.com"), 550, [3]int{5, 4, 6}, ErrLoopsBack)
}

func TestHostAndAddressLimits(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	for i := range 8 {
		h := fmt.Sprintf("mx%d.example.com", i)
		s.AddMX("example.com", 300, uint16(10*(i+1)), h)
		s.AddA(h, 300, fmt.Sprintf("192.0.2.%d", 10*i+1), fmt.Sprintf("192.0.2.%d", 10*i+2), fmt.Sprintf("192.0.2.%d", 10*i+3))
	}
	// Defaults: 5 hosts, 10 addresses in order (3+3+3+1).
	r := newResolver(t, &Options{AddressPolicy: IPv4Only}, s)
	res := resolve(t, r, "example.com")
	var counts []int
	for _, h := range res.Hosts {
		counts = append(counts, len(h.Addrs))
	}
	if !slices.Equal(counts, []int{3, 3, 3, 1}) || res.Hosts[3].Addrs[0] != netip.MustParseAddr("192.0.2.31") {
		t.Fatalf("addresses per host %v (%+v)", counts, res.Hosts)
	}
	// Hosts beyond the limit and their group are not looked up.
	if n := s.Received("mx5.example.com", 0, ""); n != 0 {
		t.Fatalf("mx5 looked up %d times with MaxHosts 5", n)
	}
	r = newResolver(t, &Options{AddressPolicy: IPv4Only, MaxHosts: 2, MaxAddrs: -1}, s)
	res = resolve(t, r, "example.com")
	if len(res.Hosts) != 2 || len(res.Hosts[1].Addrs) != 3 {
		t.Fatalf("MaxHosts 2: %+v", res.Hosts)
	}
	r = newResolver(t, &Options{AddressPolicy: IPv4Only, MaxHosts: -1, MaxAddrs: -1}, s)
	if res = resolve(t, r, "example.com"); len(res.Hosts) != 8 {
		t.Fatalf("no limits: %d hosts", len(res.Hosts))
	}
}

func TestHostLimitKeepsTheShuffleFairAcrossTheBoundary(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	for _, h := range []string{"a", "b", "c", "d"} {
		s.AddMX("example.com", 300, 10, h+".example.com")
		s.AddA(h+".example.com", 300, "192.0.2.1")
	}
	r := newResolver(t, &Options{MaxHosts: 2, AddressPolicy: IPv4Only}, s)
	seen := map[string]bool{}
	for range 200 {
		res := resolve(t, r, "example.com")
		if len(res.Hosts) != 2 {
			t.Fatalf("%d hosts", len(res.Hosts))
		}
		for _, h := range res.Hosts {
			seen[h.Name] = true
		}
	}
	if len(seen) != 4 {
		t.Fatalf("only %v ever returned with MaxHosts 2 out of 4 equal hosts", seen)
	}
}

func TestAddressPolicies(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1", "192.0.2.2", "192.0.2.3")
	s.AddAAAA("mx.example.com", 300, "2001:db8::1", "2001:db8::2")
	for _, tc := range []struct {
		policy AddressPolicy
		want   []string
		types  []uint16
	}{
		{Interleave, []string{"2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2", "192.0.2.3"}, []uint16{dns.TypeA, dns.TypeAAAA}},
		{PreferIPv6, []string{"2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2", "192.0.2.3"}, []uint16{dns.TypeA, dns.TypeAAAA}},
		{PreferIPv4, []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "2001:db8::2"}, []uint16{dns.TypeA, dns.TypeAAAA}},
		{IPv4Only, []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}, []uint16{dns.TypeA}},
		{IPv6Only, []string{"2001:db8::1", "2001:db8::2"}, []uint16{dns.TypeAAAA}},
	} {
		s.ResetCounts()
		r := newResolver(t, &Options{AddressPolicy: tc.policy}, s)
		res := resolve(t, r, "example.com")
		if got := res.Hosts[0].Addrs; !slices.Equal(got, addrs(tc.want...)) {
			t.Errorf("%v: %v, want %v", tc.policy, got, tc.want)
		}
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			asked := s.Received("mx.example.com", qt, "") > 0
			if asked != slices.Contains(tc.types, qt) {
				t.Errorf("%v: %s asked = %v", tc.policy, dns.TypeToString[qt], asked)
			}
		}
	}
}

func TestAuthenticatedData(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1")
	s.AddMX("example.org", 300, 10, "mx.example.org")
	s.AddA("mx.example.org", 300, "192.0.2.2")
	s.SetAuthenticatedData(true)
	// One answer without AD makes the whole result unauthenticated.
	s.SetAuthenticatedDataFor("mx.example.org", false)
	r := newResolver(t, &Options{AddressPolicy: IPv4Only}, s)
	if res := resolve(t, r, "example.com"); !res.AuthenticatedData {
		t.Error("AD not reported when every answer had it")
	}
	if res := resolve(t, r, "example.org"); res.AuthenticatedData {
		t.Error("AD reported though the address answer lacked it")
	}
	s2 := dnstest.Start(t)
	s2.AddMX("example.com", 300, 10, "mx.example.com")
	s2.AddA("mx.example.com", 300, "192.0.2.1")
	r2 := newResolver(t, &Options{AddressPolicy: IPv4Only}, s2)
	if res := resolve(t, r2, "example.com"); res.AuthenticatedData {
		t.Error("AD reported by default")
	}
}

func TestInternationalizedDomain(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("xn--bcher-kva.example", 300, 10, "mx.xn--bcher-kva.example")
	s.AddA("mx.xn--bcher-kva.example", 300, "192.0.2.1")
	r := newResolver(t, &Options{AddressPolicy: IPv4Only}, s)
	res := resolve(t, r, "XN--bcher-kva.example")
	if res.Domain != "xn--bcher-kva.example" || !slices.Equal(hostNames(res), []string{"mx.xn--bcher-kva.example"}) {
		t.Fatalf("result %+v", res)
	}
	// U-labels are refused with a clear error rather than sent as bytes.
	wantCode(t, resolveErr(t, r, "bücher.example"), 550, [3]int{5, 1, 2}, ErrInvalidDomain)
	if n := s.Received("", 0, ""); n != 2 {
		t.Fatalf("%d queries, want 2 (MX and A of the A-label domain only)", n)
	}
}
