package mxresolve

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/dnstest"
	"github.com/miekg/dns"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// newResolver returns a resolver asking the given servers, with a short
// timeout and a fake clock unless opts says otherwise.
func newResolver(t *testing.T, opts *Options, servers ...*dnstest.Server) *Resolver {
	t.Helper()
	var o Options
	if opts != nil {
		o = *opts
	}
	for _, s := range servers {
		o.Nameservers = append(o.Nameservers, s.Addr())
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Clock == nil {
		o.Clock = newFakeClock().Now
	}
	return New(&o)
}

func resolve(t *testing.T, r *Resolver, domain string) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := r.Resolve(ctx, domain)
	if err != nil {
		t.Fatalf("Resolve(%q): %v", domain, err)
	}
	return res
}

func resolveErr(t *testing.T, r *Resolver, domain string) *Error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := r.Resolve(ctx, domain)
	if err == nil {
		t.Fatalf("Resolve(%q) = %+v, want an error", domain, res)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Resolve(%q): error %T %v is not an *Error", domain, err, err)
	}
	return e
}

func hostNames(res *Result) []string {
	var names []string
	for _, h := range res.Hosts {
		names = append(names, h.Name)
	}
	return names
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func wantCode(t *testing.T, e *Error, code int, enh [3]int, sentinel error) {
	t.Helper()
	if e.Code != code || e.EnhancedCode != enh || !errors.Is(e, sentinel) {
		t.Fatalf("error %v: want %d %v wrapping %v", e, code, enh, sentinel)
	}
	if (code/100 == 4) != e.Temporary() || (code/100 == 5) != e.Permanent() {
		t.Fatalf("error %v: Temporary()=%v Permanent()=%v for code %d", e, e.Temporary(), e.Permanent(), code)
	}
	if IsTemporary(e) != e.Temporary() || IsPermanent(e) != e.Permanent() {
		t.Fatalf("error %v: IsTemporary/IsPermanent disagree with the methods", e)
	}
}

func TestOrdersByPreference(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 20, "mx2.example.com")
	s.AddMX("example.com", 300, 10, "mx1.example.com")
	s.AddMX("example.com", 300, 30, "mx3.example.com")
	s.AddA("mx1.example.com", 300, "192.0.2.1")
	s.AddA("mx2.example.com", 300, "192.0.2.2", "192.0.2.3")
	s.AddAAAA("mx3.example.com", 300, "2001:db8::3")
	r := newResolver(t, nil, s)

	res := resolve(t, r, "Example.COM.")
	if res.Domain != "example.com" || res.Implicit || len(res.CNAME) != 0 {
		t.Fatalf("result %+v", res)
	}
	want := []Host{
		{Name: "mx1.example.com", Preference: 10, Addrs: addrs("192.0.2.1")},
		{Name: "mx2.example.com", Preference: 20, Addrs: addrs("192.0.2.2", "192.0.2.3")},
		{Name: "mx3.example.com", Preference: 30, Addrs: addrs("2001:db8::3")},
	}
	if len(res.Hosts) != len(want) {
		t.Fatalf("hosts %+v, want %+v", res.Hosts, want)
	}
	for i := range want {
		if res.Hosts[i].Name != want[i].Name || res.Hosts[i].Preference != want[i].Preference ||
			!slices.Equal(res.Hosts[i].Addrs, want[i].Addrs) || res.Hosts[i].Implicit {
			t.Errorf("host %d = %+v, want %+v", i, res.Hosts[i], want[i])
		}
	}
}

