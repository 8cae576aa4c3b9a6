package jetstream

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/nats-io/nats.go"
)

var clusterMessages = flag.Int("jetstream.cluster-messages", 5000, "messages delivered in TestClusterLeaderKill")

// countingDeliverer counts attempts per item. With deferEvery set, the
// first attempt of every deferEvery-th message (by its recipient's number)
// fails with a temporary error, so that its retry is scheduled.
type countingDeliverer struct {
	deferEvery int
	mu         sync.Mutex
	attempts   map[string]int
	deferred   map[string]bool
	total      atomic.Int64
}

func newCountingDeliverer(deferEvery int) *countingDeliverer {
	return &countingDeliverer{deferEvery: deferEvery, attempts: make(map[string]int), deferred: make(map[string]bool)}
}

func (c *countingDeliverer) Deliver(ctx context.Context, d *queue.Delivery) ([]queue.RecipientResult, error) {
	var n int
	fmt.Sscanf(d.Recipients[0].Address, "r%d@", &n)
	c.mu.Lock()
	c.attempts[d.ID]++
	first := c.attempts[d.ID] == 1
	deferNow := first && c.deferEvery > 0 && n%c.deferEvery == 0
	if deferNow {
		c.deferred[d.ID] = true
	}
	c.mu.Unlock()
	c.total.Add(1)
	out := make([]queue.RecipientResult, len(d.Recipients))
	for i := range out {
		out[i] = queue.RecipientResult{Outcome: queue.OutcomeDelivered, Reply: queue.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}}
		if deferNow {
			out[i] = queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: queue.Reply{Code: 451, Enhanced: "4.3.0", Text: "try again later"}}
		}
	}
	return out, nil
}

// duplicates returns how many attempts went beyond those planned (one, or
// two for a deferred message) and which of want were never delivered.
func (c *countingDeliverer) duplicates(want []string) (dups int, missing []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, n := range c.attempts {
		planned := 1
		if c.deferred[id] {
			planned = 2
		}
		dups += max(n-planned, 0)
	}
	for _, id := range want {
		planned := 1
		if c.deferred[id] {
			planned = 2
		}
		if c.attempts[id] < planned {
			missing = append(missing, id)
		}
	}
	return dups, missing
}

func testEnvelope(i int) queue.Envelope {
	return queue.Envelope{
		From:       "alice@example.org",
		Recipients: []queue.Recipient{{Address: fmt.Sprintf("r%d@example.net", i)}},
	}
}

// testBody is a small message of about 1 KiB.
var testBody = "From: alice@example.org\r\nSubject: test\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 15)

// TestClusterLeaderKill delivers messages through two runners on a
// three-node R3 cluster and shuts the stream leader down in the middle;
// every tenth message fails its first attempt and waits for a scheduled
// retry. Every message is delivered; repeated attempts are counted and
// bounded by what was in flight when the leader died.
func TestClusterLeaderKill(t *testing.T) {
	t.Parallel()
	leaderKill(t, *clusterMessages, func(ctx context.Context, c *testCluster, s *Store) *testNode {
		return c.streamLeader(ctx, s.js, "KILL")
	})
}

// TestClusterNodeKill shuts down a node that does not lead the stream:
// the consumer's leader when that is another node (the pending deliveries
// and their lease timers move to a new consumer leader), else a follower.
func TestClusterNodeKill(t *testing.T) {
	t.Parallel()
	leaderKill(t, 1000, func(ctx context.Context, c *testCluster, s *Store) *testNode {
		stream := c.streamLeader(ctx, s.js, "KILL")
		if ci, err := s.cons.Info(ctx); err == nil && ci.Cluster != nil && ci.Cluster.Leader != stream.name() {
			if n := c.node(ci.Cluster.Leader); n != nil {
				t.Logf("%s leads the consumer, %s the stream", n.name(), stream.name())
				return n
			}
		}
		for _, n := range c.nodes {
			if n != stream {
				t.Logf("%s leads the stream and the consumer; %s follows", stream.name(), n.name())
				return n
			}
		}
		t.Fatal("no node to shut down")
		return nil
	})
}

