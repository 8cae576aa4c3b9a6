package health_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/faultproxy"
	"github.com/hamail/hamail/internal/imaptest"
	"github.com/hamail/hamail/internal/smtptest"
)

// event is a probe result or a state change, as hooks saw them.
type event struct {
	probe  *health.ProbeResult
	change *health.Change
}

func (e event) String() string {
	if e.probe != nil {
		return fmt.Sprintf("probe(err=%v, %v)", e.probe.Err, e.probe.Latency)
	}
	return fmt.Sprintf("change(%v->%v)", e.change.From, e.change.To)
}

type eventLog struct {
	mu     sync.Mutex
	events []event
}

func (l *eventLog) hooks() health.Hooks {
	return health.Hooks{
		Probed: func(r health.ProbeResult) {
			l.mu.Lock()
			l.events = append(l.events, event{probe: &r})
			l.mu.Unlock()
		},
		Changed: func(ch health.Change) {
			l.mu.Lock()
			l.events = append(l.events, event{change: &ch})
			l.mu.Unlock()
		},
	}
}

// checkHysteresis checks that each change was caused by exactly the number
// of consecutive probes it needs: up after Rise good probes, down after
// Fall bad ones, with no other kind of probe in that run.
func (l *eventLog) checkHysteresis(t *testing.T, rise, fall int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var run []*health.ProbeResult // probes since the last change
	changes := 0
	for _, e := range l.events {
		if e.probe != nil {
			run = append(run, e.probe)
			continue
		}
		changes++
		need, good := rise, true
		if e.change.To == health.Down {
			need, good = fall, false
		}
		if len(run) < need {
			t.Errorf("%v after only %d probes: %v", e, len(run), l.events)
			continue
		}
		// The last `need` probes are all of the deciding kind, and the
		// one before (if any) is not.
		for i, p := range run[len(run)-need:] {
			if (p.Err == nil) != good {
				t.Errorf("%v: deciding probe %d was %v", e, i, p.Err)
			}
		}
		if k := len(run) - need - 1; k >= 0 && (run[k].Err == nil) == good {
			t.Errorf("%v came one probe late: %v", e, l.events)
		}
		run = nil
	}
	if changes == 0 {
		t.Error("no change logged")
	}
}

// fastOptions probe often, for tests against real servers.
func fastOptions(log *eventLog) *health.Options {
	return &health.Options{
		Interval:     100 * time.Millisecond,
		FastInterval: 20 * time.Millisecond,
		DownInterval: 100 * time.Millisecond,
		Timeout:      3 * time.Second,
		Rise:         2,
		Fall:         3,
		Jitter:       -1,
		EHLOName:     "probe.example.org",
		Hooks:        log.hooks(),
	}
}

// waitChange waits for the next change of the subscription and checks it.
func waitChange(t *testing.T, sub *health.Subscription, target string, from, to health.State) health.Change {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch, err := sub.Next(ctx)
	if err != nil {
		t.Fatalf("waiting for %s %v->%v: %v", target, from, to, err)
	}
	if ch.Target != target || ch.From != from || ch.To != to || ch.Skipped != 0 {
		t.Fatalf("change %+v, want %s %v->%v", ch, target, from, to)
	}
	return ch
}

// TestChecker421GreetingAndRecovery: an SMTP relay that starts greeting
// with 421 goes down after exactly Fall probes, and comes back after
// exactly Rise good ones once it greets with 220 again. The subscription
// sees every transition in order.
func TestChecker421GreetingAndRecovery(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, nil)
	var log eventLog
	c := health.New(fastOptions(&log))
	sub := c.Subscribe()
	defer sub.Close()
	mustAdd(t, c, health.Target{Name: "relay1", Address: srv.Addr(), Kind: health.ProbeSMTP})
	stop := runReal(t, c)

	waitChange(t, sub, "relay1", health.Unknown, health.Up)
	srv.SetFault(smtptest.StageGreeting, smtptest.Reply(421, smtp.EnhancedCode{4, 3, 2}, "mx.example.test closing"))
	down := waitChange(t, sub, "relay1", health.Up, health.Down)
	var pe *health.ProbeError
	if !errors.As(down.Err, &pe) || pe.Code != 421 || pe.Step != "greeting" || !errors.Is(pe, health.ErrBadGreeting) {
		t.Errorf("down because of %v", down.Err)
	}
	srv.ClearFaults()
	waitChange(t, sub, "relay1", health.Down, health.Up)
	stop()
	log.checkHysteresis(t, 2, 3)
	if ch, ok := sub.TryNext(); ok {
		t.Errorf("unexpected change %+v", ch)
	}
}

