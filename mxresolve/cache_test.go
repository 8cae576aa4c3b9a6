package mxresolve

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/dnstest"
	"github.com/miekg/dns"
)

func TestPositiveAnswersAreCachedForTheirTTL(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 60, "192.0.2.1")
	s.AddMX("example.org", 300, 10, "mx.example.com")
	clock := newFakeClock()
	r := newResolver(t, &Options{Clock: clock.Now, AddressPolicy: IPv4Only}, s)

	resolve(t, r, "example.com")
	resolve(t, r, "example.com")
	if mx, a := s.Answered("example.com", dns.TypeMX, ""), s.Answered("mx.example.com", dns.TypeA, ""); mx != 1 || a != 1 {
		t.Fatalf("MX %d, A %d queries, want 1 and 1", mx, a)
	}
	// Answers are shared between domains: the A record is cached.
	resolve(t, r, "example.org")
	if a := s.Answered("mx.example.com", dns.TypeA, ""); a != 1 {
		t.Fatalf("A asked %d times, want 1", a)
	}
	// The A record expires after 60 s, the MX record after 300 s.
	clock.Advance(61 * time.Second)
	resolve(t, r, "example.com")
	if mx, a := s.Answered("example.com", dns.TypeMX, ""), s.Answered("mx.example.com", dns.TypeA, ""); mx != 1 || a != 2 {
		t.Fatalf("after 61s: MX %d, A %d queries, want 1 and 2", mx, a)
	}
	clock.Advance(240 * time.Second)
	resolve(t, r, "example.com")
	if mx := s.Answered("example.com", dns.TypeMX, ""); mx != 2 {
		t.Fatalf("after 301s: MX %d queries, want 2", mx)
	}
}

func TestTTLClamps(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("short.example.com", 1, 10, "mx.example.com")
	s.AddMX("long.example.com", 86400, 10, "mx.example.com")
	s.AddA("mx.example.com", 86400, "192.0.2.1")
	clock := newFakeClock()
	r := newResolver(t, &Options{Clock: clock.Now, AddressPolicy: IPv4Only, MinTTL: 30 * time.Second, MaxTTL: time.Minute}, s)
	resolve(t, r, "short.example.com")
	resolve(t, r, "long.example.com")
	clock.Advance(20 * time.Second) // past the TTL of 1 s, within MinTTL
	resolve(t, r, "short.example.com")
	if n := s.Answered("short.example.com", dns.TypeMX, ""); n != 1 {
		t.Fatalf("MinTTL: %d queries, want 1", n)
	}
	clock.Advance(50 * time.Second) // past MaxTTL
	resolve(t, r, "long.example.com")
	if n := s.Answered("long.example.com", dns.TypeMX, ""); n != 2 {
		t.Fatalf("MaxTTL: %d queries, want 2", n)
	}
}

func TestNegativeAnswersAreCachedPerRFC2308(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddSOA("example.com", 3600, 120) // negative TTL min(3600, 120) = 120 s
	s.AddA("nodata.example.com", 3600, "192.0.2.1")
	s.AddA("nosoa.example.net", 3600, "192.0.2.1")
	clock := newFakeClock()
	r := newResolver(t, &Options{Clock: clock.Now, AddressPolicy: IPv4Only}, s)

	for range 2 {
		resolveErr(t, r, "nxdomain.example.com")
		resolve(t, r, "nodata.example.com")
		resolve(t, r, "nosoa.example.net")
	}
	if n := s.Answered("nxdomain.example.com", dns.TypeMX, ""); n != 1 {
		t.Fatalf("NXDOMAIN asked %d times, want 1", n)
	}
	if n := s.Answered("nodata.example.com", dns.TypeMX, ""); n != 1 {
		t.Fatalf("NODATA asked %d times, want 1", n)
	}
	// RFC 2308 §5: no SOA, no negative caching.
	if n := s.Answered("nosoa.example.net", dns.TypeMX, ""); n != 2 {
		t.Fatalf("NODATA without SOA asked %d times, want 2", n)
	}
	clock.Advance(121 * time.Second)
	resolveErr(t, r, "nxdomain.example.com")
	resolve(t, r, "nodata.example.com")
	if n := s.Answered("nxdomain.example.com", dns.TypeMX, ""); n != 2 {
		t.Fatalf("NXDOMAIN after its negative TTL asked %d times, want 2", n)
	}
	if n := s.Answered("nodata.example.com", dns.TypeMX, ""); n != 2 {
		t.Fatalf("NODATA after its negative TTL asked %d times, want 2", n)
	}

	// MaxNegativeTTL caps the SOA's value.
	s.AddSOA("example.org", 3600, 3600)
	r = newResolver(t, &Options{Clock: clock.Now, MaxNegativeTTL: 10 * time.Second}, s)
	resolveErr(t, r, "nxdomain.example.org")
	clock.Advance(11 * time.Second)
	resolveErr(t, r, "nxdomain.example.org")
	if n := s.Answered("nxdomain.example.org", dns.TypeMX, ""); n != 2 {
		t.Fatalf("MaxNegativeTTL: asked %d times, want 2", n)
	}
}

func TestFailuresAreNotCached(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1")
	s.SetFault("example.com", dns.TypeMX, dnstest.ServFail)
	r := newResolver(t, &Options{AddressPolicy: IPv4Only}, s)
	resolveErr(t, r, "example.com")
	s.SetFault("example.com", dns.TypeMX, dnstest.NoFault)
	if res := resolve(t, r, "example.com"); len(res.Hosts) != 1 {
		t.Fatalf("hosts %v", hostNames(res))
	}
}

