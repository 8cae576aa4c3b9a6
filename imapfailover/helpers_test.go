package imapfailover

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/imaptest"
)

func testMessage(n int) []byte {
	return fmt.Appendf(nil, "From: bob@example.org\r\nTo: alice@example.org\r\nSubject: order %d\r\nMessage-ID: <order-%d@example.org>\r\n\r\nbody %d\r\n", n, n, n)
}

// replicasOf describes the replicas of an imaptest set, in priority order.
func replicasOf(s *imaptest.Set) []Replica {
	var rs []Replica
	for i, r := range s.Replicas() {
		rs = append(rs, Replica{Name: r.Name(), Addr: r.Addr(), Priority: i, TLS: TLSNone, Username: s.Username(), Password: s.Password()})
	}
	return rs
}

func newTestPool(t *testing.T, s *imaptest.Set, mod func(*Options)) *Pool {
	t.Helper()
	o := &Options{
		Replicas:       replicasOf(s),
		CommandTimeout: 2 * time.Second,
		DialTimeout:    2 * time.Second,
		Heartbeat:      time.Second,
		ReconnectDelay: 20 * time.Millisecond,
		FailureHold:    time.Second,
	}
	if mod != nil {
		mod(o)
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// recorder is a Handler that counts deliveries per Message-ID.
type recorder struct {
	mu      sync.Mutex
	seen    map[string]int
	order   []string
	replica string // the replica of the last delivery
	ch      chan string
}

func newRecorder() *recorder {
	return &recorder{seen: map[string]int{}, ch: make(chan string, 1000)}
}

func (r *recorder) handle(_ context.Context, m *Message) error {
	id := m.Envelope.MessageID
	r.mu.Lock()
	r.seen[id]++
	r.order = append(r.order, id)
	r.replica = m.Replica
	r.mu.Unlock()
	r.ch <- id
	return nil
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

func (r *recorder) lastReplica() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.replica
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.order)
}

// waitFor waits until the recorder saw n deliveries or fails at the deadline.
func (r *recorder) waitFor(t *testing.T, n int, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for r.total() < n {
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("saw %d deliveries, want %d", r.total(), n)
		}
	}
}

func (r *recorder) assertExactlyOnce(t *testing.T, from, to int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := from; i <= to; i++ {
		id := fmt.Sprintf("order-%d@example.org", i)
		if r.seen[id] != 1 {
			t.Errorf("%s handled %d times", id, r.seen[id])
		}
	}
	if len(r.order) != to-from+1 {
		t.Errorf("%d deliveries, want %d", len(r.order), to-from+1)
	}
}

func appendN(t *testing.T, s *imaptest.Set, from, to int, on ...int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if _, err := s.Append("INBOX", testMessage(i), nil, on...); err != nil {
			t.Fatal(err)
		}
	}
}

// runWatch starts Watch and returns a function that stops it and returns
// its error.
func runWatch(t *testing.T, mb *Mailbox, h Handler) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- mb.Watch(ctx, h) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Watch did not stop")
			return nil
		}
	}
	t.Cleanup(func() { stop() })
	return stop
}
