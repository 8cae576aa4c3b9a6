package smtpclient

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hamail/hamail/health"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/sony/gobreaker/v2"
)

// errSite marks a session result that counts against the host's breaker.
var errSite = errors.New("site failure")

// errExcluded marks a session result the breaker must ignore
// (cancellation by the caller).
var errExcluded = errors.New("excluded from breaker")

// breakers holds one circuit breaker per host. gobreaker calls
// OnStateChange with its mutex held, so the callback only queues the event;
// the queue is drained — hooks called, health told — by the goroutine that
// caused the change, after the breaker call returned. No goroutine, and no
// call back into a breaker from its callback.
type breakers struct {
	settings BreakerOptions
	health   health.View
	hooks    *Hooks

	mu     sync.Mutex
	pinned map[string]*gobreaker.TwoStepCircuitBreaker[struct{}] // relays: kept for the client's life
	others *simplelru.LRU[string, *gobreaker.TwoStepCircuitBreaker[struct{}]]

	evMu    sync.Mutex
	pending []BreakerEvent
}

func newBreakers(o BreakerOptions, h health.View, hooks *Hooks, relays []string) *breakers {
	if o.Failures == 0 {
		o.Failures = 5
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = 60 * time.Second
	}
	if o.HalfOpenProbes == 0 {
		o.HalfOpenProbes = 1
	}
	if o.MaxHosts <= 0 {
		o.MaxHosts = 4096
	}
	b := &breakers{settings: o, health: h, hooks: hooks, pinned: map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]{}}
	b.others, _ = simplelru.NewLRU[string, *gobreaker.TwoStepCircuitBreaker[struct{}]](o.MaxHosts, nil)
	for _, r := range relays {
		b.pinned[r] = b.newBreaker(r)
	}
	return b
}

// lookup returns host's breaker or nil. Called with b.mu held.
func (b *breakers) lookup(host string) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	if cb := b.pinned[host]; cb != nil {
		return cb
	}
	cb, _ := b.others.Get(host)
	return cb
}

func (b *breakers) get(host string) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	b.mu.Lock()
	defer b.mu.Unlock()
	cb := b.lookup(host)
	if cb == nil {
		// Mail exchangers: the least recently used are forgotten beyond
		// MaxHosts, so direct delivery to many domains stays bounded.
		cb = b.newBreaker(host)
		b.others.Add(host, cb)
	}
	return cb
}

func (b *breakers) newBreaker(host string) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	failures := b.settings.Failures
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        host,
		MaxRequests: b.settings.HalfOpenProbes,
		Timeout:     b.settings.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures },
		IsSuccessful: func(err error) bool {
			return err == nil
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errExcluded) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			// Runs under the breaker's lock: queue only.
			b.evMu.Lock()
			b.pending = append(b.pending, BreakerEvent{Host: name, From: from, To: to})
			b.evMu.Unlock()
		},
	})
}

// allow asks the host's breaker for admission. The returned done must be
// called exactly once with nil (success), errSite-wrapping (failure) or
// errExcluded-wrapping (ignored).
func (b *breakers) allow(host string) (done func(error), err error) {
	cb := b.get(host)
	d, err := cb.Allow()
	b.drain()
	if err != nil {
		if errors.Is(err, gobreaker.ErrOpenState) {
			return nil, fmt.Errorf("%s: %w", host, ErrBreakerOpen)
		}
		return nil, fmt.Errorf("%s: %w: %w", host, ErrBreakerOpen, err)
	}
	return func(res error) {
		d(res)
		b.drain()
	}, nil
}

// state returns the host's breaker state (closed for an unknown host).
func (b *breakers) state(host string) gobreaker.State {
	b.mu.Lock()
	cb := b.lookup(host)
	b.mu.Unlock()
	if cb == nil {
		return gobreaker.StateClosed
	}
	s := cb.State()
	b.drain()
	return s
}

// drain delivers queued state changes outside every breaker lock.
func (b *breakers) drain() {
	b.evMu.Lock()
	ev := b.pending
	b.pending = nil
	b.evMu.Unlock()
	for _, e := range ev {
		if e.To == gobreaker.StateOpen && b.health != nil {
			b.health.ReportFailure(e.Host, fmt.Errorf("%s: %w", e.Host, ErrBreakerOpen))
		}
		if b.hooks != nil && b.hooks.BreakerStateChange != nil {
			b.hooks.BreakerStateChange(e)
		}
	}
}