func TestShuffleVariesEqualPreferencesOnly(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 5, "first.example.com")
	for _, h := range []string{"a", "b", "c", "d"} {
		s.AddMX("example.com", 300, 10, h+".example.com")
	}
	s.AddMX("example.com", 300, 20, "y.example.com")
	s.AddMX("example.com", 300, 20, "z.example.com")
	for _, h := range []string{"first", "a", "b", "c", "d", "y", "z"} {
		s.AddA(h+".example.com", 300, "192.0.2.1")
	}
	r := newResolver(t, &Options{Rand: rand.New(rand.NewPCG(1, 2)), MaxHosts: -1, MaxAddrs: -1}, s)

	orders := map[string]int{}
	firstOfGroup := map[string]int{}
	lastGroups := map[string]int{}
	const calls = 300
	for range calls {
		names := hostNames(resolve(t, r, "example.com"))
		if len(names) != 7 || names[0] != "first.example.com" {
			t.Fatalf("order %v", names)
		}
		group := names[1:5]
		sorted := slices.Sorted(slices.Values(group))
		if !slices.Equal(sorted, []string{"a.example.com", "b.example.com", "c.example.com", "d.example.com"}) {
			t.Fatalf("preference 10 group crossed preferences: %v", names)
		}
		tail := names[5:]
		if !slices.Contains(tail, "y.example.com") || !slices.Contains(tail, "z.example.com") {
			t.Fatalf("preference 20 group crossed preferences: %v", names)
		}
		orders[strings.Join(group, ",")]++
		firstOfGroup[group[0]]++
		lastGroups[strings.Join(tail, ",")]++
	}
	// 24 permutations over 300 calls: a working shuffle shows most of them
	// and puts every host first at least once.
	if len(orders) < 12 || len(firstOfGroup) != 4 || len(lastGroups) != 2 {
		t.Fatalf("shuffle too narrow: %d orders of 24, first hosts %v, tails %v", len(orders), firstOfGroup, lastGroups)
	}
	// The shuffle happens after the cache: one upstream MX query.
	if got := s.Answered("example.com", dns.TypeMX, ""); got != 1 {
		t.Fatalf("%d MX queries, want 1", got)
	}
}

func TestShuffleIsReproducibleWithInjectedRand(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	for _, h := range []string{"a", "b", "c", "d", "e"} {
		s.AddMX("example.com", 300, 10, h+".example.com")
		s.AddA(h+".example.com", 300, "192.0.2.1")
	}
	run := func() [][]string {
		r := newResolver(t, &Options{Rand: rand.New(rand.NewPCG(7, 7))}, s)
		var out [][]string
		for range 5 {
			out = append(out, hostNames(resolve(t, r, "example.com")))
		}
		return out
	}
	a, b := run(), run()
	if !slices.EqualFunc(a, b, slices.Equal) {
		t.Fatalf("same seed, different orders:\n%v\n%v", a, b)
	}
}

func TestImplicitMX(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddSOA("example.com", 3600, 300)
	s.AddA("example.com", 300, "192.0.2.7")
	s.AddAAAA("example.com", 300, "2001:db8::7")
	r := newResolver(t, nil, s)

	res := resolve(t, r, "example.com")
	if !res.Implicit || len(res.Hosts) != 1 {
		t.Fatalf("result %+v", res)
	}
	h := res.Hosts[0]
	if h.Name != "example.com" || h.Preference != 0 || !h.Implicit ||
		!slices.Equal(h.Addrs, addrs("2001:db8::7", "192.0.2.7")) {
		t.Fatalf("implicit host %+v", h)
	}
}

func TestNullMX(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 0, ".")
	s.AddA("example.com", 300, "192.0.2.7") // must never be used
	r := newResolver(t, nil, s)

	e := resolveErr(t, r, "example.com")
	wantCode(t, e, 556, [3]int{5, 1, 10}, ErrNullMX)
	if e.Domain != "example.com" {
		t.Fatalf("domain %q", e.Domain)
	}
	if n := s.Received("example.com", dns.TypeA, "") + s.Received("example.com", dns.TypeAAAA, ""); n != 0 {
		t.Fatalf("null MX fell back to address look-ups (%d queries)", n)
	}
}

func TestNullMXMixedWithOtherRecords(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 0, ".")
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1")
	r := newResolver(t, nil, s)

	// RFC 7505 §3 forbids the mix; the real exchanger is used.
	res := resolve(t, r, "example.com")
	if !slices.Equal(hostNames(res), []string{"mx.example.com"}) {
		t.Fatalf("hosts %v", hostNames(res))
	}
}

