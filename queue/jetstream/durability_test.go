package jetstream

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
)

// Enqueue returns only once a quorum of the configured replicas stored the
// item: with two of three servers down it fails instead of succeeding, and
// what it acknowledged, due or scheduled for a retry, is all there after
// every server of the cluster stopped and started again.
func TestEnqueueDurability(t *testing.T) {
	t.Parallel()
	const (
		total     = 100
		scheduled = 20
	)
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	s, err := New(connect(t, c.urls()), &Options{Stream: "DURABLE", Subject: "durable", AckWait: 5 * time.Second, Prefetch: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}

	ids := make([]string, total)
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for w := range 10 {
		wg.Go(func() {
			for i := w; i < total; i += 10 {
				id, err := s.Enqueue(ctx, &queue.Message{Envelope: testEnvelope(i), Body: strings.NewReader(testBody)})
				if err != nil {
					errs <- err
					return
				}
				ids[i] = id
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Some items get a retry time, as after a failed attempt.
	due := map[string]time.Time{}
	for len(due) < scheduled {
		items, err := s.Lease(ctx, scheduled-len(due), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			next := time.Now().Add(4 * time.Second)
			if err := s.Record(ctx, it.Lease, update(it, 1, next)); err != nil {
				t.Fatal(err)
			}
			due[it.ID] = next
		}
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
	}

	// Quorum lost: an enqueue must not report success.
	for _, n := range c.nodes[1:] {
		n.shutdown()
	}
	qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
	if id, err := s.Enqueue(qctx, &queue.Message{Envelope: testEnvelope(total), Body: strings.NewReader(testBody)}); err == nil {
		t.Errorf("Enqueue with one of three servers up returned %s, want an error", id)
	}
	qcancel()

	// The whole cluster stops and starts again with its store directories.
	c.nodes[0].shutdown()
	for _, n := range c.nodes {
		n.restart()
	}
	c.waitMetaLeader()

	got := map[string]*queue.Item{}
	all := func() bool {
		for _, id := range ids {
			if got[id] == nil {
				return false
			}
		}
		return true
	}
	// The enqueue that failed for want of a quorum may or may not have
	// been stored: its outcome is unknown, so it is not counted.
	for !all() && ctx.Err() == nil {
		items, err := s.Lease(ctx, total, time.Minute)
		if err != nil {
			continue // the stream may be electing its leader
		}
		leasedAt := time.Now()
		for _, it := range items {
			if got[it.ID] != nil {
				t.Errorf("item %s leased twice", it.ID)
			}
			got[it.ID] = it
			if next, ok := due[it.ID]; ok {
				if leasedAt.Before(next) {
					t.Errorf("retry of %s leased at %v, before its time %v", it.ID, leasedAt, next)
				}
				if it.Attempts != 1 {
					t.Errorf("retry of %s has %d attempts, want 1", it.ID, it.Attempts)
				}
			}
		}
	}
	for _, id := range ids {
		if got[id] == nil {
			t.Errorf("acknowledged item %s missing after the cluster restarted", id)
		}
	}
	// Bodies came through too.
	for _, id := range ids[:5] {
		b, err := s.Body(ctx, id)
		if err != nil {
			t.Fatalf("body of %s: %v", id, err)
		}
		p, _ := io.ReadAll(queue.NewBodyReader(b))
		if string(p) != testBody {
			t.Errorf("body of %s changed across the restart", id)
		}
	}
}
