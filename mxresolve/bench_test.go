package mxresolve

import (
	"context"
	"testing"

	"github.com/hamail/hamail/internal/dnstest"
)

func benchZone(b *testing.B) *dnstest.Server {
	s := dnstest.Start(b)
	s.AddMX("example.com", 300, 10, "mx1.example.com")
	s.AddMX("example.com", 300, 10, "mx2.example.com")
	s.AddMX("example.com", 300, 20, "mx3.example.com")
	for _, h := range []string{"mx1", "mx2", "mx3"} {
		s.AddA(h+".example.com", 300, "192.0.2.1")
		s.AddAAAA(h+".example.com", 300, "2001:db8::1")
	}
	return s
}

// BenchmarkResolve compares a cached look-up with an uncached one against
// the loopback DNS server (the baseline), in the same run. A domain with
// three exchangers, two of equal preference, each with an IPv4 and an IPv6
// address: the uncached look-up costs seven queries.
func BenchmarkResolve(b *testing.B) {
	s := benchZone(b)
	ctx := context.Background()

	b.Run("uncached", func(b *testing.B) {
		r := New(&Options{Nameservers: []string{s.Addr()}, CacheSize: -1})
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Resolve(ctx, "example.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		r := New(&Options{Nameservers: []string{s.Addr()}})
		if _, err := r.Resolve(ctx, "example.com"); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Resolve(ctx, "example.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached-parallel", func(b *testing.B) {
		r := New(&Options{Nameservers: []string{s.Addr()}})
		if _, err := r.Resolve(ctx, "example.com"); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := r.Resolve(ctx, "example.com"); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