// TestCheckerBlackHole: a relay behind a black-holing proxy accepts
// connections and never answers; it is down after Fall probe timeouts
// (plus the short waits between them), and up again after Rise probes once
// traffic passes.
func TestCheckerBlackHole(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, nil)
	px := faultproxy.Start(t, srv.Addr())
	var log eventLog
	opts := fastOptions(&log)
	opts.Timeout = time.Second // long enough for a loaded CI machine
	c := health.New(opts)
	sub := c.Subscribe()
	defer sub.Close()
	mustAdd(t, c, health.Target{Name: "relay1", Address: px.Addr(), Kind: health.ProbeSMTP})
	stop := runReal(t, c)

	waitChange(t, sub, "relay1", health.Unknown, health.Up)
	if err := px.SetMode(faultproxy.BlackHole); err != nil {
		t.Fatal(err)
	}
	holed := time.Now()
	down := waitChange(t, sub, "relay1", health.Up, health.Down)
	// Fall timeouts, the fast waits between them, and at most one steady
	// interval (plus one probe in flight) before the first: a generous
	// bound that a hanging probe would blow through.
	bound := 3*(opts.Timeout+opts.FastInterval) + opts.Interval + opts.Timeout + 2*time.Second
	if took := time.Since(holed); took > bound {
		t.Errorf("down %v after the black hole, bound %v", took, bound)
	}
	var pe *health.ProbeError
	if !errors.As(down.Err, &pe) || !pe.Timeout() || pe.Step != "greeting" {
		t.Errorf("down because of %v", down.Err)
	}
	// The probe's clock starts a moment after its deadline is set, so the
	// latency it reports may fall a few milliseconds short of the timeout.
	if st, _ := c.Status("relay1"); st.LastLatency < opts.Timeout*9/10 || st.LastLatency > opts.Timeout+time.Second {
		t.Errorf("last probe took %v with a %v timeout", st.LastLatency, opts.Timeout)
	}
	if err := px.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	waitChange(t, sub, "relay1", health.Down, health.Up)
	stop()
	log.checkHysteresis(t, 2, 3)
}

// TestCheckerIMAPReplicaRestart: an IMAP replica that stops is down after
// Fall refused probes, and up after Rise once it listens again.
func TestCheckerIMAPReplicaRestart(t *testing.T) {
	t.Parallel()
	set := imaptest.NewSet(t, &imaptest.Options{Replicas: 2})
	var log eventLog
	c := health.New(fastOptions(&log))
	sub := c.Subscribe()
	defer sub.Close()
	r := set.Replica(1)
	mustAdd(t, c, health.Target{Name: "imap2", Address: r.Addr(), Kind: health.ProbeIMAP,
		Username: set.Username(), Password: set.Password()})
	stop := runReal(t, c)
	waitChange(t, sub, "imap2", health.Unknown, health.Up)
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	down := waitChange(t, sub, "imap2", health.Up, health.Down)
	var pe *health.ProbeError
	if !errors.As(down.Err, &pe) || pe.Step != "connect" {
		t.Errorf("down because of %v", down.Err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	waitChange(t, sub, "imap2", health.Down, health.Up)
	stop()
	log.checkHysteresis(t, 2, 3)
}

// TestRunCutsProbeInFlight: ending Run while a probe waits on a silent
// server returns promptly, not after the probe timeout.
func TestRunCutsProbeInFlight(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, nil)
	px := faultproxy.Start(t, srv.Addr())
	if err := px.SetMode(faultproxy.BlackHole); err != nil {
		t.Fatal(err)
	}
	c := health.New(&health.Options{Timeout: time.Hour, Jitter: -1})
	mustAdd(t, c, health.Target{Name: "relay1", Address: px.Addr(), Kind: health.ProbeSMTP})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for px.Active() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the probe never connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return while a probe was in flight")
	}
	if st, _ := c.Status("relay1"); st.Probes != 0 || st.State != health.Unknown {
		t.Errorf("a cut probe was counted: %+v", st)
	}
}

// runReal runs c until the returned function is called or the test ends.
func runReal(t *testing.T, c *health.Checker) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Error("Run did not return")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestCheckerPassiveFailuresOnBlackHoledRelay: a relay that is up and not
// due for a probe for an hour is black-holed; Fall clients that time out
// reading its greeting and report it take it down at once, before any
// probe could finish. Once traffic passes again, probes bring it back.
func TestCheckerPassiveFailuresOnBlackHoledRelay(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, nil)
	px := faultproxy.Start(t, srv.Addr())
	var log eventLog
	opts := fastOptions(&log)
	opts.Interval = time.Hour // no probe is due while the target is up
	c := health.New(opts)
	sub := c.Subscribe()
	defer sub.Close()
	mustAdd(t, c, health.Target{Name: "relay1", Address: px.Addr(), Kind: health.ProbeSMTP})
	stop := runReal(t, c)
	waitChange(t, sub, "relay1", health.Unknown, health.Up)

	if err := px.SetMode(faultproxy.BlackHole); err != nil {
		t.Fatal(err)
	}
	// What a client sees on a real connection: no greeting in time.
	greeting := func() error {
		conn, err := net.DialTimeout("tcp", px.Addr(), 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err = bufio.NewReader(conn).ReadString('\n')
		return err
	}
	for i := range opts.Fall {
		err := greeting()
		if err == nil {
			t.Fatalf("client %d got a greeting through the black hole", i)
		}
		c.ReportFailure("relay1", fmt.Errorf("reading the greeting: %w", err))
	}
	if got := c.State("relay1"); got != health.Down {
		t.Fatalf("state %v after %d passive failures", got, opts.Fall)
	}
	down := waitChange(t, sub, "relay1", health.Up, health.Down)
	var ne net.Error
	if !down.Passive || !errors.As(down.Err, &ne) || !ne.Timeout() {
		t.Errorf("down change %+v", down)
	}
	// The probe the first report brought forward waits on the black hole
	// for opts.Timeout: only the Rise probes that brought it up ended.
	if st, _ := c.Status("relay1"); st.Probes != uint64(opts.Rise) || st.Reports != uint64(opts.Fall) {
		t.Errorf("%d probes and %d reports when it went down", st.Probes, st.Reports)
	}

	if err := px.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	waitChange(t, sub, "relay1", health.Down, health.Up)
	stop()
}
