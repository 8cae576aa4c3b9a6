package mxresolve

import (
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"time"
)

// AddressPolicy chooses which address families of a mail exchanger are
// looked up and in which order they are returned.
type AddressPolicy int

const (
	// Interleave looks up A and AAAA and alternates the families, IPv6
	// first, as RFC 8305 §4 recommends. The default.
	Interleave AddressPolicy = iota
	// PreferIPv6 returns every IPv6 address before any IPv4 address.
	PreferIPv6
	// PreferIPv4 returns every IPv4 address before any IPv6 address.
	PreferIPv4
	// IPv4Only looks up A records only.
	IPv4Only
	// IPv6Only looks up AAAA records only.
	IPv6Only
)

func (p AddressPolicy) String() string {
	switch p {
	case Interleave:
		return "interleave"
	case PreferIPv6:
		return "prefer-ipv6"
	case PreferIPv4:
		return "prefer-ipv4"
	case IPv4Only:
		return "ipv4-only"
	case IPv6Only:
		return "ipv6-only"
	}
	return "AddressPolicy(?)"
}

// Options configures a Resolver. A nil *Options and zero fields mean the
// documented defaults.
type Options struct {
	// Nameservers are the recursive resolvers asked, in order, as "host"
	// or "host:port" (port 53 by default; IPv6 hosts in brackets when a
	// port is given). Default: the nameservers of ResolvConf.
	Nameservers []string
	// ResolvConf is read on the first look-up when Nameservers is empty.
	// Default "/etc/resolv.conf".
	ResolvConf string
	// Timeout bounds each query to one nameserver over one transport.
	// Default 3s.
	Timeout time.Duration
	// NameserverBackoff is how long a nameserver that failed (timeout,
	// SERVFAIL, REFUSED, malformed reply) is asked only after the others.
	// Default 30s.
	NameserverBackoff time.Duration

	// AddressPolicy chooses the address families. Default Interleave.
	AddressPolicy AddressPolicy

	// LocalNames and LocalAddrs identify this host. A mail exchanger with
	// one of these names or addresses is removed together with every
	// exchanger of equal or worse preference (RFC 5321 §5.1); if none is
	// left, Resolve fails with ErrLoopsBack (5.4.6).
	LocalNames []string
	LocalAddrs []netip.Addr

	// MaxHosts bounds the hosts returned. Default 5 (Postfix's
	// smtp_mx_address_limit spirit); negative means no limit.
	MaxHosts int
	// MaxAddrs bounds the addresses returned over all hosts, in order.
	// Default 10; negative means no limit.
	MaxAddrs int

	// CacheSize is the number of entries in each of the two caches (DNS
	// answers, and resolved domains). Default 4096; negative disables
	// caching.
	CacheSize int
	// MinTTL and MaxTTL clamp the lifetime of cached positive answers.
	// Defaults 0 and 24h.
	MinTTL, MaxTTL time.Duration
	// MaxNegativeTTL caps the lifetime of cached negative answers (NXDOMAIN
	// and NODATA), which is otherwise min(SOA TTL, SOA MINIMUM) per
	// RFC 2308 §5. Negative answers without SOA are not cached. Default 1h.
	MaxNegativeTTL time.Duration

	// Rand shuffles mail exchangers of equal preference. It is used under a
	// lock, so one *rand.Rand may be shared. Default: the math/rand/v2
	// global source.
	Rand *rand.Rand
	// Clock tells the time for cache lifetimes and nameserver back-off.
	// Default time.Now.
	Clock func() time.Time
	// Logger receives debug records about nameserver failures and skipped
	// exchangers. Default: discard.
	Logger *slog.Logger
}

const (
	defaultResolvConf = "/etc/resolv.conf"
	defaultTimeout    = 3 * time.Second
	defaultBackoff    = 30 * time.Second
	defaultMaxHosts   = 5
	defaultMaxAddrs   = 10
	defaultCacheSize  = 4096
	defaultMaxTTL     = 24 * time.Hour
	defaultMaxNegTTL  = time.Hour

	// ednsSize is the EDNS0 buffer size advertised (RFC 6891 §6.2.5; the
	// 2020 DNS flag day value that avoids IP fragmentation).
	ednsSize = 1232
	// maxCNAME bounds the CNAME links followed from one name.
	maxCNAME = 8
	// maxCandidates bounds the mail exchangers whose addresses are looked
	// up for one domain, whatever the MX answer holds.
	maxCandidates = 32
)
