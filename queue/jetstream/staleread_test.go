package jetstream

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// A redelivered item is checked against its latest version. Right after a
// partition heals, the server that was cut off can still answer reads as
// the stream's leader, from a state without the item; taking that answer
// for "a newer version replaced it" would acknowledge, and so delete, the
// only copy. The delivery must instead come back and be leased.
func TestRedeliveryStaleReadKeepsItem(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := startNode(t)
	s := prefetchStore(t, n.url(), "staleread", time.Second)
	id := enqueueN(t, s, 1)[0]
	first, err := s.Lease(ctx, 1, 0)
	if err != nil || len(first) != 1 {
		t.Fatalf("first lease: %d items, %v", len(first), err)
	}
	// The runner stalls; the next delivery's check reads a stale "no
	// such message" once, as from a deposed leader.
	var stale atomic.Int32
	stale.Store(1)
	s.getLast = func(ctx context.Context, subj string) (*natsjs.RawStreamMsg, error) {
		if subj == s.itemSubjects(id) && stale.Add(-1) >= 0 {
			return nil, natsjs.ErrMsgNotFound
		}
		return s.stream.GetLastMsgForSubject(ctx, subj)
	}
	var again *queue.Item
	for again == nil && ctx.Err() == nil {
		items, err := s.Lease(ctx, 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 1 {
			again = items[0]
			break
		}
		if _, err := s.Inspect(ctx, id); errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("item %s deleted after a stale read during its redelivery", id)
		}
		_ = sleepCtx(ctx, 50*time.Millisecond)
	}
	if again == nil {
		t.Fatalf("item %s not delivered again", id)
	}
	if stale.Load() >= 0 {
		t.Fatal("the stale read was never consulted")
	}
	if err := s.Complete(ctx, again.Lease); err != nil {
		t.Fatal(err)
	}
}
