package jetstream

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/faultproxy"
	"github.com/hamail/hamail/queue"
	"github.com/nats-io/nats-server/v2/server"
)

// partitionCluster is a three-node cluster whose routes all run through
// fault proxies, one per direction and pair, so that a node can be cut off
// from the others while it and its clients keep running.
type partitionCluster struct {
	*testCluster
	links map[[2]int]*faultproxy.Proxy // [from, to] node index
}

func startPartitionCluster(t *testing.T) *partitionCluster {
	t.Helper()
	const size = 3
	ports := reservePorts(t, size)
	pc := &partitionCluster{testCluster: &testCluster{t: t}, links: map[[2]int]*faultproxy.Proxy{}}
	for i := range size {
		var routes []*url.URL
		for j := range size {
			if j == i {
				continue
			}
			p := faultproxy.Start(t, fmt.Sprintf("127.0.0.1:%d", ports[j]))
			pc.links[[2]int{i, j}] = p
			routes = append(routes, &url.URL{Scheme: "nats", Host: p.Addr()})
		}
		o := baseOptions(t, fmt.Sprintf("n%d", i+1))
		// Gossip must not tell the others a direct address, or they would
		// route around the proxies; port 1 refuses.
		o.Cluster = server.ClusterOpts{Name: "hamail", Host: "127.0.0.1", Port: ports[i], Advertise: "127.0.0.1:1"}
		o.Routes = routes
		pc.nodes = append(pc.nodes, &testNode{t: t, opts: o})
	}
	for _, n := range pc.nodes {
		n.start()
		t.Cleanup(n.shutdown)
	}
	pc.waitMetaLeader()
	return pc
}

// isolate cuts node i off from the others (every route connection is
// reset and new ones are refused), or heals it.
func (pc *partitionCluster) isolate(i int, cut bool) {
	mode := faultproxy.Pass
	if cut {
		mode = faultproxy.Reset
	}
	for link, p := range pc.links {
		if link[0] == i || link[1] == i {
			if err := p.SetMode(mode); err != nil {
				pc.t.Fatal(err)
			}
		}
	}
}

func (pc *partitionCluster) index(n *testNode) int {
	for i, m := range pc.nodes {
		if m == n {
			return i
		}
	}
	return -1
}

