package mxresolve

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/miekg/dns"
)

// FuzzDomain feeds arbitrary strings to Resolve as the domain. A name that
// is not a valid ASCII domain gets a permanent 550 5.1.2 *Error wrapping
// ErrInvalidDomain without any DNS query; a valid one is asked about in
// lower case without its final dot, and normalizing is idempotent.
func FuzzDomain(f *testing.F) {
	for _, s := range []string{
		"example.com", "Example.COM.", "", ".", "..", "a..b", "[192.0.2.1]", "192.0.2.1", "2001:db8::1",
		"xn--bcher-kva.example", "bücher.example", "a.b.c.d.e.f.g.h.i.j", strings.Repeat("a", 64) + ".com",
		"under_score.example.com", "-leading.example", "trailing-.example", "sp ace.example", "example.com..",
		"1.2.3.4.in-addr.arpa", "\x00.example", "a\\.b.example", "example.123",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, domain string) {
		var asked []string
		r := New(&Options{CacheSize: -1})
		r.exchangeHook = func(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
			asked = append(asked, name)
			m := new(dns.Msg)
			m.SetQuestion(name, qtype)
			m.Response = true
			m.Rcode = dns.RcodeServerFailure
			return m, nil
		}
		_, err := r.Resolve(context.Background(), domain)
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("Resolve(%q): %v is not an *Error", domain, err)
		}
		norm, nerr := normalize(domain)
		if nerr != nil {
			if !errors.Is(err, ErrInvalidDomain) || e.Code != 550 || e.EnhancedCode != [3]int{5, 1, 2} || !e.Permanent() {
				t.Fatalf("Resolve(%q) = %v, want 550 5.1.2 invalid domain", domain, err)
			}
			if len(asked) != 0 {
				t.Fatalf("invalid %q was asked about: %v", domain, asked)
			}
			return
		}
		if !utf8.ValidString(norm) || norm != strings.ToLower(norm) || strings.HasSuffix(norm, ".") || norm == "" {
			t.Fatalf("normalize(%q) = %q", domain, norm)
		}
		if again, err := normalize(norm); err != nil || again != norm {
			t.Fatalf("normalize(%q) = %q, %v; not idempotent", norm, again, err)
		}
		if e.Domain != norm || !e.Temporary() || len(asked) == 0 || asked[0] != norm+"." {
			t.Fatalf("Resolve(%q): domain %q, %v, asked %v", domain, e.Domain, err, asked)
		}
	})
}
