package jetstream

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// A version that cannot be decoded is moved to the quarantine subject with
// its reason; Lease hands out the good items beside an error that wraps
// ErrCorrupt and names the bad ones, and the queue keeps flowing.
func TestCorruptRecordQuarantined(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := startNode(t)
	s := prefetchStore(t, n.url(), "corrupt", 30*time.Second)
	good := enqueueN(t, s, 2)

	// Garbage, and a well-formed record filed under another item's subject.
	const garbageID, misfiledID = "garbage0000000000000", "misfiled000000000000"
	if _, err := s.js.Publish(ctx, s.readySubject(garbageID), []byte("hmq1\xff\xff\xff\xff not a record")); err != nil {
		t.Fatal(err)
	}
	// The garbage holds an idempotency key.
	if _, err := s.js.Publish(ctx, s.keySubject("order-9"), []byte(garbageID)); err != nil {
		t.Fatal(err)
	}
	raw, err := s.stream.GetLastMsgForSubject(ctx, s.readySubject(good[0]))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.js.Publish(ctx, s.readySubject(misfiledID), raw.Data); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Inspect(ctx, garbageID); !errors.Is(err, queue.ErrCorrupt) {
		t.Errorf("Inspect of an undecodable record: %v, want ErrCorrupt", err)
	}
	// List goes past it, and names it.
	listed, err := s.List(ctx, "", 0)
	if !errors.Is(err, queue.ErrCorrupt) || !strings.Contains(err.Error(), garbageID) || !strings.Contains(err.Error(), misfiledID) {
		t.Errorf("List over undecodable records: %v, want ErrCorrupt naming %s and %s", err, garbageID, misfiledID)
	}
	if got := ids(listed); len(got) != 2 || got[0] != good[0] || got[1] != good[1] {
		t.Errorf("List returned %v beside the undecodable records, want %v", got, good)
	}

	var leased []*queue.Item
	var corruptErr error
	for round := 0; len(leased) < 2 && round < 20; round++ {
		items, err := s.Lease(ctx, 10, time.Minute)
		if err != nil {
			if !errors.Is(err, queue.ErrCorrupt) {
				t.Fatalf("lease: %v", err)
			}
			corruptErr = err
		}
		leased = append(leased, items...)
	}
	if corruptErr == nil {
		t.Fatal("Lease reported no corrupt record")
	}
	var qe *queue.Error
	if !errors.As(corruptErr, &qe) || !strings.Contains(qe.ID, garbageID) || !strings.Contains(qe.ID, misfiledID) {
		t.Errorf("corrupt-record error %v does not name %s and %s", corruptErr, garbageID, misfiledID)
	}
	if got := ids(leased); len(got) != 2 || got[0] != good[0] || got[1] != good[1] {
		t.Errorf("leased %v beside the corrupt records, want %v", got, good)
	}

	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Quarantined != 2 || st.Items != 2 {
		t.Errorf("stats %+v, want 2 quarantined and the 2 good items", st)
	}
	q, err := s.stream.GetLastMsgForSubject(ctx, s.quarSubject(garbageID))
	if err != nil {
		t.Fatalf("quarantined record: %v", err)
	}
	if !bytes.HasPrefix(q.Data, []byte("hmq1\xff")) || q.Header.Get("Hamail-Quarantine-Reason") == "" || q.Header.Get("Hamail-Quarantine-Subject") != s.readySubject(garbageID) {
		t.Errorf("quarantine keeps %q with headers %v", q.Data, q.Header)
	}
	// A quarantined item is gone: its key is free for a new message.
	again, err := s.Enqueue(ctx, &queue.Message{Key: "order-9", Envelope: testEnvelope(9), Body: strings.NewReader(testBody)})
	if err != nil || again == garbageID {
		t.Fatalf("enqueue with the key of a quarantined item: %s, %v; want a new item", again, err)
	}
	// Set aside for good: the next leases neither return nor report them.
	for _, it := range leased {
		if err := s.Complete(ctx, it.Lease); err != nil {
			t.Fatal(err)
		}
	}
	if items, err := s.Lease(ctx, 10, time.Minute); err != nil || len(items) != 1 || items[0].ID != again {
		t.Errorf("lease after quarantine: %v, %v; want only %s", ids(items), err, again)
	}
}

