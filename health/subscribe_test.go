package health_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hamail/hamail/health"
)

// flip makes n transitions on each of the named targets through passive
// reports (Rise = Fall = 1), interleaving the targets, and returns the
// number of transitions made.
func flip(c *health.Checker, names []string, n int) int {
	for i := range n {
		for _, name := range names {
			if i%2 == 0 {
				c.ReportFailure(name, fmt.Errorf("delivery %d failed", i))
			} else {
				c.ReportSuccess(name)
			}
		}
	}
	return n * len(names)
}

// TestSubscriptionSeesEveryTransitionInOrder: a subscriber that keeps up
// sees each target's transitions, all of them, in order.
func TestSubscriptionSeesEveryTransitionInOrder(t *testing.T) {
	t.Parallel()
	const perTarget = 200
	names := []string{"relay1", "relay2", "relay3"}
	// A buffer that holds every change: nothing may be coalesced.
	c := health.New(&health.Options{Rise: 1, Fall: 1, SubscriptionBuffer: perTarget * len(names)})
	for _, n := range names {
		mustAdd(t, c, health.Target{Name: n, Address: "192.0.2.1:25"})
	}
	sub := c.Subscribe()
	defer sub.Close()

	// Reporters on several goroutines, the subscriber reading concurrently.
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Go(func() { flip(c, []string{n}, perTarget) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	last := map[string]health.State{}
	count := map[string]int{}
	var lastSeq uint64
	for range perTarget * len(names) {
		ch, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if ch.Seq <= lastSeq || ch.Skipped != 0 || !ch.Passive {
			t.Fatalf("change %+v after seq %d", ch, lastSeq)
		}
		lastSeq = ch.Seq
		if from := last[ch.Target]; ch.From != from {
			t.Fatalf("%s: change from %v, last seen %v", ch.Target, ch.From, from)
		}
		last[ch.Target] = ch.To
		count[ch.Target]++
	}
	wg.Wait()
	for _, n := range names {
		if last[n] != c.State(n) || count[n] != perTarget {
			t.Errorf("%s: subscriber saw %d changes ending at %v; state is %v", n, count[n], last[n], c.State(n))
		}
	}
	if ch, ok := sub.TryNext(); ok {
		t.Errorf("more changes than transitions: %+v", ch)
	}
}

// TestSlowSubscriberCoalesces: a subscriber that reads nothing while
// thousands of transitions happen holds a bounded queue, never blocks the
// reporters, and still learns every target's latest state, in order, with
// the number of transitions it missed.
func TestSlowSubscriberCoalesces(t *testing.T) {
	t.Parallel()
	c := health.New(&health.Options{Rise: 1, Fall: 1, SubscriptionBuffer: 4})
	names := []string{"a", "b", "c"}
	for _, n := range names {
		mustAdd(t, c, health.Target{Name: n, Address: "192.0.2.1:25"})
	}
	slow := c.Subscribe()
	defer slow.Close()
	total := flip(c, names, 1001)

	seen := map[string]health.State{}
	lastSeq := map[string]uint64{}
	transitions := 0
	queued := 0
	for ch, ok := slow.TryNext(); ok; ch, ok = slow.TryNext() {
		queued++
		if ch.From != seen[ch.Target] {
			t.Errorf("%s: From %v, but the subscriber last heard %v", ch.Target, ch.From, seen[ch.Target])
		}
		if ch.Seq <= lastSeq[ch.Target] {
			t.Errorf("%s: seq %d after %d", ch.Target, ch.Seq, lastSeq[ch.Target])
		}
		seen[ch.Target], lastSeq[ch.Target] = ch.To, ch.Seq
		transitions += 1 + ch.Skipped
	}
	if queued > 2*len(names)+4 {
		t.Errorf("slow subscription held %d changes", queued)
	}
	if transitions != total {
		t.Errorf("changes account for %d transitions, want %d", transitions, total)
	}
	for _, n := range names {
		st, _ := c.Status(n)
		if seen[n] != st.State || lastSeq[n] != st.Seq {
			t.Errorf("%s: subscriber ends at %v seq %d, status %v seq %d", n, seen[n], lastSeq[n], st.State, st.Seq)
		}
	}
}

// TestSubscriptionNextAndClose: Next waits for a change, honours its
// context, and fails after Close.
func TestSubscriptionNextAndClose(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := health.New(&health.Options{Rise: 1, Fall: 1})
		mustAdd(t, c, health.Target{Name: "mx1", Address: "192.0.2.1:25"})
		sub := c.Subscribe()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := sub.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Next without changes: %v", err)
		}
		got := make(chan health.Change, 1)
		go func() {
			ch, err := sub.Next(context.Background())
			if err != nil {
				t.Error(err)
			}
			got <- ch
		}()
		synctest.Wait()
		c.ReportFailure("mx1", errRefused)
		if ch := <-got; ch.To != health.Down || ch.Target != "mx1" {
			t.Errorf("change %+v", ch)
		}
		select {
		case <-sub.Ready():
			t.Error("Ready signalled with an empty queue")
		default:
		}
		c.ReportSuccess("mx1")
		select {
		case <-sub.Ready():
		default:
			t.Error("Ready not signalled with a change queued")
		}
		closed := make(chan error, 1)
		go func() {
			_, err := sub.Next(context.Background())
			_, err = sub.Next(context.Background())
			closed <- err
		}()
		synctest.Wait()
		sub.Close()
		sub.Close()
		if err := <-closed; !errors.Is(err, health.ErrSubscriptionClosed) {
			t.Errorf("Next after Close: %v", err)
		}
		c.ReportFailure("mx1", errRefused) // must not reach the closed subscription
		if _, ok := sub.TryNext(); ok {
			t.Error("closed subscription received a change")
		}
	})
}

