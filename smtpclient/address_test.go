package smtpclient

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseAddress(t *testing.T) {
	t.Parallel()
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		in    string
		ok    bool
		ascii bool
	}{
		{"alice@example.org", true, true},
		{"Alice.Smith+tag@Mail.Example.ORG", true, true},
		{"!#$%&'*+-/=?^_`{|}~@example.org", true, true},
		{`"john doe"@example.org`, true, true},
		{`"a\"b"@example.org`, true, true},
		{`"a@b"@example.org`, true, true},
		{"user@[192.0.2.1]", true, true},
		{"user@[IPv6:2001:db8::1]", true, true},
		{"用户@例子.广告", true, false},
		{"josé@example.org", true, false},
		{"user@bücher.example", true, false},
		{long(64) + "@example.org", true, true},
		{long(64) + "@" + long(63) + "." + long(63) + "." + long(61), true, true},   // 254 octets
		{long(64) + "@" + long(63) + "." + long(63) + "." + long(62), false, false}, // 255 octets
		{long(65) + "@example.org", false, false},
		{"a@" + long(64) + ".org", false, false},
		{"", false, false},
		{"alice", false, false},
		{"@example.org", false, false},
		{"alice@", false, false},
		{"alice@example.org\r\nRCPT TO:<x@y.org>", false, false},
		{"alice\n@example.org", false, false},
		{"alice@exa\x00mple.org", false, false},
		{"ali ce@example.org", false, false},
		{"alice<@example.org", false, false},
		{".alice@example.org", false, false},
		{"alice.@example.org", false, false},
		{"al..ice@example.org", false, false},
		{"a@b@example.org", false, false},
		{`"unterminated@example.org`, false, false},
		{`"a"b"@example.org`, false, false},
		{`"a\`, false, false},
		{"alice@-example.org", false, false},
		{"alice@example-.org", false, false},
		{"alice@example..org", false, false},
		{"alice@example.org.", false, false},
		{"alice@exa_mple.org", false, false},
		{"alice@[300.1.1.1]", false, false},
		{"alice@[IPv6:192.0.2.1]", false, false},
		{"alice@[192.0.2.1", false, false},
		{"alice@[fe80::1%eth0]", false, false},
		{"alice@example.org>", false, false},
		{"\xff@example.org", false, false},
		{"alice@example.org\x7f", false, false},
	}
	for _, tt := range tests {
		a, err := ParseAddress(tt.in)
		if tt.ok {
			if err != nil {
				t.Errorf("ParseAddress(%q): %v", tt.in, err)
				continue
			}
			if a.String() != tt.in {
				t.Errorf("ParseAddress(%q).String() = %q", tt.in, a.String())
			}
			if a.ASCII != tt.ascii {
				t.Errorf("ParseAddress(%q).ASCII = %v, want %v", tt.in, a.ASCII, tt.ascii)
			}
			continue
		}
		var ae *AddressError
		if !errors.As(err, &ae) {
			t.Errorf("ParseAddress(%q) = %+v, %v; want *AddressError", tt.in, a, err)
		} else if ae.Addr != tt.in || ae.Reason == "" {
			t.Errorf("ParseAddress(%q): error %+v lacks the address or a reason", tt.in, ae)
		}
	}
}

// FuzzParseAddress checks that an accepted address can never smuggle a
// command into the SMTP stream and respects the RFC 5321 length limits.
func FuzzParseAddress(f *testing.F) {
	f.Add("alice@example.org")
	f.Add(`"a b"@[IPv6:2001:db8::1]`)
	f.Add("用户@例子.广告")
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			var ae *AddressError
			if !errors.As(err, &ae) {
				t.Fatalf("error %T is not *AddressError", err)
			}
			return
		}
		if a.String() != s {
			t.Fatalf("round trip %q -> %q", s, a.String())
		}
		if len(s) > maxAddress || len(a.Local) > maxLocalPart || len(a.Domain) > maxDomain {
			t.Fatalf("accepted over-long address %q", s)
		}
		if strings.ContainsAny(s, "\r\n\x00 <>") && !strings.HasPrefix(a.Local, `"`) {
			t.Fatalf("accepted dangerous character in %q", s)
		}
		if strings.ContainsAny(s, "\r\n\x00") || !utf8.ValidString(s) {
			t.Fatalf("accepted control character or invalid UTF-8 in %q", s)
		}
		if strings.ContainsAny(a.Domain, " <>\"") {
			t.Fatalf("accepted bad domain %q", a.Domain)
		}
		ascii := true
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				ascii = false
			}
		}
		if a.ASCII != ascii {
			t.Fatalf("ASCII = %v for %q", a.ASCII, s)
		}
	})
}
