package smtpclient

import (
	"context"
	"io"
	"sync"
	"time"
)

// PoolStats is a snapshot of connection counts.
type PoolStats struct {
	// Open connections, busy or idle.
	Open int
	// Idle connections waiting for reuse.
	Idle int
	// Waiting Sends blocked on the per-host cap.
	Waiting int
	// Dials counts new connections made (successful or not).
	Dials uint64
	// Reuses counts sessions that used a pooled connection.
	Reuses uint64
	// Expired counts idle connections closed for idle time or age.
	Expired uint64
}

// Stats is a snapshot of the client's pools.
type Stats struct {
	Total PoolStats
	// Hosts maps a host (relay Name, or exchanger "name [ip]:port") to its
	// counts.
	Hosts map[string]PoolStats
}

// pooled is a connection held by the pool with its bookkeeping.
type pooled[C io.Closer] struct {
	c       C
	created time.Time
	idle    time.Time
	timer   *time.Timer // closes it when idle too long
	reused  bool        // came from the idle list
}

type hostPool[C io.Closer] struct {
	slots chan struct{} // one token per open or opening connection
	idle  []*pooled[C]  // most recently used last
	stats PoolStats
}

// pool keeps connections per host: a cap on open connections, idle reuse,
// an idle timeout and a maximum age, as database/sql and net/http do.
type pool[C io.Closer] struct {
	maxPerHost  int
	maxIdle     int
	idleTimeout time.Duration
	maxAge      time.Duration
	now         func() time.Time

	mu     sync.Mutex
	hosts  map[string]*hostPool[C]
	closed bool
}

func newPool[C io.Closer](o PoolOptions, now func() time.Time) *pool[C] {
	p := &pool[C]{maxPerHost: o.MaxPerHost, maxIdle: o.MaxIdlePerHost, idleTimeout: o.IdleTimeout, maxAge: o.MaxAge, now: now, hosts: map[string]*hostPool[C]{}}
	if p.maxPerHost <= 0 {
		p.maxPerHost = 8
	}
	if p.maxIdle == 0 {
		p.maxIdle = p.maxPerHost
	}
	if p.idleTimeout <= 0 {
		p.idleTimeout = 2 * time.Second
	}
	if p.maxAge <= 0 {
		p.maxAge = 300 * time.Second
	}
	return p
}

func (p *pool[C]) host(key string) *hostPool[C] {
	h := p.hosts[key]
	if h == nil {
		h = &hostPool[C]{slots: make(chan struct{}, p.maxPerHost)}
		p.hosts[key] = h
	}
	return h
}

// acquire takes a slot for key, waiting while the host is at its cap, and
// returns an idle connection if one is young enough. A nil result with a
// nil error means: the slot is yours, dial a new connection and hand it to
// put or discard.
func (p *pool[C]) acquire(ctx context.Context, key string) (*pooled[C], error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	h := p.host(key)
	h.stats.Waiting++
	p.mu.Unlock()
	select {
	case h.slots <- struct{}{}:
	case <-ctx.Done():
		p.mu.Lock()
		h.stats.Waiting--
		p.mu.Unlock()
		return nil, ctx.Err()
	}
	var stale []*pooled[C]
	defer func() {
		for _, pc := range stale {
			pc.c.Close()
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	h.stats.Waiting--
	if p.closed {
		<-h.slots
		return nil, ErrClosed
	}
	now := p.now()
	for len(h.idle) > 0 {
		pc := h.idle[len(h.idle)-1]
		h.idle = h.idle[:len(h.idle)-1]
		pc.timer.Stop()
		if now.Sub(pc.created) >= p.maxAge || now.Sub(pc.idle) >= p.idleTimeout {
			// Postfix reuses a connection for 300 s at most and keeps it
			// idle for 2 s: older ones are closed, not reused.
			h.stats.Open--
			h.stats.Idle--
			h.stats.Expired++
			<-h.slots // the stale connection's token
			stale = append(stale, pc)
			continue
		}
		h.stats.Idle--
		h.stats.Reuses++
		pc.reused = true
		<-h.slots // the idle connection already held a token
		return pc, nil
	}
	h.stats.Dials++
	return nil, nil
}

// opened records a new connection made after acquire returned nil.
func (p *pool[C]) opened(key string, c C) *pooled[C] {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.host(key).stats.Open++
	return &pooled[C]{c: c, created: p.now()}
}

// dialFailed releases the slot of a dial that failed.
func (p *pool[C]) dialFailed(key string) {
	p.mu.Lock()
	h := p.host(key)
	p.mu.Unlock()
	<-h.slots
}

// put returns a healthy connection for reuse, or closes it when the host
// has enough idle ones, the pool is closed, or the connection is too old.
func (p *pool[C]) put(key string, pc *pooled[C]) {
	p.mu.Lock()
	h := p.host(key)
	now := p.now()
	if p.closed || p.maxIdle < 0 || len(h.idle) >= p.maxIdle || now.Sub(pc.created) >= p.maxAge {
		h.stats.Open--
		p.mu.Unlock()
		<-h.slots
		pc.c.Close()
		return
	}
	pc.idle = now
	pc.reused = false
	h.idle = append(h.idle, pc)
	h.stats.Idle++
	pc.timer = time.AfterFunc(p.idleTimeout, func() { p.expire(key, pc) })
	p.mu.Unlock()
	// The token stays taken: an idle connection counts toward the cap.
}

// discard closes a connection that must not be reused and frees its slot.
func (p *pool[C]) discard(key string, pc *pooled[C]) {
	p.mu.Lock()
	h := p.host(key)
	h.stats.Open--
	p.mu.Unlock()
	<-h.slots
	pc.c.Close()
}

// expire closes an idle connection whose idle timer fired, unless it was
// taken in the meantime.
func (p *pool[C]) expire(key string, pc *pooled[C]) {
	p.mu.Lock()
	h := p.host(key)
	i := -1
	for j, x := range h.idle {
		if x == pc {
			i = j
			break
		}
	}
	if i < 0 {
		p.mu.Unlock()
		return
	}
	h.idle = append(h.idle[:i], h.idle[i+1:]...)
	h.stats.Idle--
	h.stats.Open--
	h.stats.Expired++
	p.mu.Unlock()
	<-h.slots
	pc.c.Close()
}

// close closes every idle connection; busy ones are closed when returned.
func (p *pool[C]) close() {
	p.mu.Lock()
	p.closed = true
	var all []*pooled[C]
	var slots []chan struct{}
	for _, h := range p.hosts {
		for _, pc := range h.idle {
			pc.timer.Stop()
			all = append(all, pc)
			slots = append(slots, h.slots)
			h.stats.Open--
			h.stats.Idle--
		}
		h.idle = nil
	}
	p.mu.Unlock()
	for i, pc := range all {
		<-slots[i]
		pc.c.Close()
	}
}

func (p *pool[C]) stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{Hosts: make(map[string]PoolStats, len(p.hosts))}
	for k, h := range p.hosts {
		s.Hosts[k] = h.stats
		s.Total.Open += h.stats.Open
		s.Total.Idle += h.stats.Idle
		s.Total.Waiting += h.stats.Waiting
		s.Total.Dials += h.stats.Dials
		s.Total.Reuses += h.stats.Reuses
		s.Total.Expired += h.stats.Expired
	}
	return s
}