// TestPartitionedLeader cuts the stream's leader off from the other two
// servers while a client stays connected to it. On the minority side an
// enqueue fails rather than report an unreplicated write; the majority
// side elects a leader and keeps enqueuing and delivering; after the
// partition heals every acknowledged item is completed, none comes back
// after its completion or stays queued, leases lost to the elections the
// heal causes are delivered again a bounded number of times, and a lease
// held on the minority side goes to a runner of the majority.
func TestPartitionedLeader(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	pc := startPartitionCluster(t)
	opts := func() *Options {
		return &Options{Stream: "PART", Subject: "part", AckWait: 2 * time.Second, Prefetch: -1}
	}
	// A store on the client that ends up with the majority, to find the
	// leader and create the stream.
	anyStore, err := New(connect(t, pc.urls()), opts())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { anyStore.Close() })
	if err := anyStore.Open(ctx); err != nil {
		t.Fatal(err)
	}
	leader := pc.streamLeader(ctx, anyStore.js, "PART")
	li := pc.index(leader)
	var majorityURLs []string
	for i, n := range pc.nodes {
		if i != li {
			majorityURLs = append(majorityURLs, n.url())
		}
	}
	minority, err := New(connect(t, leader.url()), opts())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { minority.Close() })
	majority, err := New(connect(t, strings.Join(majorityURLs, ",")), opts())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { majority.Close() })
	for _, s := range []*Store{minority, majority} {
		if err := s.Open(ctx); err != nil {
			t.Fatal(err)
		}
	}

	before := enqueueN(t, minority, 10)
	held, err := minority.Lease(ctx, 1, time.Minute)
	if err != nil || len(held) != 1 {
		t.Fatalf("lease on the minority side: %d items, %v", len(held), err)
	}

	pc.isolate(li, true)
	t.Logf("cut off %s, the stream's leader", leader.name())

	qctx, qcancel := context.WithTimeout(ctx, 4*time.Second)
	if id, err := minority.Enqueue(qctx, &queue.Message{Envelope: testEnvelope(100), Body: strings.NewReader(testBody)}); err == nil {
		t.Errorf("Enqueue on the minority side returned %s, want an error", id)
	}
	qcancel()
	cctx, ccancel := context.WithTimeout(ctx, 4*time.Second)
	err = minority.Complete(cctx, held[0].Lease)
	ccancel()
	if err == nil {
		// The acknowledgement cannot reach a leader; it must not be
		// reported as done. (It may also fail with ErrLeaseLost once the
		// lease clock runs out.)
		t.Errorf("Complete on the minority side succeeded")
	}

	// The majority elects a leader and carries on; its enqueues retry
	// through the election.
	during := enqueueN(t, majority, 10)
	if now := pc.streamLeader(ctx, majority.js, "PART"); now == leader {
		t.Fatalf("the majority still reports %s as the stream's leader", leader.name())
	} else {
		t.Logf("%s leads the stream on the majority side", now.name())
	}

	// The minority side has no leader to lease from.
	lctx, lcancel := context.WithTimeout(ctx, 4*time.Second)
	if items, _ := minority.Lease(lctx, 10, time.Minute); len(items) != 0 {
		t.Errorf("minority side leased %v during the partition", ids(items))
	}
	lcancel()

	pc.isolate(li, false)
	t.Logf("healed %s", leader.name())

	// After the heal the server that was cut off rejoins with the higher
	// term it reached campaigning alone, which can force the stream and
	// consumer groups into new elections. A lease whose renewal cannot
	// reach a consumer leader before the server's AckWait ends is lost:
	// Complete then fails with ErrLeaseLost and the item is delivered
	// again, as a runner would see it (at least once). What must hold:
	// every acknowledged item is completed, none comes back after its
	// Complete succeeded, and repeats stay few.
	want := append(append([]string{}, before...), during...)
	const maxLeases = 4 // per item: the first lease and a few losses
	leased := map[string]int{}
	done := map[string]bool{}
	lost := 0
	all := func() bool {
		for _, id := range want {
			if !done[id] {
				return false
			}
		}
		return true
	}
	// Elections take up to about ten seconds, a redelivery AckWait more.
	dctx, dcancel := context.WithTimeout(ctx, 45*time.Second)
	defer dcancel()
	for round := 0; round < 1000 && !all() && dctx.Err() == nil; round++ {
		items, err := majority.Lease(dctx, 50, time.Minute)
		if err != nil || len(items) == 0 {
			// Elections after the heal, or redeliveries not due yet.
			_ = sleepCtx(dctx, 50*time.Millisecond)
			continue
		}
		for _, it := range items {
			leased[it.ID]++
			switch {
			case done[it.ID]:
				t.Errorf("item %s leased again after its Complete succeeded", it.ID)
				continue
			case leased[it.ID] > maxLeases:
				t.Errorf("item %s leased %d times", it.ID, leased[it.ID])
			}
			err := majority.Complete(dctx, it.Lease)
			switch {
			case err == nil:
				done[it.ID] = true
			case errors.Is(err, queue.ErrLeaseLost):
				lost++ // delivered again once the server's AckWait ends
			default:
				t.Errorf("complete %s: %v", it.ID, err)
			}
		}
	}
	if lost > 0 {
		t.Logf("%d completions refused with ErrLeaseLost after the heal", lost)
	}
	for _, id := range want {
		if !done[id] {
			t.Errorf("acknowledged item %s lost across the partition (leased %d times, never completed)", id, leased[id])
		}
	}
	if leased[held[0].ID] == 0 {
		t.Errorf("the item leased on the minority side never came to the majority")
	}
	// Completed means gone: no second stored copy of an item stays behind
	// (the work queue deletes an acknowledged version on every replica,
	// so the stream leader may list it for a moment).
	var left []string
	if !waitFor(20*time.Second, func() bool {
		items, err := majority.List(ctx, "", 0)
		if err != nil {
			return false
		}
		left = left[:0]
		for _, it := range items {
			if slices.Contains(want, it.ID) {
				left = append(left, it.ID)
			}
		}
		return len(left) == 0
	}) {
		t.Errorf("completed items still queued: %v", left)
	}
}
