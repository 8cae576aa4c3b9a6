package jetstream

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/nats-io/nats.go"
)

// The child process of the two-process tests runs this test function: a
// runner on the shared queue that writes "D <id>" for each attempt to
// stdout, until its stdin closes.
const (
	childEnv = "HAMAIL_JETSTREAM_CHILD_URL"
	// hangEnv makes the child's attempts hang, so that it holds leases
	// when it is killed.
	hangEnv = "HAMAIL_JETSTREAM_CHILD_HANG"
)

func TestChildRunnerProcess(t *testing.T) {
	url := os.Getenv(childEnv)
	if url == "" {
		return // only meaningful as the child of TestTwoProcesses*
	}
	nc, err := nats.Connect(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child connect:", err)
		os.Exit(2)
	}
	defer nc.Close()
	s, err := New(nc, &Options{Stream: "TWO", Subject: "two", Replicas: 1, AckWait: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child store:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	hang := os.Getenv(hangEnv) != ""
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	d := queue.DelivererFunc(func(ctx context.Context, d *queue.Delivery) ([]queue.RecipientResult, error) {
		mu.Lock()
		fmt.Fprintf(out, "D %s\n", d.ID)
		out.Flush()
		mu.Unlock()
		if hang {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return delivered(len(d.Recipients)), nil
	})
	r := queue.NewRunner(s, d, &queue.RunnerOptions{Concurrency: 8, AttemptTimeout: 30 * time.Second, LeaseDuration: 2 * time.Second, PollInterval: 20 * time.Millisecond, NoDSN: true})
	fmt.Fprintln(out, "READY")
	out.Flush()
	_ = r.Run(ctx)
	s.Close()
	os.Exit(0)
}

func delivered(n int) []queue.RecipientResult {
	out := make([]queue.RecipientResult, n)
	for i := range out {
		out[i] = queue.RecipientResult{Outcome: queue.OutcomeDelivered, Reply: queue.Reply{Code: 250, Text: "OK"}}
	}
	return out
}

// child is a runner in another process.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when stdout ends
	mu    sync.Mutex
	seen  map[string]int
}

func startChild(t *testing.T, url string, hang bool) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildRunnerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+url)
	if hang {
		cmd.Env = append(cmd.Env, hangEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, done: make(chan struct{}), seen: make(map[string]int)}
	ready := make(chan struct{})
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if line == "READY" {
				close(ready)
				continue
			}
			if id, ok := strings.CutPrefix(line, "D "); ok {
				c.mu.Lock()
				c.seen[id]++
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	select {
	case <-ready:
	case <-c.done:
		t.Fatal("child runner exited before it was ready")
	case <-time.After(30 * time.Second):
		t.Fatal("child runner not ready")
	}
	return c
}

// stop asks the child to finish its attempts and exit.
func (c *child) stop(t *testing.T) {
	t.Helper()
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		t.Fatal("child runner did not stop")
	}
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child runner: %v", err)
	}
}

// kill ends the child at once, as a crash would.
func (c *child) kill(t *testing.T) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	_ = c.cmd.Wait()
}

func (c *child) count() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.seen))
	for k, v := range c.seen {
		out[k] = v
	}
	return out
}

// twoProcesses runs a runner here and one in a child process on one queue
// and enqueues n messages. crash, if set, is called once the child has
// made some attempts. It returns the attempts per item of each side.
func twoProcesses(t *testing.T, n int, crash func(*child)) (mine, theirs map[string]int, ids []string) {
	node := startNode(t)
	nc := connect(t, node.url())
	s, err := New(nc, &Options{Stream: "TWO", Subject: "two", Replicas: 1, AckWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ch := startChild(t, node.url(), crash != nil)

	var mu sync.Mutex
	mine = make(map[string]int)
	d := queue.DelivererFunc(func(ctx context.Context, d *queue.Delivery) ([]queue.RecipientResult, error) {
		mu.Lock()
		mine[d.ID]++
		mu.Unlock()
		return delivered(len(d.Recipients)), nil
	})
	runCtx, stop := context.WithCancel(ctx)
	r := queue.NewRunner(s, d, &queue.RunnerOptions{Concurrency: 8, AttemptTimeout: time.Second, LeaseDuration: 2 * time.Second, PollInterval: 20 * time.Millisecond, NoDSN: true})
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.Run(runCtx) })

	crashed := crash == nil
	for i := range n {
		id, err := s.Enqueue(ctx, &queue.Message{Envelope: testEnvelope(i), Body: strings.NewReader(testBody)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		if !crashed && len(ch.count()) >= 8 {
			crash(ch)
			crashed = true
		}
	}
	if !crashed {
		if !waitFor(20*time.Second, func() bool { return len(ch.count()) > 0 }) {
			t.Fatal("the child never leased an item")
		}
		crash(ch)
	}
	all := func() bool {
		theirs := ch.count()
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			if mine[id]+theirs[id] == 0 {
				return false
			}
		}
		return true
	}
	if !waitFor(30*time.Second, all) {
		t.Fatal("not every message was delivered")
	}
	if !waitFor(20*time.Second, func() bool { st, err := s.Stats(ctx); return err == nil && st.Items == 0 }) {
		t.Fatal("queue not empty after delivery")
	}
	if crash == nil {
		ch.stop(t)
	}
	stop()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return mine, ch.count(), ids
}

// TestTwoProcesses: two runners in two processes share the queue, and
// without a crash no message is attempted twice.
func TestTwoProcesses(t *testing.T) {
	t.Parallel()
	mine, theirs, ids := twoProcesses(t, 500, nil)
	for _, id := range ids {
		if n := mine[id] + theirs[id]; n != 1 {
			t.Errorf("item %s attempted %d times (here %d, child %d)", id, n, mine[id], theirs[id])
		}
	}
	if len(mine) == 0 || len(theirs) == 0 {
		t.Errorf("one runner did all the work: here %d, child %d", len(mine), len(theirs))
	}
	t.Logf("here %d, child %d", len(mine), len(theirs))
}

// TestTwoProcessesCrash: the child is killed while it holds leases (its
// attempts hang); its items go to the other runner once the leases run
// out. Only items the child attempted are attempted twice, at most as many
// as it had in flight.
func TestTwoProcessesCrash(t *testing.T) {
	t.Parallel()
	mine, theirs, ids := twoProcesses(t, 1000, func(c *child) {
		c.kill(t)
	})
	dups := 0
	var repeated []string
	for _, id := range ids {
		n := mine[id] + theirs[id]
		if n == 0 {
			t.Errorf("item %s never attempted", id)
		}
		if n > 1 {
			dups += n - 1
			repeated = append(repeated, fmt.Sprintf("%s here %d child %d", id, mine[id], theirs[id]))
			if theirs[id] == 0 {
				t.Errorf("item %s attempted %d times though the child never had it", id, n)
			}
		}
	}
	if dups == 0 || dups > 8 {
		t.Errorf("%d repeated attempts, want the child's leases taken over: between 1 and its 8 in flight: %s", dups, strings.Join(repeated, "; "))
	}
	t.Logf("here %d, child %d before it was killed, %d repeated", len(mine), len(theirs), dups)
}
