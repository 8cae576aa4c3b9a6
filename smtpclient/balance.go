package smtpclient

import (
	"cmp"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hamail/hamail/health"
)

// target is one host a session can be opened to: a relay, or one address
// of a mail exchanger.
type target struct {
	info        HostInfo
	policy      TLSPolicy
	tlsConfig   *tls.Config // ServerName set; nil under TLSNone
	implicitTLS bool
	auth        *Auth
	insecure    bool          // AUTH allowed without TLS
	inflight    *atomic.Int64 // sessions in progress (relays)
}

// key names the host for its breaker, the health checker and the pool.
func (t *target) key() string { return t.info.Name }

func newTarget(info HostInfo, policy TLSPolicy, cfg *tls.Config, serverName string) *target {
	t := &target{info: info, policy: policy, inflight: new(atomic.Int64)}
	if policy != TLSNone {
		if cfg != nil {
			cfg = cfg.Clone()
		} else {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = serverName
		}
		// Under may/encrypt the certificate is not checked (RFC 7435
		// opportunistic security); only verify checks it.
		if policy != TLSVerify {
			cfg.InsecureSkipVerify = true
		}
		t.tlsConfig = cfg
	}
	return t
}

func relayTarget(r Relay) (*target, error) {
	host, _, err := net.SplitHostPort(r.Addr)
	if err != nil {
		return nil, fmt.Errorf("smtpclient: relay %q: address %q: %w", r.Name, r.Addr, err)
	}
	name := r.Name
	if name == "" {
		name = r.Addr
	}
	if r.ImplicitTLS && r.TLS == TLSNone {
		return nil, fmt.Errorf("smtpclient: relay %q: ImplicitTLS with TLS policy none", name)
	}
	if r.Auth != nil {
		switch r.Auth.Mechanism {
		case AuthPlain, AuthLogin:
		case AuthXOAUTH2, AuthOAuthBearer:
			if r.Auth.Token == nil {
				return nil, fmt.Errorf("smtpclient: relay %q: %s needs a Token function", name, r.Auth.Mechanism)
			}
		default:
			return nil, fmt.Errorf("smtpclient: relay %q: unknown AUTH mechanism %q", name, r.Auth.Mechanism)
		}
	}
	t := newTarget(HostInfo{Name: name, Addr: r.Addr, Relay: true}, r.TLS, r.TLSConfig, host)
	t.implicitTLS = r.ImplicitTLS
	t.auth = r.Auth
	t.insecure = r.AllowInsecureAuth
	return t, nil
}

// relayState is a relay and what the balancer keeps about it.
type relayState struct {
	t      *target
	weight int
	// Guarded by relaySet.mu:
	current  int       // smooth weighted round robin
	downSeen bool      // health reported it down since it was last used
	upSince  time.Time // when it was first seen not down again
}

// relaySet orders relays by tier and balances inside a tier.
type relaySet struct {
	tiers    [][]*relayState
	balance  Balance
	failback time.Duration
	health   health.View
	now      func() time.Time

	mu sync.Mutex
	rr int // rotation for ties under LeastInFlight
}

func newRelaySet(relays []Relay, balance Balance, failback time.Duration, h health.View, now func() time.Time) (*relaySet, error) {
	s := &relaySet{balance: balance, failback: failback, health: h, now: now}
	sorted := slices.Clone(relays)
	slices.SortStableFunc(sorted, func(a, b Relay) int { return cmp.Compare(a.Priority, b.Priority) })
	seen := map[string]bool{}
	for i, r := range sorted {
		t, err := relayTarget(r)
		if err != nil {
			return nil, err
		}
		if seen[t.key()] {
			return nil, fmt.Errorf("smtpclient: relay name %q used twice", t.key())
		}
		seen[t.key()] = true
		if r.Weight < 0 {
			return nil, fmt.Errorf("smtpclient: relay %q: negative weight", t.key())
		}
		w := max(r.Weight, 1)
		rs := &relayState{t: t, weight: w}
		if i == 0 || sorted[i-1].Priority != r.Priority {
			s.tiers = append(s.tiers, nil)
		}
		s.tiers[len(s.tiers)-1] = append(s.tiers[len(s.tiers)-1], rs)
	}
	return s, nil
}

// usable applies the health checker's view with failback hysteresis: a
// relay seen down becomes usable again only after it has been seen not down
// for the failback delay. Held relays are still returned as a last resort.
// Called with s.mu held.
func (s *relaySet) usable(r *relayState, now time.Time) (ok, held bool) {
	if s.health == nil {
		return true, false
	}
	if s.health.State(r.t.key()) == health.Down {
		r.downSeen = true
		r.upSince = time.Time{}
		return false, false
	}
	if !r.downSeen {
		return true, false
	}
	if r.upSince.IsZero() {
		r.upSince = now
	}
	if now.Sub(r.upSince) >= s.failback {
		r.downSeen = false
		return true, false
	}
	return false, true
}

// order returns the relays to offer a message to, best first: the usable
// relays of each tier in balancing order, tier after tier, then relays
// held back by the failback hysteresis. Relays the health checker reports
// down are left out. Breakers are checked by the caller, per attempt.
func (s *relaySet) order() []*target {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var out, held []*target
	for _, tier := range s.tiers {
		var ok []*relayState
		for _, r := range tier {
			u, h := s.usable(r, now)
			switch {
			case u:
				ok = append(ok, r)
			case h:
				held = append(held, r.t)
			}
		}
		for _, r := range s.pick(ok) {
			out = append(out, r.t)
		}
	}
	return append(out, held...)
}

// pick orders the usable relays of one tier, the chosen one first.
func (s *relaySet) pick(rs []*relayState) []*relayState {
	if len(rs) <= 1 {
		return rs
	}
	out := make([]*relayState, 0, len(rs))
	switch s.balance {
	case LeastInFlight:
		s.rr++
		start := s.rr % len(rs)
		rot := append(slices.Clone(rs[start:]), rs[:start]...)
		// Fewest sessions per unit of weight first; the rotation breaks
		// ties so equal relays share the load.
		slices.SortStableFunc(rot, func(a, b *relayState) int {
			return cmp.Compare(a.t.inflight.Load()*int64(b.weight), b.t.inflight.Load()*int64(a.weight))
		})
		return rot
	default:
		// Smooth weighted round robin (as nginx): each relay gains its
		// weight, the richest is chosen and pays the total.
		total := 0
		best := 0
		for i, r := range rs {
			r.current += r.weight
			total += r.weight
			if r.current > rs[best].current {
				best = i
			}
		}
		rs[best].current -= total
		out = append(out, rs[best])
		for i := 1; i < len(rs); i++ {
			out = append(out, rs[(best+i)%len(rs)])
		}
		return out
	}
}
