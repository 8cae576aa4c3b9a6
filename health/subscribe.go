package health

import (
	"context"
	"sync"
)

// Subscription receives the state changes of a checker's targets, in order
// per target (and in Seq order overall).
//
// The checker never waits for a subscriber: each change is appended to the
// subscription's queue in constant time. A subscriber that falls behind by
// more than Options.SubscriptionBuffer changes has its queue coalesced:
// each target keeps only its latest change, with From set to the state the
// subscriber last heard of and Skipped counting the changes folded into it.
// So a slow subscriber still learns every target's current state, in order,
// and knows when it missed intermediate transitions; the queue never holds
// more than about the buffer size or twice the number of targets.
//
// Subscribe, then read Snapshot, to know the state of targets that do not
// change; a Change with Seq not above the Status.Seq of its target is
// already reflected in that snapshot.
type Subscription struct {
	c     *Checker
	limit int

	mu     sync.Mutex
	queue  []Change
	closed bool
	ready  chan struct{} // holds a token while the queue may be non-empty
	done   chan struct{} // closed by Close
}

// Subscribe returns a subscription to the checker's state changes from now
// on. Close it when done.
func (c *Checker) Subscribe() *Subscription {
	s := &Subscription{
		c:     c,
		limit: c.s.SubscriptionBuffer,
		ready: make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	c.mu.Lock()
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	return s
}

// push appends ch. Called with the checker's lock held, so it must not
// block: it only takes the subscription's own lock, which no one holds for
// long.
func (s *Subscription) push(ch Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if len(s.queue) >= s.limit {
		s.coalesce()
	}
	s.queue = append(s.queue, ch)
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// coalesce keeps the last queued change of each target, in queue order,
// folding the earlier ones of the same target into it.
func (s *Subscription) coalesce() {
	last := make(map[string]int, len(s.queue))
	for i, ch := range s.queue {
		last[ch.Target] = i
	}
	type folded struct {
		from    State
		skipped int
	}
	acc := make(map[string]folded)
	out := s.queue[:0]
	for i, ch := range s.queue {
		a, seen := acc[ch.Target]
		if last[ch.Target] != i {
			if !seen {
				a.from = ch.From
			}
			a.skipped += 1 + ch.Skipped
			acc[ch.Target] = a
			continue
		}
		if seen {
			ch.From = a.from
			ch.Skipped += a.skipped
		}
		out = append(out, ch)
	}
	clear(s.queue[len(out):])
	s.queue = out
	// With many targets the coalesced queue may stay long; grow the limit
	// so that coalescing stays amortized constant time per change.
	if 2*len(s.queue) > s.limit {
		s.limit = 2 * len(s.queue)
	}
}

// TryNext returns the oldest queued change, if any, without waiting.
func (s *Subscription) TryNext() (Change, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return Change{}, false
	}
	ch := s.queue[0]
	s.queue[0] = Change{}
	s.queue = s.queue[1:]
	if len(s.queue) > 0 {
		select {
		case s.ready <- struct{}{}:
		default:
		}
	}
	return ch, true
}

// Next waits for the next change. It returns ctx's error when ctx ends
// first, and ErrSubscriptionClosed after Close.
func (s *Subscription) Next(ctx context.Context) (Change, error) {
	for {
		select {
		case <-s.done:
			return Change{}, ErrSubscriptionClosed
		default:
		}
		if ch, ok := s.TryNext(); ok {
			return ch, nil
		}
		select {
		case <-ctx.Done():
			return Change{}, ctx.Err()
		case <-s.done:
			return Change{}, ErrSubscriptionClosed
		case <-s.ready:
		}
	}
}

// Ready returns a channel that receives a value when changes may be
// queued, for select loops: after receiving, drain with TryNext.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Close ends the subscription and drops its queue. It is idempotent.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.queue = nil
		close(s.done)
	}
}