func TestNegativeAnswersAndFailures(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddSOA("example.com", 3600, 300)
	s.AddA("nodata.example.com", 300, "192.0.2.1") // NODATA for MX → implicit
	s.AddA("servfail.example.com", 300, "192.0.2.1")
	s.SetFault("servfail.example.com", dns.TypeMX, dnstest.ServFail)
	s.AddA("refused.example.com", 300, "192.0.2.1")
	s.SetFault("refused.example.com", dns.TypeMX, dnstest.Refused)
	s.AddA("silent.example.com", 300, "192.0.2.1")
	s.SetFault("silent.example.com", dns.TypeMX, dnstest.Silence)
	r := newResolver(t, &Options{Timeout: 200 * time.Millisecond}, s)

	if res := resolve(t, r, "nodata.example.com"); !res.Implicit {
		t.Fatalf("NODATA: %+v", res)
	}
	wantCode(t, resolveErr(t, r, "nxdomain.example.com"), 550, [3]int{5, 1, 2}, ErrNoSuchDomain)
	wantCode(t, resolveErr(t, r, "servfail.example.com"), 451, [3]int{4, 4, 3}, ErrServerFailure)
	wantCode(t, resolveErr(t, r, "refused.example.com"), 451, [3]int{4, 4, 3}, ErrServerFailure)
	wantCode(t, resolveErr(t, r, "silent.example.com"), 451, [3]int{4, 4, 3}, ErrNoAnswer)
}

func TestHostsWithoutAddresses(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddSOA("example.com", 3600, 300)
	s.AddMX("gone.example.com", 300, 10, "mx1.gone.example.net")
	s.AddMX("gone.example.com", 300, 20, "mx2.gone.example.net")
	s.AddMX("failing.example.com", 300, 10, "mx1.gone.example.net")
	s.AddMX("failing.example.com", 300, 20, "broken.example.com")
	s.AddA("broken.example.com", 300, "192.0.2.9")
	s.SetFault("broken.example.com", dns.TypeA, dnstest.ServFail)
	s.AddMX("partial.example.com", 300, 10, "broken.example.com")
	s.AddMX("partial.example.com", 300, 20, "ok.example.com")
	s.AddA("ok.example.com", 300, "192.0.2.10")
	r := newResolver(t, nil, s)

	// Every look-up answered "no such name": permanent.
	wantCode(t, resolveErr(t, r, "gone.example.com"), 550, [3]int{5, 4, 4}, ErrNoAddress)
	// One look-up failed: temporary, the failure is kept as the cause.
	e := resolveErr(t, r, "failing.example.com")
	wantCode(t, e, 451, [3]int{4, 4, 3}, ErrNoAddress)
	if !errors.Is(e, ErrServerFailure) {
		t.Fatalf("cause lost: %v", e)
	}
	// A failed host is skipped when another one works. broken.example.com
	// still has its AAAA answer (NODATA), which gives no address.
	res := resolve(t, r, "partial.example.com")
	if !slices.Equal(hostNames(res), []string{"ok.example.com"}) {
		t.Fatalf("hosts %v", hostNames(res))
	}
}

func TestInvalidDomains(t *testing.T) {
	t.Parallel()
	r := New(&Options{Nameservers: []string{"127.0.0.1:1"}})
	for _, d := range []string{"", ".", "..", "example.com..", "[192.0.2.1]", "192.0.2.1", "2001:db8::1", "a..b", strings.Repeat("a", 64) + ".com",
		strings.Repeat("abcdefghi.", 26) + "com"} {
		e := resolveErr(t, r, d)
		wantCode(t, e, 550, [3]int{5, 1, 2}, ErrInvalidDomain)
	}
}

func TestErrorHelpers(t *testing.T) {
	t.Parallel()
	perm := permanent("example.com", 556, [3]int{5, 1, 10}, ErrNullMX)
	temp := temporary("example.com", ErrNoAnswer)
	wrapped := fmt.Errorf("delivery: %w", perm)
	if !IsPermanent(wrapped) || IsTemporary(wrapped) {
		t.Error("wrapped permanent error misclassified")
	}
	if !IsTemporary(fmt.Errorf("x: %w", temp)) || IsPermanent(temp) {
		t.Error("temporary error misclassified")
	}
	if IsTemporary(errors.New("other")) || IsPermanent(errors.New("other")) || IsTemporary(nil) {
		t.Error("foreign error classified")
	}
	if got := perm.Error(); got != "mxresolve: example.com: 556 5.1.10 domain does not accept mail (null MX)" {
		t.Errorf("Error() = %q", got)
	}
}
