package mxresolve

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzAnswer feeds arbitrary DNS replies through the answer handling:
// parseAnswer for every query type used, then a whole Resolve where every
// query gets that reply. Nothing may panic, CNAME chains stay bounded, and
// Resolve either returns hosts with addresses or a classified *Error.
func FuzzAnswer(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := new(dns.Msg)
		if err := m.Unpack(data); err != nil {
			return
		}
		qname := "example.com."
		if len(m.Question) > 0 {
			if _, ok := dns.IsDomainName(m.Question[0].Name); ok {
				qname = dns.CanonicalName(m.Question[0].Name)
			}
		}
		for _, qt := range []uint16{dns.TypeMX, dns.TypeA, dns.TypeAAAA} {
			a, err := parseAnswer(m, qname, qt)
			if err != nil {
				continue
			}
			if len(a.chain) > maxCNAME {
				t.Fatalf("chain of %d links", len(a.chain))
			}
			if len(a.mx)+len(a.addrs) > len(m.Answer) {
				t.Fatalf("%d records out of %d", len(a.mx)+len(a.addrs), len(m.Answer))
			}
			for _, ip := range a.addrs {
				if !ip.IsValid() || (qt == dns.TypeA) != ip.Is4() {
					t.Fatalf("bad address %v for %s", ip, dns.TypeToString[qt])
				}
			}
		}

		var queries atomic.Int64
		r := New(&Options{Clock: func() time.Time { return time.Unix(1e9, 0) },
			LocalAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.99")}, LocalNames: []string{"self.example.com"}})
		r.exchangeHook = func(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
			queries.Add(1)
			reply := m.Copy()
			reply.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: dns.ClassINET}}
			return reply, nil
		}
		res, err := r.Resolve(context.Background(), qname)
		// Bounded work: one MX chain and one chain per address type of at
		// most maxCandidates hosts, each at most maxCNAME+1 queries.
		if limit := int64(1+2*maxCandidates) * (maxCNAME + 1); queries.Load() > limit {
			t.Fatalf("%d queries, limit %d", queries.Load(), limit)
		}
		if err != nil {
			if !IsTemporary(err) && !IsPermanent(err) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if len(res.Hosts) == 0 || len(res.Hosts) > defaultMaxHosts {
			t.Fatalf("%d hosts", len(res.Hosts))
		}
		n := 0
		for i, h := range res.Hosts {
			if len(h.Addrs) == 0 {
				t.Fatalf("host %q without addresses", h.Name)
			}
			if i > 0 && h.Preference < res.Hosts[i-1].Preference {
				t.Fatalf("hosts out of order: %+v", res.Hosts)
			}
			n += len(h.Addrs)
		}
		if n > defaultMaxAddrs {
			t.Fatalf("%d addresses", n)
		}
	})
}

func fuzzSeeds() [][]byte {
	msg := func(rcode int, tc bool, answer []string, ns []string) []byte {
		m := new(dns.Msg)
		m.SetQuestion("example.com.", dns.TypeMX)
		m.Response = true
		m.Rcode = rcode
		m.Truncated = tc
		for _, s := range answer {
			rr, err := dns.NewRR(s)
			if err != nil {
				panic(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		for _, s := range ns {
			rr, err := dns.NewRR(s)
			if err != nil {
				panic(err)
			}
			m.Ns = append(m.Ns, rr)
		}
		b, err := m.Pack()
		if err != nil {
			panic(err)
		}
		return b
	}
	soa := "example.com. 3600 IN SOA ns.example.com. hostmaster.example.com. 1 3600 600 86400 300"
	return [][]byte{
		msg(dns.RcodeSuccess, false, []string{
			"example.com. 300 IN MX 10 mx1.example.com.",
			"example.com. 300 IN MX 20 mx2.example.com.",
			"example.com. 300 IN A 192.0.2.1",
			"example.com. 300 IN AAAA 2001:db8::1"}, nil),
		msg(dns.RcodeSuccess, false, []string{"example.com. 300 IN MX 0 ."}, nil),
		msg(dns.RcodeSuccess, false, []string{
			"example.com. 300 IN CNAME a.example.net.",
			"a.example.net. 300 IN CNAME example.com."}, nil),
		msg(dns.RcodeSuccess, false, []string{"example.com. 300 IN CNAME other.example.net."}, nil),
		msg(dns.RcodeNameError, false, nil, []string{soa}),
		msg(dns.RcodeSuccess, false, nil, []string{soa}),
		msg(dns.RcodeSuccess, true, []string{"example.com. 300 IN MX 10 mx1.example.com."}, nil),
		msg(dns.RcodeServerFailure, false, nil, nil),
		msg(dns.RcodeSuccess, false, []string{
			"example.com. 300 IN MX 10 192.0.2.1.",
			"example.com. 300 IN MX 10 self.example.com.",
			"example.com. 300 IN A 192.0.2.99"}, nil),
	}
}
