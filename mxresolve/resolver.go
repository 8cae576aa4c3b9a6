package mxresolve

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// Result is where mail for a domain goes.
type Result struct {
	// Domain is the domain resolved, lower case, without a final dot.
	Domain string
	// Hosts are the mail exchangers to try, in order: by preference, those
	// of equal preference shuffled on every call (RFC 5321 §5.1). Each has
	// at least one address.
	Hosts []Host
	// Implicit is true when the domain has no MX records and is its own
	// mail exchanger (RFC 5321 §5.1 implicit MX).
	Implicit bool
	// AuthenticatedData is true when every DNS answer used had the AD bit
	// (RFC 4035 §3.2.3). Trust it only with a trusted, local validating
	// resolver.
	AuthenticatedData bool
	// CNAME is the chain of aliases followed from Domain before the MX
	// records were found, in order; empty when Domain is not an alias.
	CNAME []string
}

// Host is one mail exchanger.
type Host struct {
	// Name is the exchanger's name from the MX record (or the domain for
	// an implicit MX), lower case, without a final dot. Use it for TLS
	// server name checks.
	Name       string
	Preference uint16
	// Addrs are the addresses to try, ordered by the AddressPolicy.
	Addrs []netip.Addr
	// Implicit is true for the domain's implicit MX.
	Implicit bool
	// CNAME is the canonical name Name is an alias of, when it is one
	// (RFC 5321 §5.1 forbids MX targets that are aliases, but they are
	// followed as Postfix does); empty otherwise.
	CNAME string
}

// Resolver resolves domains to mail exchangers. It is safe for concurrent
// use. It holds no goroutines of its own; the zero value is not usable, use
// New.
type Resolver struct {
	opts Options
	log  *slog.Logger

	serversOnce sync.Once
	servers     []string
	serversErr  error

	penaltyMu sync.Mutex
	penalty   map[string]time.Time

	randMu sync.Mutex

	localNames map[string]bool
	localAddrs map[netip.Addr]bool

	answers *lru.Cache[queryKey, answer]     // nil when caching is off
	domains *lru.Cache[string, *destination] // nil when caching is off

	// exchangeHook, when set (by tests), replaces the nameservers.
	exchangeHook func(ctx context.Context, name string, qtype uint16) (*dns.Msg, error)

	group     singleflight.Group
	flightsMu sync.Mutex
	flights   map[string]*flight
}

type queryKey struct {
	name  string
	qtype uint16
}

// destination is a resolved domain before the per-call shuffle and limits:
// every candidate host with its addresses, or the error.
type destination struct {
	domain   string
	hosts    []Host
	implicit bool
	ad       bool
	cname    []string
	err      *Error
	expires  time.Time // zero: not cacheable
}

