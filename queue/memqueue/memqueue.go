package memqueue

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/hamail/hamail/queue"
)

// Options configures a Store. A nil *Options means the defaults.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// KeyRetention is how long the key of a completed item is remembered
	// (see queue/bbolt's option of the same name); 0 means keys are
	// forgotten at completion.
	KeyRetention time.Duration
}

// Store is an in-memory queue.Store.
type Store struct {
	now func() time.Time

	mu      sync.Mutex
	closed  bool
	items   map[string]*entry
	keys    map[string]string
	token   uint64
	ids     queue.IDSource
	keep    time.Duration
	kept    map[string]keptKey
	keptQ   []string // keys in order of expiry (the retention is fixed)
	changed chan struct{}
}

type keptKey struct {
	id    string
	until time.Time
}

type entry struct {
	item   *queue.Item
	body   []byte
	leased bool // leased and not yet recorded
}

var (
	_ queue.Store    = (*Store)(nil)
	_ queue.Notifier = (*Store)(nil)
)

// New returns an empty store.
func New(opts *Options) *Store {
	s := &Store{
		now:     time.Now,
		items:   make(map[string]*entry),
		keys:    make(map[string]string),
		changed: make(chan struct{}),
	}
	if opts != nil && opts.Now != nil {
		s.now = opts.Now
	}
	if opts != nil {
		s.keep = opts.KeyRetention
	}
	s.kept = make(map[string]keptKey)
	return s
}

// notify wakes NextDue waiters; s.mu is held.
func (s *Store) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Store) Enqueue(ctx context.Context, msg *queue.Message) (string, error) {
	if err := msg.Envelope.Validate(); err != nil {
		return "", &queue.Error{Op: "enqueue", Err: err}
	}
	var body []byte
	if msg.Body != nil {
		var err error
		if body, err = io.ReadAll(msg.Body); err != nil {
			return "", &queue.Error{Op: "enqueue", Err: fmt.Errorf("reading body: %w", err)}
		}
	}
	if err := ctx.Err(); err != nil {
		return "", &queue.Error{Op: "enqueue", Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", &queue.Error{Op: "enqueue", Err: queue.ErrClosed}
	}
	now := s.now()
	s.prune(now)
	if msg.Key != "" {
		if id, ok := s.keys[msg.Key]; ok {
			return id, nil
		}
		if k, ok := s.kept[msg.Key]; ok {
			return k.id, nil
		}
	}
	env := msg.Envelope.Clone()
	it := &queue.Item{
		ID:          s.ids.New(now),
		Key:         msg.Key,
		Envelope:    env,
		Recipients:  queue.NewItemState(&env),
		Created:     now,
		NextAttempt: now,
		BodySize:    int64(len(body)),
	}
	s.items[it.ID] = &entry{item: it, body: body}
	if msg.Key != "" {
		s.keys[msg.Key] = it.ID
	}
	s.notify()
	return it.ID, nil
}

func (s *Store) Lease(ctx context.Context, max int, d time.Duration) ([]*queue.Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, &queue.Error{Op: "lease", Err: err}
	}
	if max <= 0 || d <= 0 {
		return nil, &queue.Error{Op: "lease", Err: fmt.Errorf("%w: max %d, duration %v", queue.ErrInvalid, max, d)}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, &queue.Error{Op: "lease", Err: queue.ErrClosed}
	}
	now := s.now()
	var due []*entry
	for _, e := range s.items {
		if !e.item.NextAttempt.After(now) {
			due = append(due, e)
		}
	}
	slices.SortFunc(due, func(a, b *entry) int {
		if c := a.item.NextAttempt.Compare(b.item.NextAttempt); c != 0 {
			return c
		}
		return cmp.Compare(a.item.ID, b.item.ID)
	})
	if len(due) > max {
		due = due[:max]
	}
	out := make([]*queue.Item, 0, len(due))
	for _, e := range due {
		s.token++
		until := now.Add(d)
		e.item.Lease = queue.Lease{ID: e.item.ID, Token: s.token, Until: until}
		e.item.NextAttempt = until
		e.leased = true
		out = append(out, e.item.Clone())
	}
	if len(out) > 0 {
		s.notify()
	}
	return out, nil
}

// prune forgets retained keys whose time is over; s.mu is held.
func (s *Store) prune(now time.Time) {
	for len(s.keptQ) > 0 {
		k, ok := s.kept[s.keptQ[0]]
		if ok && k.until.After(now) {
			return
		}
		if ok {
			delete(s.kept, s.keptQ[0])
		}
		s.keptQ = s.keptQ[1:]
	}
}

