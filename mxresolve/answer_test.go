package mxresolve

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

func reply(t *testing.T, rcode int, answer, ns []string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeMX)
	m.Response = true
	m.Rcode = rcode
	for _, s := range answer {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		m.Answer = append(m.Answer, rr)
	}
	for _, s := range ns {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		m.Ns = append(m.Ns, rr)
	}
	return m
}

func TestParseAnswer(t *testing.T) {
	t.Parallel()
	soa := "example.com. 3600 IN SOA ns.example.com. h.example.com. 1 3600 600 86400 120"
	for _, tc := range []struct {
		name     string
		qtype    uint16
		rcode    int
		answer   []string
		ns       []string
		want     answer
		wantErr  error
		wantMX   []mxRecord
		wantAddr []string
	}{
		{name: "mx", qtype: dns.TypeMX, answer: []string{
			"example.com. 300 IN MX 10 MX1.example.com.", "EXAMPLE.com 200 IN MX 20 mx2.example.com.",
			"other.example. 1 IN MX 0 evil.example.", "example.com. 1 IN A 192.0.2.1"},
			want:   answer{ttl: 200, ttlKnown: true},
			wantMX: []mxRecord{{10, "mx1.example.com."}, {20, "mx2.example.com."}}},
		{name: "a filters unusable addresses", qtype: dns.TypeA, answer: []string{
			"example.com. 300 IN A 192.0.2.1", "example.com. 300 IN A 0.0.0.0", "example.com. 300 IN A 224.0.0.1",
			"example.com. 300 IN AAAA 2001:db8::1"},
			want: answer{ttl: 300, ttlKnown: true}, wantAddr: []string{"192.0.2.1"}},
		{name: "aaaa", qtype: dns.TypeAAAA, answer: []string{"example.com. 30 IN AAAA 2001:db8::1", "example.com. 30 IN AAAA ::ffff:192.0.2.1"},
			want: answer{ttl: 30, ttlKnown: true}, wantAddr: []string{"2001:db8::1"}},
		{name: "chain followed in the reply", qtype: dns.TypeMX, answer: []string{
			"example.com. 50 IN CNAME a.example.net.", "a.example.net. 300 IN CNAME b.example.org.",
			"b.example.org. 300 IN MX 10 mx.example.org."},
			want:   answer{chain: []string{"a.example.net.", "b.example.org."}, ttl: 50, ttlKnown: true},
			wantMX: []mxRecord{{10, "mx.example.org."}}},
		{name: "chain not followed", qtype: dns.TypeMX, answer: []string{"example.com. 50 IN CNAME a.example.net."},
			want: answer{chain: []string{"a.example.net."}, next: "a.example.net.", ttl: 50, ttlKnown: true}},
		{name: "chain to NODATA", qtype: dns.TypeMX, answer: []string{"example.com. 50 IN CNAME a.example.net."},
			ns:   []string{"example.net. 3600 IN SOA ns.example.net. h.example.net. 1 3600 600 86400 30"},
			want: answer{chain: []string{"a.example.net."}, ttl: 30, ttlKnown: true}},
		{name: "loop in one reply", qtype: dns.TypeMX, answer: []string{
			"example.com. 50 IN CNAME a.example.net.", "a.example.net. 50 IN CNAME example.com."}, wantErr: ErrCNAMELoop},
		{name: "loop not through the start", qtype: dns.TypeMX, answer: []string{
			"example.com. 50 IN CNAME a.example.net.", "a.example.net. 50 IN CNAME b.example.net.",
			"b.example.net. 50 IN CNAME a.example.net."}, wantErr: ErrCNAMELoop},
		{name: "nodata with soa", qtype: dns.TypeMX, ns: []string{soa}, want: answer{ttl: 120, ttlKnown: true}},
		{name: "nodata without soa", qtype: dns.TypeMX, want: answer{}},
		{name: "nxdomain", qtype: dns.TypeMX, rcode: dns.RcodeNameError, ns: []string{soa},
			want: answer{nxdomain: true, ttl: 120, ttlKnown: true}},
		{name: "servfail", qtype: dns.TypeMX, rcode: dns.RcodeServerFailure, wantErr: ErrServerFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := reply(t, tc.rcode, tc.answer, tc.ns)
			got, err := parseAnswer(m, "example.com.", tc.qtype)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.nxdomain != tc.want.nxdomain || !slices.Equal(got.chain, tc.want.chain) || got.next != tc.want.next ||
				got.ttl != tc.want.ttl || got.ttlKnown != tc.want.ttlKnown {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if !slices.Equal(got.mx, tc.wantMX) {
				t.Fatalf("mx %v, want %v", got.mx, tc.wantMX)
			}
			var want []netip.Addr
			for _, a := range tc.wantAddr {
				want = append(want, netip.MustParseAddr(a))
			}
			if !slices.Equal(got.addrs, want) {
				t.Fatalf("addrs %v, want %v", got.addrs, want)
			}
		})
	}
	m := reply(t, 0, []string{"example.com. 300 IN MX 10 mx.example.com."}, nil)
	m.Truncated = true
	if _, err := parseAnswer(m, "example.com.", dns.TypeMX); !errors.Is(err, errTruncated) {
		t.Fatalf("truncated reply: err = %v", err)
	}
}