func ids(items []*queue.Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.ID
	}
	return out
}

// holdUntilTakenOver leases the one queued item through a, lets a's lease
// run out without renewal, and returns a's lease and b's lease of the
// redelivered item, and a copy of a's lease entry as it was when a leased
// the item.
func holdUntilTakenOver(t *testing.T, a, b *Store) (la, lb *queue.Item, ha held) {
	t.Helper()
	ctx := context.Background()
	items, err := a.Lease(ctx, 1, 0) // shortest lease: AckWait, never renewed
	if err != nil || len(items) != 1 {
		t.Fatalf("lease by a: %d items, %v", len(items), err)
	}
	la = items[0]
	a.mu.Lock()
	ha = *a.held[la.ID]
	a.mu.Unlock()
	deadline := time.Now().Add(10 * a.opts.AckWait)
	for lb == nil && time.Now().Before(deadline) {
		items, err := b.Lease(ctx, 1, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 1 {
			lb = items[0]
		}
	}
	if lb == nil {
		t.Fatal("the item was not redelivered to b after a's lease ran out")
	}
	if lb.ID != la.ID {
		t.Fatalf("b leased %s, want %s", lb.ID, la.ID)
	}
	return la, lb, ha
}

func update(it *queue.Item, attempts int, next time.Time) queue.Update {
	rs := append([]queue.RecipientState(nil), it.Recipients...)
	return queue.Update{Recipients: rs, Attempts: attempts, NextAttempt: next, LastError: "451 4.3.0 try later"}
}

// Leases held by different Store values (runners on different machines)
// are fenced: once the server gave the item to b, a can neither record nor
// complete it, whether a notices from its own lease clock or only from the
// server's compare-and-set on the item's latest version.
func TestFencingAcrossStores(t *testing.T) {
	t.Parallel()
	n := startNode(t)
	const ackWait = time.Second

	t.Run("LeaseClock", func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		a := prefetchStore(t, n.url(), "fence1", ackWait)
		b := prefetchStore(t, n.url(), "fence1", ackWait)
		enqueueN(t, a, 1)
		la, lb, _ := holdUntilTakenOver(t, a, b)
		if err := a.Record(ctx, la.Lease, update(la, 1, time.Now())); !errors.Is(err, queue.ErrLeaseLost) {
			t.Errorf("Record by the runner that lost the lease: %v, want ErrLeaseLost", err)
		}
		if err := a.Complete(ctx, la.Lease); !errors.Is(err, queue.ErrLeaseLost) {
			t.Errorf("Complete by the runner that lost the lease: %v, want ErrLeaseLost", err)
		}
		if err := b.Complete(ctx, lb.Lease); err != nil {
			t.Errorf("Complete by the new holder: %v", err)
		}
	})

	// a stalled between its lease check and its write (a paused process):
	// its own clock says the lease holds, the server's compare-and-set
	// decides. Whoever writes first wins, the other gets ErrLeaseLost.
	for _, first := range []string{"new holder", "old holder"} {
		t.Run("CompareAndSet/"+strings.ReplaceAll(first, " ", "-")+"-first", func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			name := "fence2"
			if first == "old holder" {
				name = "fence3"
			}
			a := prefetchStore(t, n.url(), name, ackWait)
			b := prefetchStore(t, n.url(), name, ackWait)
			enqueueN(t, a, 1)
			la, lb, ha := holdUntilTakenOver(t, a, b)
			// a's lease clock is made to believe the lease was just
			// renewed: the delivery a holds is the one the server gave
			// b since.
			a.mu.Lock()
			ha.extended = time.Now()
			a.held[la.ID] = &ha
			a.mu.Unlock()
			winner, winLease, loser, loseLease := b, lb, a, la
			if first == "old holder" {
				winner, winLease, loser, loseLease = a, la, b, lb
			}
			later := time.Now().Add(time.Hour)
			if err := winner.Record(ctx, winLease.Lease, update(winLease, 1, later)); err != nil {
				t.Fatalf("Record by the first writer: %v", err)
			}
			if err := loser.Record(ctx, loseLease.Lease, update(loseLease, 7, time.Now())); !errors.Is(err, queue.ErrLeaseLost) {
				t.Errorf("Record by the second writer: %v, want ErrLeaseLost", err)
			}
			if err := loser.Complete(ctx, loseLease.Lease); !errors.Is(err, queue.ErrLeaseLost) {
				t.Errorf("Complete by the second writer: %v, want ErrLeaseLost", err)
			}
			it, err := winner.Inspect(ctx, la.ID)
			if err != nil {
				t.Fatal(err)
			}
			if it.Attempts != 1 || it.NextAttempt.Sub(later).Abs() > time.Millisecond {
				t.Errorf("item after both writes: attempts %d, next %v; want the first writer's 1, %v", it.Attempts, it.NextAttempt, later)
			}
		})
	}
}

