package jetstream

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/loopback"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// testNode is one embedded nats-server with JetStream on loopback. It can
// be shut down and started again on the same ports and store directory,
// as a machine that crashed and came back.
type testNode struct {
	t    testing.TB
	opts server.Options
	mu   sync.Mutex
	srv  *server.Server
}

// baseOptions are the settings this package requires of a server
// (doc.go): JetStream with synchronous writes.
func baseOptions(t testing.TB, name string) server.Options {
	return server.Options{
		ServerName: name,
		Host:       "127.0.0.1",
		Port:       -1,
		NoLog:      true,
		NoSigs:     true,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		SyncAlways: true,
		// The default one-second-granular scheduler and AckWait timers
		// run on the server's clock; nothing here needs tuning.
	}
}

// startNode starts a single embedded node and stops it at the end of the
// test.
func startNode(t testing.TB) *testNode {
	t.Helper()
	n := &testNode{t: t, opts: baseOptions(t, "n1")}
	n.start()
	t.Cleanup(n.shutdown)
	if !waitFor(10*time.Second, func() bool { return n.server().JetStreamEnabled() }) {
		t.Fatal("jetstream not enabled on the single node")
	}
	return n
}

func (n *testNode) start() {
	n.t.Helper()
	if n.opts.Port == -1 {
		// A client port chosen here, outside the ephemeral range, stays
		// free for restarts and URLs stay valid.
		n.opts.Port = reservePorts(n.t, 1)[0]
	}
	o := n.opts
	s, err := server.NewServer(&o)
	if err != nil {
		n.t.Fatalf("new server %s: %v", n.opts.ServerName, err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		n.t.Fatalf("server %s not ready", n.opts.ServerName)
	}
	n.mu.Lock()
	n.srv = s
	n.mu.Unlock()
}

func (n *testNode) server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// shutdown stops the node, as a crash would (the store directory stays).
func (n *testNode) shutdown() {
	n.mu.Lock()
	s := n.srv
	n.srv = nil
	n.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// restart starts a stopped node again with its store directory.
func (n *testNode) restart() { n.start() }

func (n *testNode) name() string { return n.opts.ServerName }

func (n *testNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.opts.Port) }

// testCluster is a JetStream cluster of embedded nodes on loopback.
type testCluster struct {
	t     testing.TB
	nodes []*testNode
}

// reservePorts returns n free loopback TCP ports from outside the kernel's
// ephemeral range (internal/loopback), so that no outgoing connection or
// port-0 listener takes one between now and the server's start or restart.
// The listeners are closed before the ports are used.
func reservePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	ls := make([]net.Listener, n)
	for i := range ls {
		l, err := loopback.Listen("tcp", "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		ls[i] = l
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// startCluster starts a JetStream cluster of size nodes and waits for a
// meta leader.
func startCluster(t testing.TB, size int) *testCluster {
	t.Helper()
	ports := reservePorts(t, size)
	routes := make([]*url.URL, size)
	for i, p := range ports {
		routes[i] = &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)}
	}
	c := &testCluster{t: t}
	for i := range size {
		o := baseOptions(t, fmt.Sprintf("n%d", i+1))
		o.Cluster = server.ClusterOpts{Name: "hamail", Host: "127.0.0.1", Port: ports[i]}
		o.Routes = routes
		n := &testNode{t: t, opts: o}
		c.nodes = append(c.nodes, n)
	}
	for _, n := range c.nodes {
		n.start()
		t.Cleanup(n.shutdown)
	}
	c.waitMetaLeader()
	return c
}

// waitMetaLeader waits until a running node is the JetStream meta leader
// and knows every running node as an online peer: before that, placing an
// R3 stream fails with "no suitable peers for placement".
func (c *testCluster) waitMetaLeader() {
	c.t.Helper()
	if !waitFor(30*time.Second, func() bool {
		running := 0
		for _, n := range c.nodes {
			if n.server() != nil {
				running++
			}
		}
		for _, n := range c.nodes {
			if s := n.server(); s != nil && s.JetStreamIsLeader() {
				return len(s.JetStreamClusterPeers()) >= running
			}
		}
		return false
	}) {
		c.t.Fatal("no JetStream meta leader with every node online")
	}
}

// urls is the comma-separated client URL list of all nodes.
func (c *testCluster) urls() string {
	us := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		us[i] = n.url()
	}
	return strings.Join(us, ",")
}

// node returns the node with the given server name, nil if none.
func (c *testCluster) node(name string) *testNode {
	for _, n := range c.nodes {
		if n.name() == name {
			return n
		}
	}
	return nil
}

// streamLeader returns the node leading the stream, waiting for one.
func (c *testCluster) streamLeader(ctx context.Context, js natsjs.JetStream, stream string) *testNode {
	c.t.Helper()
	var leader *testNode
	var last any
	ok := waitFor(30*time.Second, func() bool {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			last = err
			return false
		}
		info, err := s.Info(ctx)
		if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
			last = err
			if err == nil {
				last = info.Cluster
			}
			return false
		}
		leader = c.node(info.Cluster.Leader)
		return leader != nil && leader.server() != nil
	})
	if !ok {
		c.t.Fatalf("stream %s has no leader: %v", stream, last)
	}
	return leader
}

// connect opens a client connection to the given URLs and closes it at
// the end of the test. It reconnects for ever, as a long-running sender
// would.
func connect(t testing.TB, urls string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(urls,
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond),
		nats.Timeout(5*time.Second),
	)
	if err != nil {
		t.Fatalf("connect %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