// leaderKill runs total messages through two runners on a three-node
// cluster and shuts down the node pick returns once a third is delivered.
func leaderKill(t *testing.T, total int, pick func(context.Context, *testCluster, *Store) *testNode) {
	const (
		producers   = 32
		runners     = 2
		concurrency = 32
	)
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
	defer cancel()

	var stores []*Store
	for i := range runners {
		nc := connect(t, c.urls())
		s, err := New(nc, &Options{Stream: "KILL", Subject: "kill", AckWait: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Open(ctx); err != nil {
			t.Fatalf("open store %d: %v", i, err)
		}
		t.Cleanup(func() { s.Close() })
		stores = append(stores, s)
	}
	// Every tenth message is deferred once, so retries scheduled on the
	// servers span the shutdown.
	d := newCountingDeliverer(10)
	runCtx, stopRunners := context.WithCancel(ctx)
	var runWG sync.WaitGroup
	for _, s := range stores {
		r := queue.NewRunner(s, d, &queue.RunnerOptions{
			Concurrency:    concurrency,
			AttemptTimeout: time.Second,
			LeaseDuration:  5 * time.Second,
			PollInterval:   50 * time.Millisecond,
			NoDSN:          true,
			Schedule:       queue.Retry{MinBackoff: time.Second, MaxBackoff: time.Second, Jitter: -1},
		})
		runWG.Go(func() {
			if err := r.Run(runCtx); err != nil {
				t.Errorf("runner: %v", err)
			}
		})
	}
	defer func() { stopRunners(); runWG.Wait() }()

	// Producers enqueue through both stores while the runners deliver.
	ids := make([]string, total)
	var next atomic.Int64
	var enqErr atomic.Value
	var prodWG sync.WaitGroup
	for p := range producers {
		s := stores[p%len(stores)]
		prodWG.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				id, err := s.Enqueue(ctx, &queue.Message{Envelope: testEnvelope(i), Body: strings.NewReader(testBody)})
				if err != nil {
					enqErr.Store(fmt.Errorf("enqueue %d: %w", i, err))
					return
				}
				ids[i] = id
			}
		})
	}

	// Shut the stream leader down once a third has been delivered.
	if !waitFor(40*time.Second, func() bool { return d.total.Load() >= int64(total/3) }) {
		t.Fatalf("only %d of %d delivered before the kill", d.total.Load(), total)
	}
	leader := pick(ctx, c, stores[0])
	// Delivered to a store and not yet acknowledged: the attempts under
	// way and the deliveries each store prefetched.
	inflight := runners * (concurrency + DefaultPrefetch)
	killedAt := d.total.Load()
	leader.shutdown()
	t.Logf("shut down %s after %d attempts", leader.name(), killedAt)

	prodWG.Wait()
	if err, _ := enqErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if !waitFor(40*time.Second, func() bool {
		_, missing := d.duplicates(ids)
		return len(missing) == 0
	}) {
		_, missing := d.duplicates(ids)
		t.Fatalf("%d of %d messages never delivered, e.g. %v", len(missing), total, missing[:min(5, len(missing))])
	}
	// The queue drains: every item is completed, none left behind.
	var st queue.Stats
	if !waitFor(20*time.Second, func() bool {
		var err error
		st, err = stores[0].Stats(ctx)
		return err == nil && st.Items == 0
	}) {
		t.Fatalf("queue not empty after delivery: %+v", st)
	}
	dups, _ := d.duplicates(ids)
	d.mu.Lock()
	deferred := len(d.deferred)
	d.mu.Unlock()
	t.Logf("%d messages (%d retried on schedule), %d repeated attempts (bound %d in flight)", total, deferred, dups, inflight)
	if dups > inflight {
		t.Errorf("%d repeated attempts, more than the %d that can be in flight", dups, inflight)
	}
	if ncs := stores[0].nc; ncs.Status() != nats.CONNECTED {
		t.Errorf("client connection %v after failover", ncs.Status())
	}

	// The node comes back with its store directory and catches up.
	leader.restart()
	if !waitFor(30*time.Second, func() bool {
		info, err := stores[0].stream.Info(ctx)
		if err != nil || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			return false
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current || r.Offline {
				return false
			}
		}
		return true
	}) {
		t.Errorf("restarted node %s did not catch up with the stream", leader.name())
	}
}
