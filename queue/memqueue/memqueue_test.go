package memqueue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/memqueue"
	"github.com/hamail/hamail/queue/queuetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	queuetest.Run(t, func(t *testing.T, now func() time.Time) queue.Store {
		return memqueue.New(&memqueue.Options{Now: now})
	})
}

func TestKeyRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := queuetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	s := memqueue.New(&memqueue.Options{Now: clock.Now, KeyRetention: time.Hour})
	m := func() *queue.Message {
		return &queue.Message{Key: "order-1", Envelope: queue.Envelope{Recipients: []queue.Recipient{{Address: "bob@example.net"}}}, Body: strings.NewReader("x")}
	}
	id, err := s.Enqueue(ctx, m())
	if err != nil {
		t.Fatal(err)
	}
	items, err := s.Lease(ctx, 1, time.Minute)
	if err != nil || len(items) != 1 {
		t.Fatal(items, err)
	}
	if err := s.Complete(ctx, items[0].Lease); err != nil {
		t.Fatal(err)
	}
	clock.Advance(59 * time.Minute)
	if again, err := s.Enqueue(ctx, m()); err != nil || again != id {
		t.Errorf("within the retention: %s, %v; want %s", again, err, id)
	}
	clock.Advance(2 * time.Minute)
	if third, err := s.Enqueue(ctx, m()); err != nil || third == id {
		t.Errorf("after the retention: %s, %v; want a new item", third, err)
	}
}
