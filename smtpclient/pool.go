package smtpclient

import (
	"context"
	"io"
	"slices"
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
	// counts. A host without connections may be forgotten once many hosts
	// were seen; Total keeps its cumulative counts.
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
	wake  chan struct{} // closed when a slot or idle connection may be free
	stats PoolStats
	total *PoolStats // the pool's cumulative counters
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
	total  PoolStats // cumulative counters of every host, forgotten or not
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

// maxIdleHosts is how many per-host entries the pool keeps before it
// forgets those with no connection (direct MX delivery meets many hosts).
const maxIdleHosts = 512

// host returns key's entry, creating it. Called with p.mu held.
func (p *pool[C]) host(key string) *hostPool[C] {
	h := p.hosts[key]
	if h == nil {
		if len(p.hosts) >= maxIdleHosts {
			for k, o := range p.hosts {
				if len(o.slots) == 0 && o.stats.Waiting == 0 && len(o.idle) == 0 {
					delete(p.hosts, k)
				}
			}
		}
		h = &hostPool[C]{slots: make(chan struct{}, p.maxPerHost), total: &p.total}
		p.hosts[key] = h
	}
	return h
}

// acquire returns an idle connection for key if one is young enough, or
// takes a slot for a new one, waiting while the host is at its cap. A nil
// result with a nil error means: the slot is yours, dial a new connection
// and hand it to opened, or call dialFailed.
func (p *pool[C]) acquire(ctx context.Context, key string) (*pooled[C], error) {
	for {
		pc, wake, stale, err := p.tryAcquire(key)
		for _, s := range stale {
			s.c.Close()
		}
		if err != nil || wake == nil {
			return pc, err
		}
		select {
		case <-wake:
		case <-ctx.Done():
		}
		p.mu.Lock()
		p.host(key).stats.Waiting--
		p.mu.Unlock()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// tryAcquire does acquire's work without blocking; a non-nil wake means
// the host is at its cap and wake is closed when that may have changed.
func (p *pool[C]) tryAcquire(key string) (pc *pooled[C], wake chan struct{}, stale []*pooled[C], err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, nil, ErrClosed
	}
	h := p.host(key)
	now := p.now()
	for len(h.idle) > 0 {
		pc := h.idle[len(h.idle)-1]
		h.idle = h.idle[:len(h.idle)-1]
		pc.timer.Stop()
		h.stats.Idle--
		if now.Sub(pc.created) >= p.maxAge || now.Sub(pc.idle) >= p.idleTimeout {
			// Postfix reuses a connection for 300 s at most and keeps it
			// idle for 2 s: older ones are closed, not reused.
			h.stats.Open--
			h.stats.Expired++
			h.total.Expired++
			<-h.slots
			stale = append(stale, pc)
			continue
		}
		h.stats.Reuses++
		h.total.Reuses++
		pc.reused = true
		return pc, nil, stale, nil // its slot goes with it
	}
	select {
	case h.slots <- struct{}{}:
		h.stats.Dials++
		h.total.Dials++
		return nil, nil, stale, nil
	default:
	}
	if h.wake == nil {
		h.wake = make(chan struct{})
	}
	h.stats.Waiting++
	return nil, h.wake, stale, nil
}

// signal wakes the acquirers waiting on h. Called with p.mu held.
func (h *hostPool[C]) signal() {
	if h.wake != nil {
		close(h.wake)
		h.wake = nil
	}
}

// release frees a slot. Called with p.mu held.
func (h *hostPool[C]) release() {
	<-h.slots
	h.signal()
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
	defer p.mu.Unlock()
	p.host(key).release()
}

// put returns a healthy connection for reuse, or closes it when the host
// has enough idle ones, the pool is closed, or the connection is too old.
func (p *pool[C]) put(key string, pc *pooled[C]) {
	p.mu.Lock()
	h := p.host(key)
	now := p.now()
	if p.closed || p.maxIdle < 0 || len(h.idle) >= p.maxIdle || now.Sub(pc.created) >= p.maxAge {
		h.stats.Open--
		h.release()
		p.mu.Unlock()
		pc.c.Close()
		return
	}
	pc.idle = now
	pc.reused = false
	h.idle = append(h.idle, pc)
	h.stats.Idle++
	pc.timer = time.AfterFunc(p.idleTimeout, func() { p.expire(key, pc) })
	// The slot stays taken: an idle connection counts toward the cap.
	h.signal()
	p.mu.Unlock()
}

// discard closes a connection that must not be reused and frees its slot.
func (p *pool[C]) discard(key string, pc *pooled[C]) {
	p.mu.Lock()
	h := p.host(key)
	h.stats.Open--
	h.release()
	p.mu.Unlock()
	pc.c.Close()
}

// redial closes a connection that must not be reused and keeps its slot
// for a new connection to the same host, which the caller then records
// with opened or gives up with dialFailed.
func (p *pool[C]) redial(key string, pc *pooled[C]) {
	p.mu.Lock()
	h := p.host(key)
	h.stats.Open--
	h.stats.Dials++
	h.total.Dials++
	p.mu.Unlock()
	pc.c.Close()
}

// expire closes an idle connection whose idle timer fired, unless it was
// taken in the meantime.
func (p *pool[C]) expire(key string, pc *pooled[C]) {
	p.mu.Lock()
	h := p.host(key)
	i := slices.Index(h.idle, pc)
	if i < 0 {
		p.mu.Unlock()
		return
	}
	h.idle = slices.Delete(h.idle, i, i+1)
	h.stats.Idle--
	h.stats.Open--
	h.stats.Expired++
	h.total.Expired++
	h.release()
	p.mu.Unlock()
	pc.c.Close()
}

// close closes every idle connection; busy ones are closed when returned.
func (p *pool[C]) close() {
	p.mu.Lock()
	p.closed = true
	var all []*pooled[C]
	for _, h := range p.hosts {
		for _, pc := range h.idle {
			pc.timer.Stop()
			all = append(all, pc)
			h.stats.Open--
			h.stats.Idle--
			h.release()
		}
		h.idle = nil
		h.signal()
	}
	p.mu.Unlock()
	// Each close is a polite QUIT bounded by Timeouts.Quit: run them side
	// by side, a few at a time, so that Close takes about one QUIT however
	// many hosts direct delivery met, and returns only when all are done.
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, pc := range all {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			pc.c.Close()
		})
	}
	wg.Wait()
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
	}
	s.Total.Dials, s.Total.Reuses, s.Total.Expired = p.total.Dials, p.total.Reuses, p.total.Expired
	return s
}