// TestHooksRunInOrderAndMayCallBack: hooks see probes, reports and changes
// in order, outside the checker's locks (calling back does not deadlock).
func TestHooksRunInOrderAndMayCallBack(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var (
			mu     sync.Mutex
			events []string
			c      *health.Checker
		)
		log := func(s string) {
			mu.Lock()
			events = append(events, s)
			mu.Unlock()
		}
		p := newScriptedProber()
		opts := timingOptions(p)
		opts.Hooks = health.Hooks{
			Probed: func(r health.ProbeResult) {
				log(fmt.Sprintf("probe %s err=%v latency=%v", r.Target, r.Err, r.Latency))
			},
			Reported: func(r health.Report) { log(fmt.Sprintf("report %s err=%v", r.Target, r.Err)) },
			Changed: func(ch health.Change) {
				// Reading the checker from a hook must work and already
				// show the change.
				log(fmt.Sprintf("change %s %v->%v now %v", ch.Target, ch.From, ch.To, c.State(ch.Target)))
			},
		}
		c = health.New(opts)
		mustAdd(t, c, health.Target{Name: "mx1", Address: "192.0.2.1:25"})
		stop := run(t, c)
		sleepUntil(p.start, 3*time.Second)
		c.ReportFailure("mx1", errRefused)
		c.ReportFailure("mx1", errRefused)
		c.ReportFailure("mx1", errRefused)
		c.RemoveTarget("mx1")
		stop()
		want := []string{
			"probe mx1 err=<nil> latency=0s",
			"probe mx1 err=<nil> latency=0s",
			"change mx1 unknown->up now up",
			"report mx1 err=connection refused",
			"report mx1 err=connection refused",
			"report mx1 err=connection refused",
			"change mx1 up->down now down",
			"change mx1 down->unknown now unknown",
		}
		mu.Lock()
		defer mu.Unlock()
		if fmt.Sprint(events) != fmt.Sprint(want) {
			t.Errorf("hook events\n got %q\nwant %q", events, want)
		}
	})
}
