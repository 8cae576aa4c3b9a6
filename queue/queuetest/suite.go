package queuetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
)

// Factory opens a new, empty store whose clock is now. The suite closes
// the store when the test ends.
type Factory func(t *testing.T, now func() time.Time) queue.Store

// Config configures RunConfig.
type Config struct {
	// New opens a store.
	New Factory
	// RealTime: the store's due times and leases follow real time (for
	// example a server's clock), so the suite passes time.Now and waits
	// for time to pass instead of moving a fake clock.
	RealTime bool
	// Unit is the time step of the tests: gaps between due times and
	// lease durations are small multiples of it. Zero means one minute
	// with the fake clock and two seconds with RealTime.
	Unit time.Duration
}

// Run runs the suite against stores made by newStore, on a fake clock.
func Run(t *testing.T, newStore Factory) {
	RunConfig(t, Config{New: newStore})
}

// RunConfig runs the suite with a configuration.
func RunConfig(t *testing.T, cfg Config) {
	if cfg.Unit == 0 {
		cfg.Unit = time.Minute
		if cfg.RealTime {
			cfg.Unit = 2 * time.Second
		}
	}
	tests := []struct {
		name string
		fn   func(*testing.T, *harness)
	}{
		{"EnqueueInspect", testEnqueueInspect},
		{"InvalidEnvelope", testInvalidEnvelope},
		{"Idempotent", testIdempotent},
		{"IdempotentConcurrent", testIdempotentConcurrent},
		{"LeaseOrderByDueTime", testLeaseOrder},
		{"NotLeasedBeforeDue", testNotBeforeDue},
		{"LeaseMax", testLeaseMax},
		{"LeaseExpiryAndFencing", testLeaseExpiry},
		{"RecordPerRecipient", testRecordPerRecipient},
		{"RecordInvalid", testRecordInvalid},
		{"Complete", testComplete},
		{"ConcurrentWorkers", testConcurrentWorkers},
		{"Stats", testStats},
		{"List", testList},
		{"LargeBody", testLargeBody},
		{"EmptyBody", testEmptyBody},
		{"Notifier", testNotifier},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := &harness{t: t, cfg: cfg, ctx: context.Background()}
			if cfg.RealTime {
				h.now = time.Now
			} else {
				h.clock = NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
				h.now = h.clock.Now
			}
			h.s = cfg.New(t, h.now)
			t.Cleanup(func() { _ = h.s.Close() })
			tc.fn(t, h)
		})
	}
}

type harness struct {
	t     *testing.T
	cfg   Config
	ctx   context.Context
	s     queue.Store
	clock *Clock
	now   func() time.Time
}

// advance lets n units of time pass.
func (h *harness) advance(n float64) {
	d := time.Duration(n * float64(h.cfg.Unit))
	if h.clock != nil {
		h.clock.Advance(d)
		return
	}
	// Real time: the thing waited for is time itself.
	timer := time.NewTimer(d)
	defer timer.Stop()
	<-timer.C
}

func (h *harness) unit(n float64) time.Duration { return time.Duration(n * float64(h.cfg.Unit)) }

func envelope(rcpts ...string) queue.Envelope {
	e := queue.Envelope{From: "alice@example.org"}
	for _, r := range rcpts {
		e.Recipients = append(e.Recipients, queue.Recipient{Address: r})
	}
	return e
}

func (h *harness) enqueue(key string, env queue.Envelope, body string) string {
	h.t.Helper()
	id, err := h.s.Enqueue(h.ctx, &queue.Message{Key: key, Envelope: env, Body: strings.NewReader(body)})
	if err != nil {
		h.t.Fatalf("Enqueue: %v", err)
	}
	if id == "" {
		h.t.Fatal("Enqueue returned an empty ID")
	}
	return id
}

func (h *harness) lease(max int, d time.Duration) []*queue.Item {
	h.t.Helper()
	items, err := h.s.Lease(h.ctx, max, d)
	if err != nil {
		h.t.Fatalf("Lease: %v", err)
	}
	for _, it := range items {
		if it.Lease.ID != it.ID || it.Lease.Token == 0 {
			h.t.Fatalf("Lease returned item %s with lease %+v", it.ID, it.Lease)
		}
	}
	return items
}

