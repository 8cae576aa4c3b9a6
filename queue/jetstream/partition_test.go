package jetstream

import (
	"context"
	"fmt"
	"net/url"
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
// partition heals every acknowledged item is there exactly once, and a
// lease held on the minority side goes to a runner of the majority.
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

	want := append(append([]string{}, before...), during...)
	got := map[string]int{}
	all := func() bool {
		for _, id := range want {
			if got[id] == 0 {
				return false
			}
		}
		return true
	}
	for !all() && ctx.Err() == nil {
		items, err := majority.Lease(ctx, 50, time.Minute)
		if err != nil {
			continue // elections after the heal
		}
		for _, it := range items {
			got[it.ID]++
			if err := majority.Complete(ctx, it.Lease); err != nil {
				t.Errorf("complete %s: %v", it.ID, err)
			}
		}
	}
	for _, id := range want {
		switch got[id] {
		case 0:
			t.Errorf("acknowledged item %s lost across the partition", id)
		case 1:
		default:
			t.Errorf("item %s leased %d times by one runner", id, got[id])
		}
	}
	if got[held[0].ID] == 0 {
		t.Errorf("the item leased on the minority side never came to the majority")
	}
}
