// Package mxresolve decides where mail for a domain goes: the ordered list of
// mail exchangers, each with its addresses, per RFC 5321 §5.1, or an error
// that says whether trying again later can help.
//
// Rules followed:
//
//   - MX records are tried by preference, lower first; exchangers of equal
//     preference are shuffled on every call (RFC 5321 §5.1), after the cache.
//   - A domain without MX records (NODATA) is its own exchanger at
//     preference 0: the implicit MX, marked Implicit.
//   - A null MX, "MX 0 ." (RFC 7505), is a permanent 556 5.1.10 and never
//     falls back to A/AAAA.
//   - NXDOMAIN is a permanent 550 5.1.2. SERVFAIL, REFUSED, timeouts and
//     every nameserver failing are a temporary 451 4.4.3. When no exchanger
//     has an address, the error is temporary if a look-up failed and a
//     permanent 550 5.4.4 if every look-up answered.
//   - A CNAME at the domain is followed (at most 8 links, loops detected,
//     reported in Result.CNAME); an MX target that is an alias is followed
//     too, as Postfix does, and reported in Host.CNAME; an MX target that is
//     an address literal is skipped.
//   - When this host (Options.LocalNames, Options.LocalAddrs) is among the
//     exchangers, it and every exchanger of equal or worse preference are
//     removed; if none is left, a permanent 550 5.4.6 (RFC 5321 §5.1).
//   - At most Options.MaxHosts hosts (default 5) and Options.MaxAddrs
//     addresses (default 10) are returned.
//
// Transport: github.com/miekg/dns over UDP with EDNS0 and a 1232-byte buffer
// (RFC 6891; without it for a server that answers FORMERR, §7); a
// truncated reply is asked again over TCP and never used
// (RFC 7766 §5, RFC 2181 §9). Nameservers come from /etc/resolv.conf unless
// given; a nameserver that times out or answers SERVFAIL, REFUSED or a
// malformed reply is asked after the others for Options.NameserverBackoff.
// The AD bit is requested and reported (RFC 6840 §5.7, RFC 4035 §3.2.3).
//
// Cache: DNS answers are kept for their TTL, clamped by the options;
// negative answers for min(SOA TTL, SOA MINIMUM) (RFC 2308 §5), and not at
// all without an SOA. Both caches are bounded LRUs. Concurrent identical
// queries share one upstream query.
//
// Errors: Resolve returns an *Error with the SMTP reply code, the enhanced
// status code (RFC 3463), the domain and the cause, which wraps one of the
// sentinel errors (ErrNullMX, ErrNoSuchDomain, ...). IsTemporary and
// IsPermanent classify any error.
//
// Concurrency and lifecycle: a Resolver is safe for concurrent use and owns
// no background goroutines; New does no I/O, and the resolver configuration
// file is read on the first look-up. Every look-up takes a context whose
// cancellation stops its queries (a query shared with other callers stops
// when the last of them gives up).
package mxresolve