func (h *harness) leaseOne(id string) *queue.Item {
	h.t.Helper()
	items := h.lease(1, h.unit(10))
	if len(items) != 1 || items[0].ID != id {
		h.t.Fatalf("Lease returned %v, want [%s]", ids(items), id)
	}
	return items[0]
}

func (h *harness) inspect(id string) *queue.Item {
	h.t.Helper()
	it, err := h.s.Inspect(h.ctx, id)
	if err != nil {
		h.t.Fatalf("Inspect(%s): %v", id, err)
	}
	return it
}

func (h *harness) body(id string) string {
	h.t.Helper()
	b, err := h.s.Body(h.ctx, id)
	if err != nil {
		h.t.Fatalf("Body(%s): %v", id, err)
	}
	defer b.Close()
	p, err := io.ReadAll(queue.NewBodyReader(b))
	if err != nil {
		h.t.Fatalf("reading body of %s: %v", id, err)
	}
	if int64(len(p)) != b.Size() {
		h.t.Fatalf("body of %s: read %d octets, Size says %d", id, len(p), b.Size())
	}
	return string(p)
}

func ids(items []*queue.Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.ID
	}
	return out
}

func (h *harness) stats() queue.Stats {
	h.t.Helper()
	st, err := h.s.Stats(h.ctx)
	if err != nil {
		h.t.Fatalf("Stats: %v", err)
	}
	return st
}

func testEnqueueInspect(t *testing.T, h *harness) {
	env := queue.Envelope{
		From: "alice@example.org",
		Recipients: []queue.Recipient{
			{Address: "bob@example.net", Notify: queue.NotifyFailure | queue.NotifyDelay, ORcpt: "rfc822;bob@example.net"},
			{Address: "carol@example.com", Notify: queue.NotifyNever},
			{Address: "dave@example.com"},
		},
		EnvID:    "QQ314159",
		Ret:      queue.RetHeaders,
		SMTPUTF8: true,
		Size:     1234,
	}
	const body = "From: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
	before := h.now()
	id := h.enqueue("", env, body)
	env.Recipients[0].Address = "changed@example.net" // the store must have copied it

	it := h.inspect(id)
	if it.ID != id {
		t.Errorf("ID = %q, want %q", it.ID, id)
	}
	want := queue.Envelope{
		From: "alice@example.org",
		Recipients: []queue.Recipient{
			{Address: "bob@example.net", Notify: queue.NotifyFailure | queue.NotifyDelay, ORcpt: "rfc822;bob@example.net"},
			{Address: "carol@example.com", Notify: queue.NotifyNever},
			{Address: "dave@example.com"},
		},
		EnvID: "QQ314159", Ret: queue.RetHeaders, SMTPUTF8: true, Size: 1234,
	}
	if fmt.Sprint(it.Envelope) != fmt.Sprint(want) {
		t.Errorf("Envelope = %+v, want %+v", it.Envelope, want)
	}
	if len(it.Recipients) != 3 {
		t.Fatalf("%d recipient states, want 3", len(it.Recipients))
	}
	for i, rs := range it.Recipients {
		if rs.Recipient != want.Recipients[i] || rs.Status != queue.StatusPending {
			t.Errorf("recipient %d = %+v, want pending %+v", i, rs, want.Recipients[i])
		}
	}
	if it.Created.Before(before.Add(-time.Second)) || it.Created.After(h.now().Add(time.Second)) {
		t.Errorf("Created = %v, want about %v", it.Created, before)
	}
	if it.Attempts != 0 || it.BodySize != int64(len(body)) {
		t.Errorf("Attempts %d BodySize %d, want 0 and %d", it.Attempts, it.BodySize, len(body))
	}
	if got := h.body(id); got != body {
		t.Errorf("body = %q, want %q", got, body)
	}
	// A body reads again, and from an offset.
	b, err := h.s.Body(h.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 7)
	if n, err := b.ReadAt(p, 25); n != 7 || string(p) != "Subject" {
		t.Errorf("ReadAt(25) = %d %q %v, want 7 \"Subject\"", n, p, err)
	}
	_ = b.Close()
	if got := h.body(id); got != body {
		t.Errorf("second read of body = %q", got)
	}
	if _, err := h.s.Inspect(h.ctx, "no-such-item"); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Inspect(unknown) error = %v, want ErrNotFound", err)
	}
	if _, err := h.s.Body(h.ctx, "no-such-item"); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Body(unknown) error = %v, want ErrNotFound", err)
	}
}

