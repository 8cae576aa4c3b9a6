package mxresolve

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// errTruncated marks a reply with the TC bit: its record sets may be
// partial, so it is never used (RFC 2181 §9).
var errTruncated = fmt.Errorf("truncated reply: %w", ErrServerFailure)

// mxRecord is one MX record: host is a canonical FQDN, "." for a null MX.
type mxRecord struct {
	pref uint16
	host string
}

// answer is what one look-up of (name, type) taught, after CNAMEs, in the
// form the resolver uses and caches.
type answer struct {
	nxdomain bool
	// chain holds the CNAME targets followed from the queried name, in
	// order, as canonical FQDNs.
	chain []string
	// next is set when the reply ends with a CNAME whose target's records
	// it does not hold: the target must be asked for.
	next  string
	mx    []mxRecord
	addrs []netip.Addr
	ad    bool
	// ttl is the lifetime of the answer in seconds: the smallest TTL of
	// the records used, or for a negative answer min(SOA TTL, MINIMUM)
	// (RFC 2308 §5). ttlKnown is false for a negative answer without SOA,
	// which must not be cached.
	ttl      uint32
	ttlKnown bool
	// expires is when a cached answer goes stale; zero when it must not
	// be cached. Set by the resolver, not by parseAnswer.
	expires time.Time
}

// parseAnswer extracts from a reply to (qname, qtype) the records the
// resolver uses. qname must be canonical. Only records owned by qname or by
// the targets of the CNAME chain starting at it are used; everything else in
// the reply is ignored. The work is linear in the size of the reply.
func parseAnswer(m *dns.Msg, qname string, qtype uint16) (answer, error) {
	var a answer
	if m.Truncated {
		return a, errTruncated
	}
	switch m.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		a.nxdomain = true
	default:
		return a, &rcodeError{rcode: m.Rcode}
	}
	a.ad = m.AuthenticatedData

	// Index the CNAMEs by owner once, so following the chain costs no
	// more than a pass over the answer section.
	var cnames map[string]*dns.CNAME
	for _, rr := range m.Answer {
		if c, ok := rr.(*dns.CNAME); ok && c.Hdr.Class == dns.ClassINET {
			if cnames == nil {
				cnames = make(map[string]*dns.CNAME)
			}
			owner := dns.CanonicalName(c.Hdr.Name)
			if _, dup := cnames[owner]; !dup {
				cnames[owner] = c
			}
		}
	}

	minTTL := ^uint32(0)
	cur := qname
	if qtype != dns.TypeCNAME {
		for len(cnames) > 0 {
			c, ok := cnames[cur]
			if !ok {
				break
			}
			target := dns.CanonicalName(c.Target)
			if target == qname || len(a.chain) >= maxCNAME || contains(a.chain, target) {
				return a, fmt.Errorf("%s: %w", qname, ErrCNAMELoop)
			}
			a.chain = append(a.chain, target)
			minTTL = min(minTTL, c.Hdr.Ttl)
			cur = target
		}
	}

	found := false
	for _, rr := range m.Answer {
		h := rr.Header()
		if h.Rrtype != qtype || h.Class != dns.ClassINET || !equalName(h.Name, cur) {
			continue
		}
		switch rr := rr.(type) {
		case *dns.MX:
			a.mx = append(a.mx, mxRecord{pref: rr.Preference, host: dns.CanonicalName(rr.Mx)})
		case *dns.A:
			ip, ok := netip.AddrFromSlice(rr.A)
			if !ok || !usable(ip.Unmap()) {
				continue
			}
			a.addrs = append(a.addrs, ip.Unmap())
		case *dns.AAAA:
			ip, ok := netip.AddrFromSlice(rr.AAAA)
			if !ok || !ip.Is6() || ip.Is4In6() || !usable(ip) {
				continue
			}
			a.addrs = append(a.addrs, ip)
		default:
			continue
		}
		found = true
		minTTL = min(minTTL, h.Ttl)
	}
	if a.nxdomain {
		// RFC 6604 §3: with a CNAME chain, NXDOMAIN is about its end.
		found = false
	}

	if found {
		a.ttl, a.ttlKnown = minTTL, true
		return a, nil
	}
	if len(a.chain) > 0 && !a.nxdomain && !soaFor(m, cur) {
		// The chain ends at a name the reply holds nothing about and says
		// nothing negative about: the resolver did not follow it.
		a.next = cur
		a.ttl, a.ttlKnown = minTTL, true
		return a, nil
	}
	// Negative answer: the TTL comes from the SOA in the authority section.
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			neg := min(soa.Hdr.Ttl, soa.Minttl, minTTL)
			if !a.ttlKnown || neg < a.ttl {
				a.ttl = neg
			}
			a.ttlKnown = true
		}
	}
	return a, nil
}

// soaFor reports whether the authority section holds an SOA of a zone
// enclosing name, which makes the reply a negative answer about it.
func soaFor(m *dns.Msg, name string) bool {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok && dns.IsSubDomain(dns.CanonicalName(soa.Hdr.Name), name) {
			return true
		}
	}
	return false
}

func usable(ip netip.Addr) bool {
	return ip.IsValid() && !ip.IsUnspecified() && !ip.IsMulticast()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// equalName compares a name from a reply with a canonical name without
// allocating.
func equalName(name, canonical string) bool {
	if len(name) == len(canonical) {
		return equalFoldASCII(name, canonical)
	}
	// The reply's name may lack the final dot.
	return len(name)+1 == len(canonical) && canonical[len(name)] == '.' &&
		equalFoldASCII(name, canonical[:len(name)])
}

func equalFoldASCII(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
