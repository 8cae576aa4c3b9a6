package imapfailover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hamail/hamail/health"
)

// Repeat says whether an operation may run again on another replica after
// its connection broke while it ran.
type Repeat int

const (
	// Once: the operation may have taken effect when its connection broke
	// (APPEND, STORE, EXPUNGE, MOVE), so it is not repeated; the caller gets
	// an error wrapping ErrConnLost or ErrTimeout. Failures before the
	// operation started (connect, login, the NOOP check) still move to the
	// next replica.
	Once Repeat = iota
	// Repeatable: the operation only reads, or repeating it is harmless;
	// after a broken connection it runs again on the next replica.
	Repeatable
)

type replicaState struct {
	cfg   Replica
	name  string
	index int

	mu       sync.Mutex
	failedAt time.Time
	idle     []*Conn
}

// Pool holds the replicas of a mailbox store and a few authenticated
// connections to them. It is safe for concurrent use. New does no I/O;
// connections are opened on demand and closed by Close.
type Pool struct {
	opts     Options
	replicas []*replicaState // in Options order
	slots    chan struct{}   // one token per open connection

	mu     sync.Mutex
	closed bool
	open   map[*Conn]struct{}
	idleCh chan struct{} // closed when a connection goes idle, see idleSignal
}

// New checks the options and returns a Pool. It does no I/O.
func New(opts *Options) (*Pool, error) {
	o := opts.withDefaults()
	if len(o.Replicas) == 0 {
		return nil, errors.New("imapfailover: no replicas configured")
	}
	p := &Pool{opts: o, slots: make(chan struct{}, o.MaxConns), open: make(map[*Conn]struct{}), idleCh: make(chan struct{})}
	seen := map[string]bool{}
	for i, r := range o.Replicas {
		if r.Addr == "" {
			return nil, fmt.Errorf("imapfailover: replica %d has no address", i)
		}
		if r.SASL == nil && r.Username == "" {
			return nil, fmt.Errorf("imapfailover: replica %s has no credentials", r.name())
		}
		if seen[r.name()] {
			return nil, fmt.Errorf("imapfailover: duplicate replica name %s", r.name())
		}
		seen[r.name()] = true
		p.replicas = append(p.replicas, &replicaState{cfg: r, name: r.name(), index: i})
	}
	return p, nil
}

// Close closes every connection. Running Watch calls and operations fail
// with ErrClosed or a broken connection.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := make([]*Conn, 0, len(p.open))
	for c := range p.open {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	p.signalIdle() // waiters in get see the pool closed
	for _, rs := range p.replicas {
		rs.mu.Lock()
		rs.idle = nil
		rs.mu.Unlock()
	}
	for _, c := range conns {
		c.close()
	}
	return nil
}

// Stats is a snapshot of the pool.
type Stats struct {
	Open int            // connections open, in use or idle
	Idle map[string]int // idle connections per replica
}

// Stats returns a snapshot of the pool's connections.
func (p *Pool) Stats() Stats {
	s := Stats{Idle: map[string]int{}}
	p.mu.Lock()
	s.Open = len(p.open)
	p.mu.Unlock()
	for _, rs := range p.replicas {
		rs.mu.Lock()
		s.Idle[rs.name] = len(rs.idle)
		rs.mu.Unlock()
	}
	return s
}

func (p *Pool) state(rs *replicaState) health.State {
	if p.opts.Health == nil {
		return health.Unknown
	}
	return p.opts.Health.State(rs.name)
}

func (p *Pool) reportSuccess(rs *replicaState) {
	rs.mu.Lock()
	rs.failedAt = time.Time{}
	rs.mu.Unlock()
	if p.opts.Health != nil {
		p.opts.Health.ReportSuccess(rs.name)
	}
}

func (p *Pool) reportFailure(rs *replicaState, err error) {
	rs.mu.Lock()
	rs.failedAt = p.opts.Now()
	rs.mu.Unlock()
	p.opts.Logger.Warn("imap replica failed", "replica", rs.name, "err", err)
	if p.opts.Health != nil {
		p.opts.Health.ReportFailure(rs.name, err)
	}
}

// order returns the replicas in the order to try them: by priority, with
// the ones that failed within FailureHold after the others and the ones
// the health view says are Down last (tried only when nothing else works).
func (p *Pool) order() []*replicaState {
	now := p.opts.Now()
	rank := func(rs *replicaState) int {
		if p.state(rs) == health.Down {
			return 2
		}
		rs.mu.Lock()
		failed := !rs.failedAt.IsZero() && now.Sub(rs.failedAt) < p.opts.FailureHold
		rs.mu.Unlock()
		if failed {
			return 1
		}
		return 0
	}
	out := slices.Clone(p.replicas)
	ranks := make(map[*replicaState]int, len(out))
	for _, rs := range out {
		ranks[rs] = rank(rs)
	}
	slices.SortStableFunc(out, func(a, b *replicaState) int {
		if ranks[a] != ranks[b] {
			return ranks[a] - ranks[b]
		}
		return a.cfg.Priority - b.cfg.Priority
	})
	return out
}

