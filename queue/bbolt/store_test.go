package bbolt_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
	"github.com/hamail/hamail/queue/queuetest"
)

func open(t testing.TB, path string, o *bbolt.Options) *bbolt.Store {
	t.Helper()
	s, err := bbolt.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func msg(rcpt, body string) *queue.Message {
	return &queue.Message{
		Envelope: queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: rcpt}}},
		Body:     strings.NewReader(body),
	}
}

func readBody(t *testing.T, s queue.Store, id string) string {
	t.Helper()
	b, err := s.Body(context.Background(), id)
	if err != nil {
		t.Fatalf("Body(%s): %v", id, err)
	}
	defer b.Close()
	p, err := io.ReadAll(queue.NewBodyReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return string(p)
}

func TestReopenKeepsEverything(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := bbolt.Open(path, &bbolt.Options{InlineBodyMax: 100})
	if err != nil {
		t.Fatal(err)
	}
	small := "Subject: small\r\n\r\nhi\r\n"
	large := strings.Repeat("a large body line\r\n", 100)
	a, err := s.Enqueue(ctx, &queue.Message{Key: "k1", Envelope: queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: "bob@example.net", Notify: queue.NotifyFailure}, {Address: "carol@example.net"}}, EnvID: "E1", Ret: queue.RetFull}, Body: strings.NewReader(small)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Enqueue(ctx, msg("dave@example.net", large))
	if err != nil {
		t.Fatal(err)
	}
	items, err := s.Lease(ctx, 1, time.Hour)
	if err != nil || len(items) != 1 || items[0].ID != a {
		t.Fatalf("Lease = %v, %v", items, err)
	}
	rs := items[0].Recipients
	rs[0].Status = queue.StatusDelivered
	rs[0].Reply = queue.Reply{Code: 250, Enhanced: "2.0.0", Text: "ok"}
	next := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	if err := s.Record(ctx, items[0].Lease, queue.Update{Recipients: rs, Attempts: 1, NextAttempt: next, LastError: "carol: 451"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path, &bbolt.Options{InlineBodyMax: 100})
	it, err := s.Inspect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if it.Attempts != 1 || it.LastError != "carol: 451" || !it.NextAttempt.Equal(next) || it.Envelope.EnvID != "E1" ||
		it.Recipients[0].Status != queue.StatusDelivered || it.Recipients[0].Reply.Code != 250 || it.Recipients[1].Status != queue.StatusPending {
		t.Errorf("after reopen: %+v", it)
	}
	if got := readBody(t, s, a); got != small {
		t.Errorf("small body after reopen = %q", got)
	}
	if got := readBody(t, s, b); got != large {
		t.Errorf("spooled body after reopen differs (%d octets)", len(got))
	}
	if id, err := s.Enqueue(ctx, &queue.Message{Key: "k1", Envelope: it.Envelope}); err != nil || id != a {
		t.Errorf("key after reopen gave %s, %v; want %s", id, err, a)
	}
	// The lease token survives the restart, so the old worker's writes are
	// still fenced after the item is leased again.
	if err := s.Complete(ctx, items[0].Lease); err != nil {
		t.Errorf("Complete with the lease from before the restart: %v", err)
	}
}

func TestSpoolOrphansRemoved(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := bbolt.Open(path, &bbolt.Options{InlineBodyMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Enqueue(ctx, msg("bob@example.net", "kept"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(path+".spool", queue.NewID(time.Now()))
	if err := os.WriteFile(orphan, []byte("half a body"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, &bbolt.Options{InlineBodyMax: -1})
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphaned spool file still there: %v", err)
	}
	if got := readBody(t, s, id); got != "kept" {
		t.Errorf("body of the queued item = %q", got)
	}
	items, err := s.Lease(ctx, 1, time.Minute)
	if err != nil || len(items) != 1 {
		t.Fatal(items, err)
	}
	if err := s.Complete(ctx, items[0].Lease); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(path+".spool", id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spool file of a completed item still there: %v", err)
	}
}

func TestCorruptRecordQuarantined(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := bbolt.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 3 {
		id, err := s.Enqueue(ctx, msg(fmt.Sprintf("r%d@example.net", i), "x"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Flip a byte of the middle record, as a bad sector would.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("msgs"))
		v := append([]byte(nil), b.Get([]byte(ids[1]))...)
		v[len(v)-3] ^= 0x20
		return b.Put([]byte(ids[1]), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path, nil)
	if _, err := s.Inspect(ctx, ids[1]); !errors.Is(err, queue.ErrCorrupt) || !strings.Contains(err.Error(), ids[1]) {
		t.Errorf("Inspect of the corrupt record: %v, want ErrCorrupt naming %s", err, ids[1])
	}
	items, err := s.Lease(ctx, 10, time.Minute)
	if !errors.Is(err, queue.ErrCorrupt) || !strings.Contains(err.Error(), ids[1]) {
		t.Errorf("Lease error = %v, want ErrCorrupt naming %s", err, ids[1])
	}
	if len(items) != 2 || items[0].ID != ids[0] || items[1].ID != ids[2] {
		t.Fatalf("Lease returned %d items, want the 2 good ones", len(items))
	}
	for _, it := range items {
		if err := s.Complete(ctx, it.Lease); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Items != 0 || st.Quarantined != 1 {
		t.Errorf("stats = %+v, want no items and 1 quarantined", st)
	}
	q, err := s.Quarantined(ctx)
	if err != nil || len(q) != 1 || q[0].ID != ids[1] || !strings.Contains(q[0].Reason, "checksum") || len(q[0].Raw) == 0 {
		t.Errorf("Quarantined() = %+v, %v; want %s with its reason and bytes", q, err, ids[1])
	}
	if items, err := s.Lease(ctx, 10, time.Minute); err != nil || len(items) != 0 {
		t.Errorf("Lease after quarantine = %v, %v", items, err)
	}
	// The rest keeps flowing.
	if _, err := s.Enqueue(ctx, msg("bob@example.net", "after")); err != nil {
		t.Fatal(err)
	}
}

func TestStorageFull(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queue.db")
	s := open(t, path, &bbolt.Options{MaxSize: 1 << 20})
	body := strings.Repeat("x", 16<<10)
	var ok []string
	var full error
	for i := range 200 {
		id, err := s.Enqueue(ctx, msg(fmt.Sprintf("r%d@example.net", i), body))
		if err != nil {
			full = err
			break
		}
		ok = append(ok, id)
	}
	if !errors.Is(full, queue.ErrStorageFull) {
		t.Fatalf("after %d enqueues: error %v, want ErrStorageFull", len(ok), full)
	}
	if len(ok) < 30 {
		t.Fatalf("only %d enqueues of 16 KiB fit in 1 MiB", len(ok))
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() > 2<<20 {
		t.Errorf("file size %d, want at most the cap plus its reserve (%v)", fi.Size(), err)
	}
	// Nothing of the failed enqueue is stored; everything before it is.
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Items != len(ok) {
		t.Errorf("Items = %d, want %d", st.Items, len(ok))
	}
	// Draining makes room again.
	items, err := s.Lease(ctx, len(ok), time.Minute)
	if err != nil || len(items) != len(ok) {
		t.Fatalf("Lease on a full store: %d items, %v", len(items), err)
	}
	for _, it := range items {
		if got := readBody(t, s, it.ID); got != body {
			t.Fatalf("body of %s damaged", it.ID)
		}
		if err := s.Complete(ctx, it.Lease); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Enqueue(ctx, msg("bob@example.net", body)); err != nil {
		t.Errorf("Enqueue after draining: %v", err)
	}
}

func TestConcurrentEnqueueDurable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := bbolt.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	const producers, each = 32, 10
	var mu sync.Mutex
	want := map[string]string{}
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				body := fmt.Sprintf("message %d/%d", p, i)
				id, err := s.Enqueue(ctx, msg("bob@example.net", body))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				want[id] = body
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, nil)
	if len(want) != producers*each {
		t.Fatalf("%d distinct IDs, want %d", len(want), producers*each)
	}
	for id, body := range want {
		if got := readBody(t, s, id); got != body {
			t.Fatalf("body of %s = %q, want %q", id, got, body)
		}
	}
}

// Under a steady load of enqueues and completions, the file stops growing:
// bbolt reuses the pages freed by completed items.
func TestDiskUseBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queue.db")
	s := open(t, path, nil)
	body := strings.Repeat("y", 8<<10)
	const workers, backlog = 8, 50
	cycle := func(n int) {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range n {
					if _, err := s.Enqueue(ctx, msg(fmt.Sprintf("w%d-%d@example.net", w, i), body)); err != nil {
						t.Error(err)
						return
					}
					items, err := s.Lease(ctx, 1, time.Minute)
					if err != nil {
						t.Error(err)
						return
					}
					for _, it := range items {
						if err := s.Complete(ctx, it.Lease); err != nil {
							t.Error(err)
							return
						}
					}
				}
			})
		}
		wg.Wait()
	}
	// A standing backlog, as a queue under load has.
	for i := range backlog {
		if _, err := s.Enqueue(ctx, msg(fmt.Sprintf("backlog%d@example.net", i), body)); err != nil {
			t.Fatal(err)
		}
	}
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	cycle(100)
	warm := size()
	cycle(300)
	after := size()
	t.Logf("file size after %d cycles: %d KiB; after %d more: %d KiB", workers*100, warm>>10, workers*300, after>>10)
	if after > warm*2 && after > warm+(4<<20) {
		t.Errorf("file grew from %d to %d octets under steady load", warm, after)
	}
}

// A body that is gone or has the wrong length is reported as corrupt,
// naming the item, never handed out as a different message.
func TestDamagedBodyIsCorrupt(t *testing.T) {
	t.Parallel()
	const body = "Subject: hello\r\n\r\nthe body\r\n"
	for _, tc := range []struct {
		name   string
		inline int
		damage func(t *testing.T, path, id string)
	}{
		{"spool file removed", -1, func(t *testing.T, path, id string) {
			if err := os.Remove(filepath.Join(path+".spool", id)); err != nil {
				t.Fatal(err)
			}
		}},
		{"spool file truncated", -1, func(t *testing.T, path, id string) {
			if err := os.Truncate(filepath.Join(path+".spool", id), 5); err != nil {
				t.Fatal(err)
			}
		}},
		{"inline body removed", 0, func(t *testing.T, path, id string) {
			changeBucket(t, path, "bodies", func(b *bolt.Bucket) error { return deleteChunks(b, id) })
		}},
		{"inline body truncated", 0, func(t *testing.T, path, id string) {
			changeBucket(t, path, "bodies", func(b *bolt.Bucket) error {
				if err := deleteChunks(b, id); err != nil {
					return err
				}
				return b.Put(binary.BigEndian.AppendUint32([]byte(id), 0), []byte(body[:7]))
			})
		}},
		{"inline body chunk missing", 0, func(t *testing.T, path, id string) {
			// Of the right length, but not chunks 0, 1, ... in order.
			changeBucket(t, path, "bodies", func(b *bolt.Bucket) error {
				if err := deleteChunks(b, id); err != nil {
					return err
				}
				return b.Put(binary.BigEndian.AppendUint32([]byte(id), 1), []byte(body))
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "queue.db")
			s, err := bbolt.Open(path, &bbolt.Options{InlineBodyMax: tc.inline})
			if err != nil {
				t.Fatal(err)
			}
			id, err := s.Enqueue(ctx, msg("bob@example.net", body))
			if err != nil {
				t.Fatal(err)
			}
			other, err := s.Enqueue(ctx, msg("carol@example.net", body))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, path, id)
			s = open(t, path, &bbolt.Options{InlineBodyMax: tc.inline})
			if b, err := s.Body(ctx, id); !errors.Is(err, queue.ErrCorrupt) || !strings.Contains(err.Error(), id) {
				if err == nil {
					b.Close()
				}
				t.Errorf("Body of the damaged item: %v, want ErrCorrupt naming %s", err, id)
			}
			if got := readBody(t, s, other); got != body {
				t.Errorf("the intact item's body = %q", got)
			}
		})
	}
}

// deleteChunks removes the stored chunks of id's inline body.
func deleteChunks(b *bolt.Bucket, id string) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek([]byte(id)); k != nil && bytes.HasPrefix(k, []byte(id)); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	if len(keys) == 0 {
		return fmt.Errorf("no body stored for %s", id)
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// A body stored whole under its ID, as the first layout did, is read and
// deleted like a chunked one.
func TestWholeBodyLayout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queue.db")
	s := open(t, path, nil)
	body := strings.Repeat("Subject: old layout\r\n", 500)
	id, err := s.Enqueue(ctx, msg("bob@example.net", body))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	changeBucket(t, path, "bodies", func(b *bolt.Bucket) error {
		if err := deleteChunks(b, id); err != nil {
			return err
		}
		return b.Put([]byte(id), []byte(body))
	})
	s = open(t, path, nil)
	if got := readBody(t, s, id); got != body {
		t.Fatalf("body stored whole read back as %d octets, want %d", len(got), len(body))
	}
	items, err := s.Lease(ctx, 1, time.Minute)
	if err != nil || len(items) != 1 {
		t.Fatalf("Lease = %d items, %v", len(items), err)
	}
	if err := s.Complete(ctx, items[0].Lease); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	changeBucket(t, path, "bodies", func(b *bolt.Bucket) error {
		if k, _ := b.Cursor().First(); k != nil {
			return fmt.Errorf("bodies still holds %q after Complete", k)
		}
		return nil
	})
}

// changeBucket changes a bucket of a closed store's database directly.
func changeBucket(t *testing.T, path, bucket string, fn func(*bolt.Bucket) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket([]byte(bucket))) }); err != nil {
		t.Fatal(err)
	}
}

func TestKeyRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := queuetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	path := filepath.Join(t.TempDir(), "queue.db")
	s := open(t, path, &bbolt.Options{Now: clock.Now, KeyRetention: time.Hour})
	keyed := func(key string) *queue.Message {
		m := msg("bob@example.net", "x")
		m.Key = key
		return m
	}
	id, err := s.Enqueue(ctx, keyed("order-1"))
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
	// A producer retrying after the delivery: nothing new is queued.
	clock.Advance(59 * time.Minute)
	again, err := s.Enqueue(ctx, keyed("order-1"))
	if err != nil || again != id {
		t.Errorf("Enqueue within the retention = %s, %v; want %s", again, err, id)
	}
	if st, _ := s.Stats(ctx); st.Items != 0 {
		t.Errorf("Items = %d, want 0", st.Items)
	}
	// After the retention the key is free again, and pruned.
	clock.Advance(2 * time.Minute)
	third, err := s.Enqueue(ctx, keyed("order-1"))
	if err != nil || third == id {
		t.Errorf("Enqueue after the retention = %s, %v; want a new item", third, err)
	}
	if fourth, err := s.Enqueue(ctx, keyed("order-1")); err != nil || fourth != third {
		t.Errorf("the new item's key gave %s, %v; want %s", fourth, err, third)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket([]byte("keys")).Stats().KeyN + tx.Bucket([]byte("keyexp")).Stats().KeyN; n != 0 {
			t.Errorf("%d entries of expired keys left, want them pruned", n)
		}
		return nil
	})
}

// A database is used by one process at a time: a second Open fails after
// LockTimeout with an error naming the file, and succeeds once the first
// store is closed.
func TestOneOpenAtATime(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "queue.db")
	s, err := bbolt.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enqueue(context.Background(), msg("bob@example.net", "x")); err != nil {
		t.Fatal(err)
	}
	second, err := bbolt.Open(path, &bbolt.Options{LockTimeout: 50 * time.Millisecond})
	if err == nil {
		second.Close()
		t.Fatal("a second Open of a database in use succeeded")
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("second Open: %v, want an error naming %s", err, path)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, &bbolt.Options{LockTimeout: 10 * time.Second})
	if st, err := s.Stats(context.Background()); err != nil || st.Items != 1 {
		t.Errorf("after the first store closed: %+v, %v", st, err)
	}
}
