package mxresolve

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// lookup answers (name, qtype) from the cache or from the nameservers,
// following CNAMEs the nameserver did not follow. Concurrent look-ups of
// the same (name, qtype) share one query.
func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) (answer, error) {
	key := queryKey{name, qtype}
	if r.answers != nil {
		if a, ok := r.answers.Get(key); ok && r.now().Before(a.expires) {
			return a, nil
		}
	}
	return r.coalesce(ctx, name+"/"+strconv.Itoa(int(qtype)), func(ctx context.Context) (answer, error) {
		// A flight that ended between this caller's cache miss and the
		// start of this one has filled the cache.
		if r.answers != nil {
			if a, ok := r.answers.Get(key); ok && r.now().Before(a.expires) {
				return a, nil
			}
		}
		a, err := r.lookupUncached(ctx, name, qtype)
		if err == nil && r.answers != nil && !a.expires.IsZero() {
			r.answers.Add(key, a)
		}
		return a, err
	})
}

func (r *Resolver) lookupUncached(ctx context.Context, name string, qtype uint16) (answer, error) {
	var total answer
	total.ad = true
	cur := name
	// Each reply may hold up to maxCNAME links; across replies the chain is
	// bounded by the same number.
	for {
		m, err := r.exchange(ctx, cur, qtype)
		if err != nil {
			return answer{}, err
		}
		a, err := parseAnswer(m, cur, qtype)
		if err != nil {
			return answer{}, err
		}
		for _, c := range a.chain {
			if c == name || contains(total.chain, c) || len(total.chain) >= maxCNAME {
				return answer{}, fmt.Errorf("%s: %w", name, ErrCNAMELoop)
			}
			total.chain = append(total.chain, c)
		}
		total.ad = total.ad && a.ad
		if !a.ttlKnown {
			total.ttlKnown = false
			total.ttl = 0
		} else if cur == name {
			total.ttl, total.ttlKnown = a.ttl, true
		} else if total.ttlKnown {
			total.ttl = min(total.ttl, a.ttl)
		}
		if a.next != "" {
			cur = a.next
			continue
		}
		total.nxdomain, total.mx, total.addrs = a.nxdomain, a.mx, a.addrs
		if total.ttlKnown {
			total.expires = r.expiresAt(total)
		}
		return total, nil
	}
}

// expiresAt applies the TTL clamps of the options: positive answers within
// [MinTTL, MaxTTL], negative ones (RFC 2308) at most MaxNegativeTTL.
func (r *Resolver) expiresAt(a answer) time.Time {
	ttl := time.Duration(a.ttl) * time.Second
	if a.nxdomain || (len(a.mx) == 0 && len(a.addrs) == 0) {
		ttl = min(ttl, r.opts.MaxNegativeTTL)
	} else {
		ttl = min(max(ttl, r.opts.MinTTL), r.opts.MaxTTL)
	}
	if ttl <= 0 {
		return time.Time{}
	}
	return r.now().Add(ttl)
}

// flight is the context shared by the callers waiting for one query. It is
// cancelled when the last of them gives up, which stops the query.
type flight struct {
	ctx     context.Context
	cancel  context.CancelFunc
	waiters int
}

// coalesce runs fn once for concurrent callers with the same key
// (golang.org/x/sync/singleflight). fn runs under a context detached from
// any one caller, so that one caller giving up does not fail the others; it
// is cancelled when every caller has given up.
func (r *Resolver) coalesce(ctx context.Context, key string, fn func(context.Context) (answer, error)) (answer, error) {
	// A caller may join a flight that every earlier caller abandoned, just
	// before it ends with their cancellation: such a result is not this
	// caller's and the query is made again, a bounded number of times.
	for attempt := 0; ; attempt++ {
		r.flightsMu.Lock()
		f := r.flights[key]
		if f == nil {
			fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			f = &flight{ctx: fctx, cancel: cancel}
			r.flights[key] = f
		}
		f.waiters++
		ch := r.group.DoChan(key, func() (any, error) {
			defer func() {
				r.flightsMu.Lock()
				if r.flights[key] == f {
					delete(r.flights, key)
				}
				r.flightsMu.Unlock()
				f.cancel()
			}()
			a, err := fn(f.ctx)
			return a, err
		})
		r.flightsMu.Unlock()

		select {
		case res := <-ch:
			r.leave(key, f)
			if res.Err != nil {
				if errors.Is(res.Err, context.Canceled) && ctx.Err() == nil && attempt < 3 {
					continue
				}
				return answer{}, res.Err
			}
			return res.Val.(answer), nil
		case <-ctx.Done():
			r.leave(key, f)
			return answer{}, ctx.Err()
		}
	}
}

func (r *Resolver) leave(key string, f *flight) {
	r.flightsMu.Lock()
	defer r.flightsMu.Unlock()
	f.waiters--
	if f.waiters == 0 {
		f.cancel()
		if r.flights[key] == f {
			delete(r.flights, key)
		}
	}
}
