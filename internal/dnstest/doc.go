// Package dnstest runs an in-process DNS server for tests: a recursive
// resolver look-alike on 127.0.0.1 that answers from zones the test programs,
// with faults that can be switched on and off at any time.
//
// The server listens on UDP and TCP on the same free loopback port, so a
// client that retries a truncated UDP answer over TCP (RFC 1035 §4.2.1,
// RFC 7766) reaches the same data. Replies carry RA (recursion available),
// never AA, like the answers of a local recursive resolver.
//
// What a test can program, per name (and optionally per query type and
// transport):
//
//   - records: MX, A, AAAA, CNAME, TXT, TLSA or any other dns.RR, each with
//     its own TTL; an SOA per zone gives negative answers their TTL
//     (RFC 2308 §5);
//   - faults: NXDOMAIN, SERVFAIL, REFUSED, Silence (the query is read and
//     never answered, so the client times out), Truncate (over UDP the reply
//     has the TC bit and only part of the records; over TCP it is complete);
//   - Hold: answers wait until the test releases them, to make concurrent
//     callers overlap deterministically;
//   - the AD bit (RFC 4035 §3.2.3), server-wide or per name;
//   - SetRejectEDNS0: FORMERR to queries with EDNS0, like a server that
//     predates it (RFC 6891 §7).
//
// Independently of faults, UDP replies larger than the client's advertised
// EDNS0 buffer (RFC 6891 §6.2.5; 512 bytes without EDNS0) are truncated with
// the TC bit set, as a real server does.
//
// CNAMEs are chased inside the server's own data, like a recursive resolver
// does (RFC 1034 §4.3.2): the answer holds the chain and the records of its
// end. Chasing stops at a repeated name or after 8 links. SetChaseCNAME(false)
// makes the server return only the first CNAME.
//
// Every query is counted by name, type and transport, both when received and
// when answered.
//
// Concurrency and lifecycle: Start starts the server and registers its
// shutdown with t.Cleanup. All methods are safe for concurrent use, including
// while queries are being served.
package dnstest