// idleSignal returns a channel closed the next time a connection goes
// idle or the pool closes. Take it before looking, so no wake-up is
// missed.
func (p *Pool) idleSignal() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.idleCh
}

func (p *Pool) signalIdle() {
	p.mu.Lock()
	close(p.idleCh)
	p.idleCh = make(chan struct{})
	p.mu.Unlock()
}

func (p *Pool) evictIdle() bool {
	for _, rs := range p.replicas {
		rs.mu.Lock()
		if len(rs.idle) > 0 {
			c := rs.idle[0]
			rs.idle = rs.idle[1:]
			rs.mu.Unlock()
			p.discard(c)
			return true
		}
		rs.mu.Unlock()
	}
	return false
}

// get returns a checked connection to rs: an idle one that answered NOOP,
// or a new one. When MaxConns connections are open it closes an idle one
// of another replica, or waits until a connection is closed or goes idle.
func (p *Pool) get(ctx context.Context, rs *replicaState) (*Conn, error) {
	for {
		sig := p.idleSignal()
		p.mu.Lock()
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		rs.mu.Lock()
		var c *Conn
		if n := len(rs.idle); n > 0 {
			c = rs.idle[n-1]
			rs.idle = rs.idle[:n-1]
		}
		rs.mu.Unlock()
		if c != nil {
			// A pooled connection may have died quietly: check before reuse.
			if err := c.Noop(ctx); err != nil {
				p.discard(c)
				if ctx.Err() != nil {
					return nil, err
				}
				continue
			}
			return c, nil
		}
		select {
		case p.slots <- struct{}{}:
			return p.open1(ctx, rs)
		default:
		}
		if p.evictIdle() {
			continue
		}
		select {
		case p.slots <- struct{}{}:
			return p.open1(ctx, rs)
		case <-sig:
		case <-ctx.Done():
			return nil, &Error{Replica: rs.name, Op: "dial", Err: ctx.Err()}
		}
	}
}

// open1 dials rs with the slot already taken.
func (p *Pool) open1(ctx context.Context, rs *replicaState) (*Conn, error) {
	c, err := p.dial(ctx, rs)
	p.opts.Hooks.connected(rs.name, err)
	if err != nil {
		<-p.slots
		return nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.close()
		<-p.slots
		return nil, ErrClosed
	}
	p.open[c] = struct{}{}
	p.mu.Unlock()
	return c, nil
}

// put gives c back for reuse, or closes it.
func (p *Pool) put(c *Conn) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed || c.Broken() {
		p.discard(c)
		return
	}
	rs := c.rep
	rs.mu.Lock()
	if len(rs.idle) < p.opts.MaxIdle {
		rs.idle = append(rs.idle, c)
		rs.mu.Unlock()
		p.signalIdle()
		return
	}
	rs.mu.Unlock()
	p.discard(c)
}

func (p *Pool) discard(c *Conn) {
	c.close()
	p.mu.Lock()
	_, ok := p.open[c]
	delete(p.open, c)
	p.mu.Unlock()
	if ok {
		<-p.slots
	}
}

// Do runs fn on a healthy connection, trying replicas in order. A failure
// to connect, authenticate or pass the NOOP check moves to the next
// replica. When fn fails because its connection broke, the replica is
// reported failed and fn runs again on the next replica only if repeat is
// Repeatable. When fn fails with the server's answer (a NO or BAD) or an
// error of its own, the error is returned as is. When every replica was
// tried the error wraps ErrNoReplica and the last failure.
func (p *Pool) Do(ctx context.Context, repeat Repeat, fn func(ctx context.Context, c *Conn) error) error {
	return p.do(ctx, repeat, fn, &failTracker{})
}

// do is Do with the failures seen so far (by earlier calls of one
// operation, such as the attempts of an Append) kept in moved.
func (p *Pool) do(ctx context.Context, repeat Repeat, fn func(ctx context.Context, c *Conn) error, moved *failTracker) error {
	var last error
	for _, rs := range p.order() {
		c, err := p.get(ctx, rs)
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return err
			}
			if ctx.Err() != nil {
				return err
			}
			p.reportFailure(rs, err)
			moved.failed(rs.name, err)
			last = err
			continue
		}
		err = fn(ctx, c)
		if err == nil {
			p.reportSuccess(rs)
			p.put(c)
			moved.served(&p.opts.Hooks, rs.name)
			return nil
		}
		if !c.Broken() {
			p.reportSuccess(rs)
			p.put(c)
			return err
		}
		p.discard(c)
		if ctx.Err() != nil {
			return err
		}
		p.reportFailure(rs, err)
		moved.failed(rs.name, err)
		if repeat == Once {
			return err
		}
		last = err
	}
	if last == nil {
		last = errors.New("no replica tried")
	}
	return &Error{Op: "do", Err: fmt.Errorf("%w: %w", ErrNoReplica, last)}
}