// New returns a Resolver. It does no I/O: the resolver configuration file,
// if needed, is read on the first look-up.
func New(opts *Options) *Resolver {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.ResolvConf == "" {
		o.ResolvConf = defaultResolvConf
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.NameserverBackoff <= 0 {
		o.NameserverBackoff = defaultBackoff
	}
	if o.MaxHosts == 0 {
		o.MaxHosts = defaultMaxHosts
	}
	if o.MaxAddrs == 0 {
		o.MaxAddrs = defaultMaxAddrs
	}
	if o.CacheSize == 0 {
		o.CacheSize = defaultCacheSize
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = defaultMaxTTL
	}
	if o.MinTTL > o.MaxTTL {
		o.MinTTL = o.MaxTTL
	}
	if o.MaxNegativeTTL <= 0 {
		o.MaxNegativeTTL = defaultMaxNegTTL
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	o.Nameservers = slices.Clone(o.Nameservers)
	r := &Resolver{
		opts:       o,
		log:        o.Logger,
		penalty:    make(map[string]time.Time),
		localNames: make(map[string]bool),
		localAddrs: make(map[netip.Addr]bool),
		flights:    make(map[string]*flight),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	for _, n := range o.LocalNames {
		r.localNames[dns.CanonicalName(n)] = true
	}
	for _, a := range o.LocalAddrs {
		r.localAddrs[a.Unmap()] = true
	}
	if o.CacheSize > 0 {
		// lru.New fails only for a size <= 0.
		r.answers, _ = lru.New[queryKey, answer](o.CacheSize)
		r.domains, _ = lru.New[string, *destination](o.CacheSize)
	}
	return r
}

// Resolve returns the mail exchangers of domain with their addresses, in
// the order to try them, or an *Error that says whether trying again later
// may help. domain is an ASCII domain name, with or without a final dot;
// an internationalised name must be given as A-labels ("xn--...").
func (r *Resolver) Resolve(ctx context.Context, domain string) (*Result, error) {
	display, err := normalize(domain)
	if err != nil {
		return nil, permanent(strings.TrimSuffix(domain, "."), 550, [3]int{5, 1, 2}, err)
	}
	if r.domains != nil {
		if d, ok := r.domains.Get(display); ok && r.now().Before(d.expires) {
			return r.result(d)
		}
	}
	d := r.resolve(ctx, display+".", display)
	if r.domains != nil && !d.expires.IsZero() && r.now().Before(d.expires) {
		r.domains.Add(display, d)
	}
	return r.result(d)
}

// normalize checks a domain and returns it in lower case without a final
// dot. It does not allocate for a valid domain already in that form, which
// keeps cached look-ups cheap.
func normalize(domain string) (string, error) {
	d := strings.TrimSuffix(domain, ".")
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			// DNS holds A-labels (RFC 5890 §2.3.2.1); converting U-labels
			// is left to the caller.
			return "", fmt.Errorf("%q is not ASCII (give A-labels): %w", domain, ErrInvalidDomain)
		}
	}
	// An empty name, the root, and an empty last label ("example.com..")
	// name no mail domain.
	if d == "" || d[0] == '[' || d[len(d)-1] == '.' {
		return "", fmt.Errorf("%q: %w", domain, ErrInvalidDomain)
	}
	// Top-level domains are not all-numeric (RFC 3696 §2), so only a name
	// ending in a digit or holding a colon can be an address.
	if c := d[len(d)-1]; ('0' <= c && c <= '9') || strings.IndexByte(d, ':') >= 0 {
		if _, err := netip.ParseAddr(d); err == nil {
			return "", fmt.Errorf("%q is an address: %w", domain, ErrInvalidDomain)
		}
	}
	if _, ok := dns.IsDomainName(d); !ok || len(d) > 253 {
		return "", fmt.Errorf("%q: %w", domain, ErrInvalidDomain)
	}
	for i := 0; i < len(d); i++ {
		if 'A' <= d[i] && d[i] <= 'Z' {
			return strings.ToLower(d), nil
		}
	}
	return d, nil
}

// result turns a destination into what one call returns: equal
// preferences shuffled, limits applied, and nothing shared with the cache.
func (r *Resolver) result(d *destination) (*Result, error) {
	if d.err != nil {
		e := *d.err
		return nil, &e
	}
	n := len(d.hosts)
	if r.opts.MaxHosts > 0 {
		n = min(n, r.opts.MaxHosts)
	}
	hosts := make([]Host, len(d.hosts))
	copy(hosts, d.hosts)
	r.shuffle(hosts)
	hosts = hosts[:n]

	total := 0
	for _, h := range hosts {
		total += len(h.Addrs)
	}
	if r.opts.MaxAddrs > 0 {
		total = min(total, r.opts.MaxAddrs)
	}
	backing := make([]netip.Addr, 0, total)
	for i := range hosts {
		left := total - len(backing)
		if left == 0 {
			hosts = hosts[:i]
			break
		}
		addrs := hosts[i].Addrs[:min(len(hosts[i].Addrs), left)]
		start := len(backing)
		backing = append(backing, addrs...)
		hosts[i].Addrs = backing[start:len(backing):len(backing)]
	}
	res := &Result{
		Domain:            d.domain,
		Hosts:             hosts,
		Implicit:          d.implicit,
		AuthenticatedData: d.ad,
	}
	if len(d.cname) > 0 {
		res.CNAME = slices.Clone(d.cname)
	}
	return res, nil
}

// shuffle permutes hosts of equal preference in place; hosts are sorted by
// preference.
func (r *Resolver) shuffle(hosts []Host) {
	r.randMu.Lock()
	defer r.randMu.Unlock()
	for start := 0; start < len(hosts); {
		end := start + 1
		for end < len(hosts) && hosts[end].Preference == hosts[start].Preference {
			end++
		}
		group := hosts[start:end]
		for i := len(group) - 1; i > 0; i-- {
			j := r.intN(i + 1)
			group[i], group[j] = group[j], group[i]
		}
		start = end
	}
}

func (r *Resolver) intN(n int) int {
	if r.opts.Rand != nil {
		return r.opts.Rand.IntN(n)
	}
	return rand.IntN(n)
}

// expiry tracks the earliest expiry of the answers a destination was built
// from; a single uncacheable answer makes the whole uncacheable.
type expiry struct {
	t       time.Time
	never   bool
	started bool
}

func (e *expiry) add(t time.Time) {
	switch {
	case t.IsZero():
		e.never = true
	case !e.started || t.Before(e.t):
		e.t = t
	}
	e.started = true
}

func (e *expiry) value() time.Time {
	if e.never || !e.started {
		return time.Time{}
	}
	return e.t
}

// candidate is an MX target whose addresses are to be looked up.
type candidate struct {
	name     string // canonical FQDN
	pref     uint16
	implicit bool
}

// resolve does the DNS work for a domain.
func (r *Resolver) resolve(ctx context.Context, fqdn, display string) *destination {
	d := &destination{domain: display, ad: true}
	var exp expiry
	fail := func(e *Error, cacheable bool) *destination {
		d.err = e
		if cacheable {
			d.expires = exp.value()
		}
		return d
	}

	mx, err := r.lookup(ctx, fqdn, dns.TypeMX)
	if err != nil {
		return fail(temporary(display, lookupError(fqdn, dns.TypeMX, err)), false)
	}
	exp.add(mx.expires)
	d.ad = d.ad && mx.ad
	for _, c := range mx.chain {
		d.cname = append(d.cname, strings.TrimSuffix(c, "."))
	}
	if mx.nxdomain {
		return fail(permanent(display, 550, [3]int{5, 1, 2}, ErrNoSuchDomain), true)
	}

	var cands []candidate
	if len(mx.mx) == 0 {
		// RFC 5321 §5.1: no MX records, the domain is its own exchanger.
		d.implicit = true
		cands = []candidate{{name: fqdn, implicit: true}}
	} else {
		var nullMX bool
		cands, nullMX = r.candidates(mx.mx)
		if len(cands) == 0 {
			if nullMX {
				return fail(permanent(display, 556, [3]int{5, 1, 10}, ErrNullMX), true)
			}
			return fail(permanent(display, 550, [3]int{5, 4, 4},
				fmt.Errorf("every MX target is an address literal: %w", ErrNoAddress)), true)
		}
	}

	// RFC 5321 §5.1: drop this host and every exchanger that is not
	// better than it; first by name, before any address look-up.
	if cut, ok := r.cutAtLocalName(cands); ok {
		if cut == 0 {
			return fail(permanent(display, 550, [3]int{5, 4, 6},
				fmt.Errorf("best MX %s is this host: %w", strings.TrimSuffix(cands[0].name, "."), ErrLoopsBack)), true)
		}
		cands = cands[:cut]
	}
	cands = r.limitCandidates(cands)

	hosts, failures := r.addresses(ctx, cands, &exp, &d.ad)
	if err := ctx.Err(); err != nil {
		return fail(temporary(display, err), false)
	}

	// Then by address.
	for i, h := range hosts {
		if r.isLocalHost(h) {
			if i == 0 || hosts[0].Preference == h.Preference {
				return fail(permanent(display, 550, [3]int{5, 4, 6},
					fmt.Errorf("best MX %s is this host: %w", h.Name, ErrLoopsBack)), true)
			}
			p := h.Preference
			hosts = slices.DeleteFunc(hosts, func(h Host) bool { return h.Preference >= p })
			break
		}
	}

	usable := hosts[:0]
	for _, h := range hosts {
		if len(h.Addrs) > 0 {
			usable = append(usable, h)
		}
	}
	if len(usable) == 0 {
		if len(failures) > 0 {
			return fail(temporary(display, fmt.Errorf("%w: %w", ErrNoAddress, errors.Join(failures...))), false)
		}
		return fail(permanent(display, 550, [3]int{5, 4, 4}, ErrNoAddress), true)
	}
	d.hosts = usable
	if len(failures) == 0 {
		// A host whose look-up failed may have addresses next time.
		d.expires = exp.value()
	}
	return d
}

// candidates turns MX records into the hosts to look up, sorted by
// preference, without duplicates, null MX targets or address literals.
func (r *Resolver) candidates(records []mxRecord) (cands []candidate, nullMX bool) {
	sorted := slices.Clone(records)
	slices.SortStableFunc(sorted, func(a, b mxRecord) int { return cmp.Compare(a.pref, b.pref) })
	for _, rec := range sorted {
		if rec.host == "." {
			// RFC 7505 §3 forbids a null MX beside other MX records; as
			// OpenSMTPD does, the others are used when present.
			nullMX = true
			continue
		}
		if isAddressLiteral(rec.host) {
			// RFC 5321 §5.1 wants a domain name, not an address, in MX.
			r.log.Debug("MX target is an address literal, skipped", "target", rec.host)
			continue
		}
		if slices.ContainsFunc(cands, func(c candidate) bool { return c.name == rec.host }) {
			continue // the better preference was kept
		}
		cands = append(cands, candidate{name: rec.host, pref: rec.pref})
	}
	return cands, nullMX
}

func isAddressLiteral(fqdn string) bool {
	h := strings.TrimSuffix(fqdn, ".")
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		return true
	}
	_, err := netip.ParseAddr(h)
	return err == nil
}