func testInvalidEnvelope(t *testing.T, h *harness) {
	bad := []queue.Envelope{
		{From: "alice@example.org"},
		{From: "alice@example.org", Recipients: []queue.Recipient{{Address: ""}}},
		{From: "alice@example.org\r\nRCPT TO:<x@example.com>", Recipients: []queue.Recipient{{Address: "bob@example.net"}}},
		{From: "", Recipients: []queue.Recipient{{Address: "bob@example.net", Notify: queue.NotifyNever | queue.NotifyFailure}}},
	}
	for i, env := range bad {
		_, err := h.s.Enqueue(h.ctx, &queue.Message{Envelope: env, Body: strings.NewReader("x")})
		if !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("envelope %d: error = %v, want ErrInvalid", i, err)
		}
	}
	if st := h.stats(); st.Items != 0 {
		t.Errorf("Items = %d after rejected enqueues, want 0", st.Items)
	}
	// A null reverse path is valid.
	h.enqueue("", envelope("bob@example.net"), "x")
}

func testIdempotent(t *testing.T, h *harness) {
	a := h.enqueue("key-1", envelope("bob@example.net"), "first")
	b := h.enqueue("key-1", envelope("carol@example.net"), "second")
	if a != b {
		t.Errorf("same key gave IDs %s and %s", a, b)
	}
	c := h.enqueue("key-2", envelope("bob@example.net"), "third")
	d := h.enqueue("", envelope("bob@example.net"), "fourth")
	e := h.enqueue("", envelope("bob@example.net"), "fifth")
	if c == a || d == e || d == a {
		t.Errorf("distinct messages share IDs: %s %s %s %s", a, c, d, e)
	}
	if got := h.body(a); got != "first" {
		t.Errorf("body of keyed item = %q, want the first one", got)
	}
	if got := h.inspect(a).Envelope.Recipients[0].Address; got != "bob@example.net" {
		t.Errorf("recipient of keyed item = %q, want the first one", got)
	}
	if st := h.stats(); st.Items != 4 {
		t.Errorf("Items = %d, want 4", st.Items)
	}
	// The key holds while the item is queued, also after an attempt.
	it := h.leaseOne(a)
	if err := h.s.Record(h.ctx, it.Lease, queue.Update{Recipients: it.Recipients, Attempts: 1, NextAttempt: h.now().Add(h.unit(5))}); err != nil {
		t.Fatal(err)
	}
	if again := h.enqueue("key-1", envelope("bob@example.net"), "again"); again != a {
		t.Errorf("key after an attempt gave %s, want %s", again, a)
	}
	if it := h.inspect(a); it.Key != "key-1" {
		t.Errorf("Key = %q, want key-1", it.Key)
	}
}

func testIdempotentConcurrent(t *testing.T, h *harness) {
	const n = 16
	got := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			id, err := h.s.Enqueue(h.ctx, &queue.Message{Key: "same", Envelope: envelope("bob@example.net"), Body: strings.NewReader("x")})
			if err != nil {
				errs <- err
			}
			got[i] = id
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Enqueue: %v", err)
	}
	for _, id := range got {
		if id != got[0] {
			t.Fatalf("concurrent enqueues with one key gave IDs %v", got)
		}
	}
	if st := h.stats(); st.Items != 1 {
		t.Errorf("Items = %d, want 1", st.Items)
	}
}

