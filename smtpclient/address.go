package smtpclient

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Length limits of RFC 5321 §4.5.3.1: a local part of at most 64 octets,
// a domain of at most 255 octets, a path (the address with its angle
// brackets) of at most 256 octets, so an address of at most 254 octets.
// RFC 1035 §2.3.4 limits each DNS label to 63 octets.
const (
	maxLocalPart = 64
	maxDomain    = 255
	maxAddress   = 254
	maxLabel     = 63
)

// Address is a parsed envelope mailbox (RFC 5321 §4.1.2 Mailbox).
type Address struct {
	// Local is the local part as written, including quotes if it was a
	// Quoted-string.
	Local string
	// Domain is the domain or address literal as written.
	Domain string
	// ASCII is false when the address holds UTF-8 (RFC 6531), which
	// requires the SMTPUTF8 extension.
	ASCII bool
}

// String returns local@domain.
func (a Address) String() string { return a.Local + "@" + a.Domain }

// DomainKey is the domain in lower case, used to group recipients per
// destination (domains are case-insensitive, RFC 5321 §2.4).
func (a Address) DomainKey() string { return strings.ToLower(a.Domain) }

// AddressError reports why an envelope address was refused. It is returned
// before any network I/O, so no command is ever built from it.
type AddressError struct {
	Addr   string // the address as given
	Reason string
}

func (e *AddressError) Error() string {
	return fmt.Sprintf("smtpclient: invalid address %q: %s", e.Addr, e.Reason)
}

// ParseAddress parses and checks an envelope mailbox per RFC 5321 §4.1.2
// (Dot-string or Quoted-string local part, domain or address literal),
// extended by RFC 6531 §3.3 to UTF-8. It refuses CR, LF, NUL and other
// control characters, so an address can never inject a command, and it
// enforces the length limits of §4.5.3.1.
func ParseAddress(s string) (Address, error) {
	bad := func(reason string) (Address, error) {
		return Address{}, &AddressError{Addr: s, Reason: reason}
	}
	if s == "" {
		return bad("empty")
	}
	if !utf8.ValidString(s) {
		return bad("not valid UTF-8")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return bad(fmt.Sprintf("control character 0x%02x", c))
		}
	}
	if len(s) > maxAddress {
		return bad(fmt.Sprintf("longer than %d octets (RFC 5321 §4.5.3.1)", maxAddress))
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return bad("missing @")
	}
	local, domain := s[:at], s[at+1:]
	ascii := true
	if len(local) == 0 {
		return bad("empty local part")
	}
	if len(local) > maxLocalPart {
		return bad(fmt.Sprintf("local part longer than %d octets (RFC 5321 §4.5.3.1.1)", maxLocalPart))
	}
	if local[0] == '"' {
		a, reason := checkQuotedString(local)
		if reason != "" {
			return bad(reason)
		}
		ascii = ascii && a
	} else {
		if strings.ContainsRune(local, '@') {
			return bad("@ in an unquoted local part")
		}
		a, reason := checkDotString(local)
		if reason != "" {
			return bad(reason)
		}
		ascii = ascii && a
	}
	if len(domain) == 0 {
		return bad("empty domain")
	}
	if len(domain) > maxDomain {
		return bad(fmt.Sprintf("domain longer than %d octets (RFC 5321 §4.5.3.1.2)", maxDomain))
	}
	if domain[0] == '[' {
		if reason := checkAddressLiteral(domain); reason != "" {
			return bad(reason)
		}
	} else {
		a, reason := checkDomain(domain)
		if reason != "" {
			return bad(reason)
		}
		ascii = ascii && a
	}
	return Address{Local: local, Domain: domain, ASCII: ascii}, nil
}

// isAtext reports whether c is an RFC 5322 atext octet (ASCII only).
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// checkDotString checks Dot-string = Atom *("." Atom); RFC 6531 §3.3 adds
// UTF-8 non-ASCII characters to atext.
func checkDotString(s string) (ascii bool, reason string) {
	ascii = true
	atomLen := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if atomLen == 0 {
				return false, "empty atom in local part (leading, trailing or double dot)"
			}
			atomLen = 0
		case c >= 0x80:
			ascii = false
			atomLen++
		case isAtext(c):
			atomLen++
		default:
			return false, fmt.Sprintf("character %q not allowed in an unquoted local part", c)
		}
	}
	if atomLen == 0 {
		return false, "empty atom in local part (leading, trailing or double dot)"
	}
	return ascii, ""
}

// checkQuotedString checks Quoted-string = DQUOTE *QcontentSMTP DQUOTE with
// qtextSMTP = %d32-33 / %d35-91 / %d93-126 and quoted-pairSMTP = "\"
// %d32-126 (RFC 5321 §4.1.2), plus UTF-8 per RFC 6531 §3.3.
func checkQuotedString(s string) (ascii bool, reason string) {
	ascii = true
	if len(s) < 2 || s[len(s)-1] != '"' {
		return false, "unterminated quoted local part"
	}
	body := s[1 : len(s)-1]
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '\\':
			i++
			if i >= len(body) {
				return false, "backslash at the end of a quoted local part"
			}
			if q := body[i]; q < 32 || q > 126 {
				return false, "invalid quoted pair in local part"
			}
		case c == '"':
			return false, "unescaped quote inside a quoted local part"
		case c >= 0x80:
			ascii = false
		case c < 32 || c > 126:
			return false, "invalid character in a quoted local part"
		}
	}
	return ascii, ""
}

// checkDomain checks Domain = sub-domain *("." sub-domain), sub-domain =
// Let-dig [Ldh-str] (RFC 5321 §4.1.2), with U-labels allowed (RFC 6531 §3.3).
// A single trailing dot is refused: envelope domains are written without it.
func checkDomain(s string) (ascii bool, reason string) {
	ascii = true
	for label := range strings.SplitSeq(s, ".") {
		if label == "" {
			return false, "empty label in domain"
		}
		if len(label) > maxLabel {
			return false, fmt.Sprintf("domain label longer than %d octets", maxLabel)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return false, "domain label starts or ends with a hyphen"
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= 0x80:
				ascii = false
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-':
			default:
				return false, fmt.Sprintf("character %q not allowed in a domain", c)
			}
		}
	}
	return ascii, ""
}

// checkAddressLiteral checks "[" IPv4 "]" or "[IPv6:" IPv6 "]" (RFC 5321
// §4.1.3). General address literals are refused: nothing routes them.
func checkAddressLiteral(s string) string {
	if len(s) < 3 || s[len(s)-1] != ']' {
		return "unterminated address literal"
	}
	inner := s[1 : len(s)-1]
	if v6, ok := strings.CutPrefix(inner, "IPv6:"); ok {
		a, err := netip.ParseAddr(v6)
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "invalid IPv6 address literal"
		}
		return ""
	}
	a, err := netip.ParseAddr(inner)
	if err != nil || !a.Is4() {
		return "invalid IPv4 address literal"
	}
	return ""
}
