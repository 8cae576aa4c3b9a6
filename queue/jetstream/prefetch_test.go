package jetstream

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
)

// prefetchStore opens a store on a single node with the given AckWait.
func prefetchStore(t *testing.T, urls, name string, ackWait time.Duration) *Store {
	t.Helper()
	s, err := New(connect(t, urls), &Options{Stream: strings.ToUpper(name), Subject: name, Replicas: 1, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func enqueueN(t *testing.T, s *Store, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		id, err := s.Enqueue(context.Background(), &queue.Message{Envelope: testEnvelope(i), Body: strings.NewReader(testBody)})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

func (s *Store) buffered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.buf)
}

// A prefetched delivery that waited longer than the hold is never handed
// out: the server's AckWait for it started at the pull, and once it ends
// the server may give the item to another runner.
func TestPrefetchStaleNotHandedOut(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := startNode(t)
	s := prefetchStore(t, n.url(), "stale", 4*time.Second)
	enqueueN(t, s, 5)
	pulled := time.Now()
	first, err := s.Lease(ctx, 1, 0)
	if err != nil || len(first) != 1 {
		t.Fatalf("first lease: %d items, %v", len(first), err)
	}
	if s.buffered() == 0 {
		t.Fatal("nothing prefetched beyond the one item asked for")
	}
	// Age the buffer past AckWait, as if this runner had stalled.
	s.mu.Lock()
	for i := range s.buf {
		s.buf[i].at = s.buf[i].at.Add(-2 * s.opts.AckWait)
	}
	s.mu.Unlock()
	before := time.Now()
	got := map[string]bool{first[0].ID: true}
	// They come back when the server's AckWait for them ends: a
	// negative acknowledgement this late could reach a delivery the
	// server has made to another runner since. Bounded in rounds and
	// time.
	deadline := time.Now().Add(4 * s.opts.AckWait)
	for round := 0; len(got) < 5 && round < 500 && time.Now().Before(deadline); round++ {
		items, err := s.Lease(ctx, 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			s.mu.Lock()
			h := s.held[it.ID]
			s.mu.Unlock()
			if h == nil || h.extended.Before(before) {
				t.Fatalf("item %s handed out from a delivery pulled before the lease call (server lease started %v)", it.ID, h.extended)
			}
			if got[it.ID] {
				t.Fatalf("item %s leased twice", it.ID)
			}
			if d := time.Since(pulled); d < s.opts.AckWait*9/10 {
				t.Fatalf("item %s back %v after its pull, before the server's AckWait of %v ended: handed back late", it.ID, d, s.opts.AckWait)
			}
			got[it.ID] = true
		}
	}
	if len(got) != 5 {
		t.Fatalf("%d of 5 items leased again after the stale buffer went back", len(got))
	}
}

// Stats counts prefetched deliveries as due, not leased, and Close hands
// them back to the server at once, so another runner gets them long before
// AckWait.
func TestPrefetchStatsAndClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := startNode(t)
	const ackWait = 40 * time.Second
	a := prefetchStore(t, n.url(), "pclose", ackWait)
	b := prefetchStore(t, n.url(), "pclose", ackWait)
	ids := enqueueN(t, a, 5)
	items, err := a.Lease(ctx, 1, 0)
	if err != nil || len(items) != 1 {
		t.Fatalf("lease: %d items, %v", len(items), err)
	}
	buffered := a.buffered()
	st, err := a.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Items != 5 || st.Leased != 1 || st.Due != 4 {
		t.Errorf("stats with %d prefetched: %+v, want 5 items, 1 leased, 4 due", buffered, st)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// Well inside AckWait: only the Naks of Close can make these due.
	got := map[string]bool{}
	deadline := time.Now().Add(ackWait / 4)
	for len(got) < len(ids) && time.Now().Before(deadline) {
		items, err := b.Lease(ctx, 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			got[it.ID] = true
		}
	}
	if len(got) != len(ids) {
		t.Fatalf("after Close another store leased %d of %d items within %v", len(got), len(ids), ackWait/4)
	}
	for _, id := range ids {
		if !got[id] {
			t.Errorf("item %s not released by Close", id)
		}
	}
}