func testLeaseOrder(t *testing.T, h *harness) {
	a := h.enqueue("", envelope("a@example.net"), "a")
	b := h.enqueue("", envelope("b@example.net"), "b")
	c := h.enqueue("", envelope("c@example.net"), "c")
	items := h.lease(10, h.unit(1))
	if got := ids(items); !slices.Equal(got, []string{a, b, c}) {
		t.Fatalf("first lease order %v, want enqueue order %v", got, []string{a, b, c})
	}
	base := h.now()
	next := map[string]time.Duration{a: h.unit(5), b: h.unit(3), c: h.unit(4)}
	for _, it := range items {
		if err := h.s.Record(h.ctx, it.Lease, queue.Update{Recipients: it.Recipients, Attempts: 1, NextAttempt: base.Add(next[it.ID])}); err != nil {
			t.Fatal(err)
		}
	}
	h.advance(6)
	items = h.lease(10, h.unit(1))
	if got := ids(items); !slices.Equal(got, []string{b, c, a}) {
		t.Errorf("lease order %v, want by due time %v", got, []string{b, c, a})
	}
}

func testNotBeforeDue(t *testing.T, h *harness) {
	id := h.enqueue("", envelope("bob@example.net"), "x")
	it := h.leaseOne(id)
	due := h.now().Add(h.unit(3))
	if err := h.s.Record(h.ctx, it.Lease, queue.Update{Recipients: it.Recipients, Attempts: 1, NextAttempt: due, LastError: "451 4.3.0 try later"}); err != nil {
		t.Fatal(err)
	}
	if got := h.lease(10, h.unit(1)); len(got) != 0 {
		t.Fatalf("leased %v before its due time", ids(got))
	}
	if st := h.stats(); st.Deferred != 1 || st.Due != 0 || st.Leased != 0 {
		t.Errorf("stats of a deferred item = %+v", st)
	}
	if got := h.inspect(id); !got.NextAttempt.Equal(due) && !h.cfg.RealTime {
		t.Errorf("NextAttempt = %v, want %v", got.NextAttempt, due)
	}
	h.advance(2)
	if got := h.lease(10, h.unit(1)); len(got) != 0 {
		t.Fatalf("leased %v before its due time", ids(got))
	}
	h.advance(1.5)
	got := h.lease(10, h.unit(1))
	if len(got) != 1 || got[0].ID != id {
		t.Fatalf("after the due time leased %v, want [%s]", ids(got), id)
	}
	if got[0].Attempts != 1 || got[0].LastError != "451 4.3.0 try later" {
		t.Errorf("leased item Attempts %d LastError %q", got[0].Attempts, got[0].LastError)
	}
	// A zero NextAttempt means due now.
	if err := h.s.Record(h.ctx, got[0].Lease, queue.Update{Recipients: got[0].Recipients, Attempts: 2}); err != nil {
		t.Fatal(err)
	}
	if again := h.lease(10, h.unit(1)); len(again) != 1 || again[0].Attempts != 2 {
		t.Errorf("after Record with zero NextAttempt leased %v, want the item at once", ids(again))
	}
}

func testLeaseMax(t *testing.T, h *harness) {
	for i := range 5 {
		h.enqueue("", envelope(fmt.Sprintf("r%d@example.net", i)), "x")
	}
	if got := h.lease(2, h.unit(1)); len(got) != 2 {
		t.Errorf("Lease(2) returned %d items", len(got))
	}
	if got := h.lease(10, h.unit(1)); len(got) != 3 {
		t.Errorf("second Lease returned %d items, want the 3 left", len(got))
	}
	if got := h.lease(10, h.unit(1)); len(got) != 0 {
		t.Errorf("third Lease returned %d items, want none", len(got))
	}
}