// cutAtLocalName returns the index of the first candidate whose preference
// is not better than that of a candidate named as this host.
func (r *Resolver) cutAtLocalName(cands []candidate) (int, bool) {
	if len(r.localNames) == 0 {
		return 0, false
	}
	for _, c := range cands {
		if r.localNames[c.name] {
			return slices.IndexFunc(cands, func(x candidate) bool { return x.pref >= c.pref }), true
		}
	}
	return 0, false
}

func (r *Resolver) isLocalHost(h Host) bool {
	if len(r.localAddrs) == 0 {
		return false
	}
	for _, a := range h.Addrs {
		if r.localAddrs[a] {
			return true
		}
	}
	return false
}

// limitCandidates keeps whole preference groups until MaxHosts hosts are
// reached, so that the shuffle inside the last group kept stays fair, and
// never more than maxCandidates.
func (r *Resolver) limitCandidates(cands []candidate) []candidate {
	limit := r.opts.MaxHosts
	if limit <= 0 || limit > maxCandidates {
		limit = maxCandidates
	}
	if len(cands) <= limit {
		return cands
	}
	end := limit
	for end < len(cands) && end < maxCandidates && cands[end].pref == cands[limit-1].pref {
		end++
	}
	return cands[:end]
}

// addresses looks up the addresses of every candidate concurrently. It
// returns one Host per candidate, in order, and the look-up failures.
func (r *Resolver) addresses(ctx context.Context, cands []candidate, exp *expiry, ad *bool) ([]Host, []error) {
	types := r.addressTypes()
	type slot struct {
		ans answer
		err error
	}
	slots := make([]slot, len(cands)*len(types))
	var wg sync.WaitGroup
	for i, c := range cands {
		for j, t := range types {
			wg.Go(func() {
				s := &slots[i*len(types)+j]
				s.ans, s.err = r.lookup(ctx, c.name, t)
			})
		}
	}
	wg.Wait()

	hosts := make([]Host, 0, len(cands))
	var failures []error
	for i, c := range cands {
		h := Host{Name: strings.TrimSuffix(c.name, "."), Preference: c.pref, Implicit: c.implicit}
		var v4, v6 []netip.Addr
		for j, t := range types {
			s := slots[i*len(types)+j]
			if s.err != nil {
				failures = append(failures, lookupError(c.name, t, s.err))
				r.log.Debug("address look-up failed", "host", h.Name, "type", dns.TypeToString[t], "err", s.err)
				continue
			}
			exp.add(s.ans.expires)
			*ad = *ad && s.ans.ad
			if n := len(s.ans.chain); n > 0 && h.CNAME == "" {
				h.CNAME = strings.TrimSuffix(s.ans.chain[n-1], ".")
			}
			if t == dns.TypeA {
				v4 = s.ans.addrs
			} else {
				v6 = s.ans.addrs
			}
		}
		h.Addrs = r.orderAddrs(v4, v6)
		hosts = append(hosts, h)
	}
	return hosts, failures
}

func (r *Resolver) addressTypes() []uint16 {
	switch r.opts.AddressPolicy {
	case IPv4Only:
		return []uint16{dns.TypeA}
	case IPv6Only:
		return []uint16{dns.TypeAAAA}
	}
	return []uint16{dns.TypeAAAA, dns.TypeA}
}

func (r *Resolver) orderAddrs(v4, v6 []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(v4)+len(v6))
	switch r.opts.AddressPolicy {
	case PreferIPv4:
		return append(append(out, v4...), v6...)
	case PreferIPv6:
		return append(append(out, v6...), v4...)
	}
	for i := 0; i < max(len(v4), len(v6)); i++ {
		if i < len(v6) {
			out = append(out, v6[i])
		}
		if i < len(v4) {
			out = append(out, v4[i])
		}
	}
	return out
}

func lookupError(name string, qtype uint16, err error) error {
	return fmt.Errorf("%s %s: %w", strings.TrimSuffix(name, "."), dns.TypeToString[qtype], err)
}