// Bodies larger than the server's max payload live in the object store,
// and are deleted with their item; a keyed enqueue that finds the key
// taken deletes the body it stored.
func TestLargeBodyObjectDeleted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := startNode(t)
	s := prefetchStore(t, n.url(), "large", 30*time.Second)
	big := bytes.Repeat([]byte("a line of a large message body\r\n"), (2<<20)/32) // 2 MiB, above max_payload
	if int64(len(big)) <= s.nc.MaxPayload() {
		t.Fatalf("body of %d octets fits the max payload %d", len(big), s.nc.MaxPayload())
	}
	id, err := s.Enqueue(ctx, &queue.Message{Key: "big-1", Envelope: testEnvelope(1), Body: bytes.NewReader(big)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.bodies.GetInfo(ctx, id); err != nil {
		t.Fatalf("body object of %s: %v", id, err)
	}
	// Same key: the existing item wins, the second body is not kept.
	again, err := s.Enqueue(ctx, &queue.Message{Key: "big-1", Envelope: testEnvelope(1), Body: bytes.NewReader(big)})
	if err != nil || again != id {
		t.Fatalf("second enqueue with the key: %s, %v; want %s", again, err, id)
	}
	objects := func() int {
		infos, err := s.bodies.List(ctx)
		if errors.Is(err, natsjs.ErrNoObjectsFound) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		return len(infos)
	}
	if got := objects(); got != 1 {
		t.Errorf("%d body objects after a duplicate enqueue, want 1", got)
	}

	items, err := s.Lease(ctx, 1, time.Minute)
	if err != nil || len(items) != 1 {
		t.Fatalf("lease: %d, %v", len(items), err)
	}
	// A retry keeps the body; completion deletes it.
	if err := s.Record(ctx, items[0].Lease, update(items[0], 1, time.Now())); err != nil {
		t.Fatal(err)
	}
	b, err := s.Body(ctx, id)
	if err != nil || b.Size() != int64(len(big)) {
		t.Fatalf("body after Record: %v", err)
	}
	var it *queue.Item
	for round := 0; it == nil && round < 50; round++ {
		items, err := s.Lease(ctx, 1, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 1 {
			it = items[0]
		}
	}
	if it == nil {
		t.Fatal("retried item not leased again")
	}
	if err := s.Complete(ctx, it.Lease); err != nil {
		t.Fatal(err)
	}
	if _, err := s.bodies.GetInfo(ctx, id); !errors.Is(err, natsjs.ErrObjectNotFound) {
		t.Errorf("body object after Complete: %v, want ErrObjectNotFound", err)
	}
	if got := objects(); got != 0 {
		t.Errorf("%d body objects left after completion", got)
	}
	// The key is free again once its item completed.
	if raw, err := s.stream.GetLastMsgForSubject(ctx, s.keySubject("big-1")); !errors.Is(err, natsjs.ErrMsgNotFound) {
		t.Errorf("key claim after completion: %v, %v", raw, err)
	}
}

// A lease longer than AckWait is renewed with confirmed in-progress
// acknowledgements: no other runner gets the item meanwhile, and the
// holder can still complete it at the end.
func TestLeaseRenewedBeyondAckWait(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := startNode(t)
	a := prefetchStore(t, n.url(), "renew", time.Second)
	b := prefetchStore(t, n.url(), "renew", time.Second)
	enqueueN(t, a, 1)
	items, err := a.Lease(ctx, 1, 4*time.Second)
	if err != nil || len(items) != 1 {
		t.Fatalf("lease: %d items, %v", len(items), err)
	}
	// Three AckWaits, each b's Lease waiting up to a tenth of a second.
	start := time.Now()
	for time.Since(start) < 3*time.Second {
		got, err := b.Lease(ctx, 1, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 0 {
			t.Fatalf("item leased by another runner %v into a renewed lease", time.Since(start))
		}
	}
	if err := a.Complete(ctx, items[0].Lease); err != nil {
		t.Fatalf("Complete after three AckWaits of a renewed lease: %v", err)
	}
}

// A publish retried after its answer was lost (a leader election) carries
// the same Nats-Msg-Id and is stored once.
func TestEnqueueRetryStoredOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := startNode(t)
	s := prefetchStore(t, n.url(), "dedup", 30*time.Second)
	id := enqueueN(t, s, 1)[0]
	raw, err := s.stream.GetLastMsgForSubject(ctx, s.itemSubjects(id))
	if err != nil {
		t.Fatal(err)
	}
	rec, body, err := decodeRecord(raw.Data)
	if err != nil {
		t.Fatal(err)
	}
	pa, err := s.publishVersion(ctx, rec, body, 0, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if !pa.Duplicate || pa.Sequence != raw.Sequence {
		t.Errorf("repeated first publish: %+v, want a duplicate of sequence %d", pa, raw.Sequence)
	}
	subs, err := s.queueSubjects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := subs["ready"][id]; got != 1 {
		t.Errorf("%d stored versions of %s, want 1", got, id)
	}
}

// SweepBodies deletes body objects whose item is gone once they are old
// enough, and keeps those of queued items and young ones.
func TestSweepBodies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := startNode(t)
	s := prefetchStore(t, n.url(), "sweep", 30*time.Second)
	big := bytes.Repeat([]byte("x"), 1<<20)
	kept, err := s.Enqueue(ctx, &queue.Message{Envelope: testEnvelope(1), Body: bytes.NewReader(big)})
	if err != nil {
		t.Fatal(err)
	}
	// The body of an enqueue that stopped before its item was stored.
	const orphan = "orphan00000000000000"
	if _, err := s.bodies.PutBytes(ctx, orphan, big); err != nil {
		t.Fatal(err)
	}
	// The body of an item set aside in quarantine stays for inspection.
	const quarantined = "quarantined000000000"
	if _, err := s.bodies.PutBytes(ctx, quarantined, big); err != nil {
		t.Fatal(err)
	}
	if _, err := s.js.Publish(ctx, s.quarSubject(quarantined), []byte("hmq1 damaged")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.SweepBodies(ctx, 0); err != nil || got != 0 {
		t.Fatalf("sweep of young objects deleted %d, %v; want none", got, err)
	}
	// An hour later, as seen by another store on the same stream.
	later, err := New(connect(t, n.url()), &Options{Stream: "SWEEP", Subject: "sweep", Replicas: 1, AckWait: 30 * time.Second, Now: func() time.Time { return time.Now().Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { later.Close() })
	if got, err := later.SweepBodies(ctx, time.Minute); err != nil || got != 1 {
		t.Fatalf("sweep deleted %d, %v; want the one orphan", got, err)
	}
	if _, err := s.bodies.GetInfo(ctx, orphan); !errors.Is(err, natsjs.ErrObjectNotFound) {
		t.Errorf("orphan body after the sweep: %v", err)
	}
	if _, err := s.bodies.GetInfo(ctx, quarantined); err != nil {
		t.Errorf("body of a quarantined item after the sweep: %v", err)
	}
	if b, err := s.Body(ctx, kept); err != nil || b.Size() != int64(len(big)) {
		t.Errorf("body of a queued item after the sweep: %v", err)
	}
}