func testLeaseExpiry(t *testing.T, h *harness) {
	id := h.enqueue("", envelope("bob@example.net"), "x")
	first := h.lease(1, h.unit(2))
	if len(first) != 1 {
		t.Fatalf("Lease returned %d items", len(first))
	}
	if st := h.stats(); st.Leased != 1 || st.Due != 0 {
		t.Errorf("stats of a leased item = %+v", st)
	}
	h.advance(1)
	if got := h.lease(1, h.unit(2)); len(got) != 0 {
		t.Fatalf("item leased twice while the first lease holds")
	}
	h.advance(1.5)
	// The worker holding the first lease crashed: the item is due again.
	second := h.lease(1, h.unit(2))
	if len(second) != 1 || second[0].ID != id {
		t.Fatalf("after lease expiry Lease returned %v, want [%s]", ids(second), id)
	}
	if second[0].Lease.Token == first[0].Lease.Token {
		t.Fatalf("new lease kept token %d", first[0].Lease.Token)
	}
	// The first worker wakes up: its writes are fenced off.
	rs := first[0].Recipients
	rs[0].Status = queue.StatusDelivered
	if err := h.s.Record(h.ctx, first[0].Lease, queue.Update{Recipients: rs, Attempts: 1}); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("Record with a stale lease: %v, want ErrLeaseLost", err)
	}
	if err := h.s.Complete(h.ctx, first[0].Lease); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("Complete with a stale lease: %v, want ErrLeaseLost", err)
	}
	if it := h.inspect(id); it.Recipients[0].Status != queue.StatusPending {
		t.Errorf("stale Record changed the item: %+v", it.Recipients[0])
	}
	if err := h.s.Complete(h.ctx, queue.Lease{ID: id, Token: second[0].Lease.Token + 1000}); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("Complete with a made-up token: %v, want ErrLeaseLost", err)
	}
	if err := h.s.Complete(h.ctx, second[0].Lease); err != nil {
		t.Errorf("Complete with the current lease: %v", err)
	}
}

func testRecordPerRecipient(t *testing.T, h *harness) {
	id := h.enqueue("", envelope("a@example.net", "b@example.net", "c@example.net"), "x")
	it := h.leaseOne(id)
	at := h.now().Truncate(time.Millisecond)
	rs := it.Recipients
	rs[0].Status = queue.StatusDelivered
	rs[0].Reply = queue.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK queued as 1234"}
	rs[0].Host = "mx1.example.net [192.0.2.1]"
	rs[0].LastAttempt = at
	rs[1].Status = queue.StatusFailed
	rs[1].Reply = queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user\nreally"}
	rs[1].Host = "mx1.example.net [192.0.2.1]"
	rs[1].LastAttempt = at
	rs[2].Reply = queue.Reply{Text: "connection lost after the final dot"}
	rs[2].PossibleDuplicate = true
	rs[2].LastAttempt = at
	next := h.now().Add(h.unit(5))
	if err := h.s.Record(h.ctx, it.Lease, queue.Update{Recipients: rs, Attempts: 1, NextAttempt: next, LastError: "c@example.net: unknown outcome"}); err != nil {
		t.Fatal(err)
	}
	got := h.inspect(id)
	if got.Attempts != 1 || got.LastError != "c@example.net: unknown outcome" {
		t.Errorf("Attempts %d LastError %q", got.Attempts, got.LastError)
	}
	for i := range rs {
		g, w := got.Recipients[i], rs[i]
		if !g.LastAttempt.Equal(w.LastAttempt) {
			t.Errorf("recipient %d LastAttempt = %v, want %v", i, g.LastAttempt, w.LastAttempt)
		}
		g.LastAttempt, w.LastAttempt = time.Time{}, time.Time{}
		if g != w {
			t.Errorf("recipient %d = %+v, want %+v", i, g, w)
		}
	}
	if p := got.Pending(); !slices.Equal(p, []int{2}) {
		t.Errorf("Pending = %v, want [2]", p)
	}
	// The lease token stays valid after Record: the worker may still
	// write, for example the mark that a notice was sent.
	rs[1].Reported = true
	if err := h.s.Record(h.ctx, it.Lease, queue.Update{Recipients: rs, Attempts: 1, NextAttempt: next}); err != nil {
		t.Fatalf("second Record with the same lease: %v", err)
	}
	if got := h.inspect(id); !got.Recipients[1].Reported {
		t.Errorf("Reported not stored")
	}
}