// check returns the entry under lease l; s.mu is held.
func (s *Store) check(op string, l queue.Lease) (*entry, error) {
	if s.closed {
		return nil, &queue.Error{Op: op, ID: l.ID, Err: queue.ErrClosed}
	}
	e, ok := s.items[l.ID]
	if !ok || e.item.Lease.Token != l.Token || l.Token == 0 {
		return nil, &queue.Error{Op: op, ID: l.ID, Err: queue.ErrLeaseLost}
	}
	return e, nil
}

func (s *Store) Record(ctx context.Context, l queue.Lease, u queue.Update) error {
	if err := ctx.Err(); err != nil {
		return &queue.Error{Op: "record", ID: l.ID, Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.check("record", l)
	if err != nil {
		return err
	}
	if len(u.Recipients) != len(e.item.Recipients) {
		return &queue.Error{Op: "record", ID: l.ID, Err: fmt.Errorf("%w: %d recipient states for %d recipients", queue.ErrInvalid, len(u.Recipients), len(e.item.Recipients))}
	}
	e.item.Recipients = append([]queue.RecipientState(nil), u.Recipients...)
	e.item.Attempts = u.Attempts
	e.item.LastError = u.LastError
	e.item.NextAttempt = u.NextAttempt
	if e.item.NextAttempt.IsZero() {
		e.item.NextAttempt = s.now()
	}
	e.item.Lease.Until = time.Time{}
	e.leased = false
	s.notify()
	return nil
}

func (s *Store) Complete(ctx context.Context, l queue.Lease) error {
	if err := ctx.Err(); err != nil {
		return &queue.Error{Op: "complete", ID: l.ID, Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.check("complete", l)
	if err != nil {
		return err
	}
	delete(s.items, l.ID)
	if e.item.Key != "" {
		delete(s.keys, e.item.Key)
		if s.keep > 0 {
			s.kept[e.item.Key] = keptKey{id: l.ID, until: s.now().Add(s.keep)}
			s.keptQ = append(s.keptQ, e.item.Key)
		}
	}
	s.notify()
	return nil
}

func (s *Store) Body(ctx context.Context, id string) (queue.Body, error) {
	if err := ctx.Err(); err != nil {
		return nil, &queue.Error{Op: "body", ID: id, Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, &queue.Error{Op: "body", ID: id, Err: queue.ErrClosed}
	}
	e, ok := s.items[id]
	if !ok {
		return nil, &queue.Error{Op: "body", ID: id, Err: queue.ErrNotFound}
	}
	// The body is never modified after Enqueue, so sharing it is safe.
	return queue.BytesBody(e.body), nil
}

func (s *Store) Inspect(ctx context.Context, id string) (*queue.Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, &queue.Error{Op: "inspect", ID: id, Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, &queue.Error{Op: "inspect", ID: id, Err: queue.ErrClosed}
	}
	e, ok := s.items[id]
	if !ok {
		return nil, &queue.Error{Op: "inspect", ID: id, Err: queue.ErrNotFound}
	}
	return s.view(e), nil
}

// view copies an entry for a caller; s.mu is held.
func (s *Store) view(e *entry) *queue.Item {
	c := e.item.Clone()
	if !e.leased {
		c.Lease.Until = time.Time{}
	}
	return c
}

func (s *Store) List(ctx context.Context, after string, limit int) ([]*queue.Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, &queue.Error{Op: "list", Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, &queue.Error{Op: "list", Err: queue.ErrClosed}
	}
	ids := make([]string, 0, len(s.items))
	for id := range s.items {
		if id > after {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	if limit > 0 && len(ids) > limit {
		ids = ids[:limit]
	}
	out := make([]*queue.Item, len(ids))
	for i, id := range ids {
		out[i] = s.view(s.items[id])
	}
	return out, nil
}

func (s *Store) Stats(ctx context.Context) (queue.Stats, error) {
	if err := ctx.Err(); err != nil {
		return queue.Stats{}, &queue.Error{Op: "stats", Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return queue.Stats{}, &queue.Error{Op: "stats", Err: queue.ErrClosed}
	}
	now := s.now()
	var st queue.Stats
	for _, e := range s.items {
		st.Items++
		switch {
		case !e.item.NextAttempt.After(now):
			st.Due++
		case e.leased:
			st.Leased++
		default:
			st.Deferred++
		}
		if st.Oldest.IsZero() || e.item.Created.Before(st.Oldest) {
			st.Oldest = e.item.Created
		}
	}
	return st, nil
}

func (s *Store) NextDue(ctx context.Context) (time.Time, bool, <-chan struct{}, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, false, nil, &queue.Error{Op: "next due", Err: err}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return time.Time{}, false, nil, &queue.Error{Op: "next due", Err: queue.ErrClosed}
	}
	var next time.Time
	for _, e := range s.items {
		if next.IsZero() || e.item.NextAttempt.Before(next) {
			next = e.item.NextAttempt
		}
	}
	return next, !next.IsZero(), s.changed, nil
}

// Close drops everything the store holds.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.items = nil
		s.keys = nil
		s.notify()
	}
	return nil
}