func TestCacheCanBeDisabled(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1")
	r := newResolver(t, &Options{CacheSize: -1, AddressPolicy: IPv4Only}, s)
	resolve(t, r, "example.com")
	resolve(t, r, "example.com")
	if n := s.Answered("example.com", dns.TypeMX, ""); n != 2 {
		t.Fatalf("%d MX queries without cache, want 2", n)
	}
}

func TestCacheIsBounded(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	for _, d := range []string{"a.example", "b.example", "c.example"} {
		s.AddMX(d, 300, 10, "mx.example.com")
	}
	s.AddA("mx.example.com", 300, "192.0.2.1")
	r := newResolver(t, &Options{CacheSize: 2, AddressPolicy: IPv4Only}, s)
	for _, d := range []string{"a.example", "b.example", "c.example", "a.example"} {
		resolve(t, r, d)
	}
	if n := s.Answered("a.example", dns.TypeMX, ""); n != 2 {
		t.Fatalf("a.example asked %d times; with 2 entries it must have been evicted", n)
	}
	if r.answers.Len() > 2 || r.domains.Len() > 2 {
		t.Fatalf("cache sizes %d and %d exceed 2", r.answers.Len(), r.domains.Len())
	}
}

func TestResultsDoNotShareMemoryWithTheCache(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1")
	s.AddCNAME("alias.example.com", 300, "example.com")
	r := newResolver(t, &Options{AddressPolicy: IPv4Only}, s)
	res := resolve(t, r, "alias.example.com")
	res.Hosts[0].Addrs[0] = addrs("203.0.113.66")[0]
	res.Hosts[0].Name = "evil.example"
	res.CNAME[0] = "evil.example"
	res = resolve(t, r, "alias.example.com")
	if res.Hosts[0].Name != "mx.example.com" || res.Hosts[0].Addrs[0] != addrs("192.0.2.1")[0] || res.CNAME[0] != "example.com" {
		t.Fatalf("cached result changed through a returned one: %+v", res)
	}
}

// TestConcurrentLookupsShareOneQuery: 1000 concurrent look-ups of one
// uncached domain cause exactly one upstream query per type.
func TestConcurrentLookupsShareOneQuery(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx1.example.com")
	s.AddMX("example.com", 300, 10, "mx2.example.com")
	s.AddA("mx1.example.com", 300, "192.0.2.1")
	s.AddAAAA("mx1.example.com", 300, "2001:db8::1")
	s.AddA("mx2.example.com", 300, "192.0.2.2")
	s.AddAAAA("mx2.example.com", 300, "2001:db8::2")
	r := newResolver(t, nil, s)

	// Hold the MX answer until every caller has started, so that they
	// overlap in flight rather than find the cache.
	release := s.Hold("example.com", dns.TypeMX)
	const n = 1000
	var started, done sync.WaitGroup
	errs := make(chan error, n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range n {
		started.Add(1)
		done.Go(func() {
			started.Done()
			res, err := r.Resolve(ctx, "example.com")
			if err == nil && len(res.Hosts) != 2 {
				t.Errorf("hosts %v", hostNames(res))
			}
			if err != nil {
				errs <- err
			}
		})
	}
	started.Wait()
	if err := s.WaitReceived(ctx, "example.com", dns.TypeMX, "", 1); err != nil {
		t.Fatal(err)
	}
	release()
	done.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"example.com", dns.TypeMX},
		{"mx1.example.com", dns.TypeA}, {"mx1.example.com", dns.TypeAAAA},
		{"mx2.example.com", dns.TypeA}, {"mx2.example.com", dns.TypeAAAA},
	} {
		if got := s.Received(q.name, q.qtype, ""); got != 1 {
			t.Errorf("%s %s: %d upstream queries, want 1", q.name, dns.TypeToString[q.qtype], got)
		}
	}
}

// One caller giving up must not fail the others sharing its query, and the
// query stops only when the last one gives up.
func TestSharedQuerySurvivesOneCallerCancelling(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1")
	r := newResolver(t, &Options{AddressPolicy: IPv4Only}, s)
	release := s.Hold("example.com", dns.TypeMX)

	first, cancelFirst := context.WithCancel(context.Background())
	firstDone := make(chan error, 1)
	go func() {
		_, err := r.Resolve(first, "example.com")
		firstDone <- err
	}()
	wait, cancelWait := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancelWait()
	if err := s.WaitReceived(wait, "example.com", dns.TypeMX, "", 1); err != nil {
		t.Fatal(err)
	}
	secondDone := make(chan error, 1)
	go func() {
		_, err := r.Resolve(wait, "example.com")
		secondDone <- err
	}()
	// Wait until the second caller has joined the flight.
	for {
		r.flightsMu.Lock()
		f := r.flights["example.com./15"]
		joined := f != nil && f.waiters == 2
		r.flightsMu.Unlock()
		if joined {
			break
		}
		select {
		case <-wait.Done():
			t.Fatal("second caller never joined the flight")
		case <-time.After(time.Millisecond):
		}
	}
	cancelFirst()
	if err := <-firstDone; err == nil {
		t.Fatal("cancelled caller got a result")
	}
	release()
	if err := <-secondDone; err != nil {
		t.Fatalf("second caller failed: %v", err)
	}
	if n := s.Received("example.com", dns.TypeMX, ""); n != 1 {
		t.Fatalf("%d MX queries, want 1", n)
	}
}