func testRecordInvalid(t *testing.T, h *harness) {
	id := h.enqueue("", envelope("a@example.net", "b@example.net"), "x")
	it := h.leaseOne(id)
	err := h.s.Record(h.ctx, it.Lease, queue.Update{Recipients: it.Recipients[:1], Attempts: 1})
	if !errors.Is(err, queue.ErrInvalid) {
		t.Errorf("Record with too few states: %v, want ErrInvalid", err)
	}
	if got := h.inspect(id); got.Attempts != 0 || len(got.Recipients) != 2 {
		t.Errorf("rejected Record changed the item: %+v", got)
	}
	if err := h.s.Record(h.ctx, queue.Lease{ID: "no-such-item", Token: it.Lease.Token}, queue.Update{}); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("Record on an unknown item: %v, want ErrLeaseLost", err)
	}
}

func testComplete(t *testing.T, h *harness) {
	id := h.enqueue("k", envelope("a@example.net"), "x")
	other := h.enqueue("", envelope("b@example.net"), "y")
	items := h.lease(10, h.unit(1))
	if len(items) != 2 {
		t.Fatalf("leased %d", len(items))
	}
	if err := h.s.Complete(h.ctx, items[0].Lease); err != nil {
		t.Fatal(err)
	}
	if _, err := h.s.Inspect(h.ctx, id); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Inspect after Complete: %v, want ErrNotFound", err)
	}
	if _, err := h.s.Body(h.ctx, id); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Body after Complete: %v, want ErrNotFound", err)
	}
	if err := h.s.Complete(h.ctx, items[0].Lease); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("second Complete: %v, want ErrLeaseLost", err)
	}
	if st := h.stats(); st.Items != 1 {
		t.Errorf("Items = %d, want 1", st.Items)
	}
	if got := h.body(other); got != "y" {
		t.Errorf("other body = %q", got)
	}
}

func testConcurrentWorkers(t *testing.T, h *harness) {
	const n, workers = 120, 6
	want := make(map[string]bool)
	for i := range n {
		want[h.enqueue("", envelope(fmt.Sprintf("r%d@example.net", i)), fmt.Sprint(i))] = true
	}
	var mu sync.Mutex
	done := make(map[string]int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range n { // bounded: each round takes at least one item or stops
				items, err := h.s.Lease(h.ctx, 4, h.unit(30))
				if err != nil {
					errs <- err
					return
				}
				if len(items) == 0 {
					return
				}
				for _, it := range items {
					mu.Lock()
					done[it.ID]++
					mu.Unlock()
					if err := h.s.Complete(h.ctx, it.Lease); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for id := range want {
		if done[id] != 1 {
			t.Errorf("item %s leased %d times, want 1", id, done[id])
		}
	}
	if len(done) != n {
		t.Errorf("%d distinct items leased, want %d", len(done), n)
	}
	if st := h.stats(); st.Items != 0 {
		t.Errorf("Items = %d after all completed", st.Items)
	}
}

func testStats(t *testing.T, h *harness) {
	if st := h.stats(); st != (queue.Stats{}) {
		t.Errorf("empty store stats = %+v", st)
	}
	first := h.enqueue("", envelope("a@example.net"), "x")
	created := h.inspect(first).Created
	h.advance(0.5)
	h.enqueue("", envelope("b@example.net"), "x")
	h.enqueue("", envelope("c@example.net"), "x")
	h.enqueue("", envelope("d@example.net"), "x")
	leased := h.lease(2, h.unit(5))
	if len(leased) != 2 {
		t.Fatalf("leased %d", len(leased))
	}
	if err := h.s.Record(h.ctx, leased[1].Lease, queue.Update{Recipients: leased[1].Recipients, Attempts: 1, NextAttempt: h.now().Add(h.unit(3))}); err != nil {
		t.Fatal(err)
	}
	st := h.stats()
	want := queue.Stats{Items: 4, Due: 2, Leased: 1, Deferred: 1}
	gotOldest := st.Oldest
	st.Oldest = time.Time{}
	if st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}
	if !gotOldest.Equal(created) && (gotOldest.Sub(created).Abs() > time.Millisecond) {
		t.Errorf("Oldest = %v, want %v", gotOldest, created)
	}
}

func testList(t *testing.T, h *harness) {
	var all []string
	for i := range 7 {
		all = append(all, h.enqueue("", envelope(fmt.Sprintf("r%d@example.net", i)), "x"))
	}
	var got []string
	after := ""
	for range 10 {
		page, err := h.s.List(h.ctx, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 3 {
			t.Fatalf("List(limit 3) returned %d", len(page))
		}
		if len(page) == 0 {
			break
		}
		got = append(got, ids(page)...)
		after = page[len(page)-1].ID
	}
	if !slices.Equal(got, all) {
		t.Errorf("listed %v, want %v in enqueue order", got, all)
	}
	page, err := h.s.List(h.ctx, "", 0)
	if err != nil || len(page) != 7 {
		t.Errorf("List with no limit returned %d, %v", len(page), err)
	}
}

func testLargeBody(t *testing.T, h *harness) {
	var buf bytes.Buffer
	for i := 0; buf.Len() < 3<<20; i++ {
		fmt.Fprintf(&buf, "line %d of a large message body, with some text to fill it up\r\n", i)
	}
	want := buf.String()
	id := h.enqueue("", envelope("bob@example.net"), want)
	if got := h.body(id); got != want {
		t.Fatalf("large body differs: got %d octets, want %d", len(got), len(want))
	}
	if it := h.inspect(id); it.BodySize != int64(len(want)) {
		t.Errorf("BodySize = %d, want %d", it.BodySize, len(want))
	}
	it := h.leaseOne(id)
	if err := h.s.Complete(h.ctx, it.Lease); err != nil {
		t.Fatal(err)
	}
	if _, err := h.s.Body(h.ctx, id); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Body after Complete: %v, want ErrNotFound", err)
	}
}

func testEmptyBody(t *testing.T, h *harness) {
	id, err := h.s.Enqueue(h.ctx, &queue.Message{Envelope: envelope("bob@example.net")})
	if err != nil {
		t.Fatal(err)
	}
	if got := h.body(id); got != "" {
		t.Errorf("body = %q, want empty", got)
	}
}

func testNotifier(t *testing.T, h *harness) {
	n, ok := h.s.(queue.Notifier)
	if !ok {
		return // optional: the runner polls such stores
	}
	if _, ok, _, err := n.NextDue(h.ctx); err != nil || ok {
		t.Errorf("NextDue on an empty store: ok %v err %v", ok, err)
	}
	_, _, changed, err := n.NextDue(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := h.enqueue("", envelope("bob@example.net"), "x")
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("NextDue channel not closed after Enqueue")
	}
	next, ok, _, err := n.NextDue(h.ctx)
	if err != nil || !ok || next.After(h.now()) {
		t.Errorf("NextDue = %v %v %v, want a due time not after now", next, ok, err)
	}
	it := h.leaseOne(id)
	due := h.now().Add(h.unit(4))
	if err := h.s.Record(h.ctx, it.Lease, queue.Update{Recipients: it.Recipients, Attempts: 1, NextAttempt: due}); err != nil {
		t.Fatal(err)
	}
	next, ok, _, err = n.NextDue(h.ctx)
	if err != nil || !ok || next.Sub(due).Abs() > time.Millisecond {
		t.Errorf("NextDue = %v %v %v, want %v", next, ok, err, due)
	}
}

func testClosed(t *testing.T, h *harness) {
	h.enqueue("", envelope("bob@example.net"), "x")
	if err := h.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err := h.s.Enqueue(h.ctx, &queue.Message{Envelope: envelope("bob@example.net"), Body: strings.NewReader("x")})
	if !errors.Is(err, queue.ErrClosed) {
		t.Errorf("Enqueue after Close: %v, want ErrClosed", err)
	}
	if _, err := h.s.Lease(h.ctx, 1, h.unit(1)); !errors.Is(err, queue.ErrClosed) {
		t.Errorf("Lease after Close: %v, want ErrClosed", err)
	}
	if err := h.s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
