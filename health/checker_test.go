package health_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hamail/hamail/health"
)

// scriptedProber answers probes from a per-target result that the test
// sets, and records when each probe started, relative to start.
type scriptedProber struct {
	start time.Time
	mu    sync.Mutex
	err   map[string]error
	hang  map[string]bool
	at    map[string][]time.Duration
}

func newScriptedProber() *scriptedProber {
	return &scriptedProber{
		start: time.Now(),
		err:   make(map[string]error),
		hang:  make(map[string]bool),
		at:    make(map[string][]time.Duration),
	}
}

func (p *scriptedProber) Probe(ctx context.Context, t health.Target) error {
	p.mu.Lock()
	p.at[t.Name] = append(p.at[t.Name], time.Since(p.start))
	err, hang := p.err[t.Name], p.hang[t.Name]
	p.mu.Unlock()
	if hang {
		// A server that accepts and never answers.
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

func (p *scriptedProber) set(name string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err[name] = err
}

func (p *scriptedProber) setHang(name string, hang bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hang[name] = hang
}

func (p *scriptedProber) times(name string) []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.at[name])
}

func (p *scriptedProber) count(name string) int { return len(p.times(name)) }

// timingOptions are round numbers without jitter, so that synctest can
// check exact probe times.
func timingOptions(p health.Prober) *health.Options {
	return &health.Options{
		Interval:     10 * time.Second,
		FastInterval: 2 * time.Second,
		DownInterval: 30 * time.Second,
		Timeout:      time.Second,
		Rise:         2,
		Fall:         3,
		Jitter:       -1,
		Prober:       p,
	}
}

// run starts c.Run in the background; the returned function stops it and
// checks that Run returned the context's error.
func run(t *testing.T, c *health.Checker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	}
}

// sleepUntil advances the bubble's clock to start+d and lets every
// goroutine settle.
func sleepUntil(start time.Time, d time.Duration) {
	time.Sleep(time.Until(start.Add(d)))
	synctest.Wait()
}

func secs(ss ...float64) []time.Duration {
	out := make([]time.Duration, len(ss))
	for i, s := range ss {
		out[i] = time.Duration(s * float64(time.Second))
	}
	return out
}

func mustAdd(t *testing.T, c *health.Checker, tg health.Target) {
	t.Helper()
	if err := c.AddTarget(tg); err != nil {
		t.Fatalf("AddTarget(%+v): %v", tg, err)
	}
}

func wantState(t *testing.T, c *health.Checker, name string, want health.State) {
	t.Helper()
	if got := c.State(name); got != want {
		t.Fatalf("at %v: State(%q) = %v, want %v", time.Now().UTC().Format("15:04:05.000"), name, got, want)
	}
}

var errRefused = errors.New("connection refused")

// TestPaceFollowsState walks a target through unknown → up → down → up and
// checks every probe time: FastInterval while unknown or changing state,
// Interval while steadily up, DownInterval while steadily down; up after
// exactly Rise good probes, down after exactly Fall bad ones.
func TestPaceFollowsState(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		c := health.New(timingOptions(p))
		sub := c.Subscribe()
		defer sub.Close()
		mustAdd(t, c, health.Target{Name: "relay1", Address: "192.0.2.1:25", Kind: health.ProbeSMTP})
		start := p.start
		stop := run(t, c)

		sleepUntil(start, 1*time.Second) // probe at 0: 1 good
		wantState(t, c, "relay1", health.Unknown)
		sleepUntil(start, 3*time.Second) // probe at 2: 2 good
		wantState(t, c, "relay1", health.Up)

		sleepUntil(start, 23*time.Second) // probes at 12, 22
		p.set("relay1", errRefused)
		sleepUntil(start, 35*time.Second) // bad probes at 32, 34
		wantState(t, c, "relay1", health.Up)
		if st, _ := c.Status("relay1"); st.ConsecutiveFailures != 2 || !errors.Is(st.LastError, errRefused) {
			t.Fatalf("status after 2 bad probes: %+v", st)
		}
		sleepUntil(start, 37*time.Second) // third bad probe at 36
		wantState(t, c, "relay1", health.Down)

		sleepUntil(start, 97*time.Second) // down pace: probes at 66, 96
		p.set("relay1", nil)
		sleepUntil(start, 127*time.Second) // good probe at 126
		wantState(t, c, "relay1", health.Down)
		sleepUntil(start, 129*time.Second) // second good probe at 128
		wantState(t, c, "relay1", health.Up)
		sleepUntil(start, 139*time.Second) // probe at 138
		stop()

		want := secs(0, 2, 12, 22, 32, 34, 36, 66, 96, 126, 128, 138)
		if got := p.times("relay1"); !slices.Equal(got, want) {
			t.Errorf("probe times\n got %v\nwant %v", got, want)
		}
		type tr struct {
			from, to health.State
			at       time.Duration
		}
		var got []tr
		var lastSeq uint64
		for {
			ch, ok := sub.TryNext()
			if !ok {
				break
			}
			if ch.Seq <= lastSeq || ch.Passive || ch.Skipped != 0 || ch.Target != "relay1" {
				t.Errorf("change %+v after seq %d", ch, lastSeq)
			}
			lastSeq = ch.Seq
			got = append(got, tr{ch.From, ch.To, ch.At.Sub(start)})
		}
		wantTr := []tr{
			{health.Unknown, health.Up, 2 * time.Second},
			{health.Up, health.Down, 36 * time.Second},
			{health.Down, health.Up, 128 * time.Second},
		}
		if !slices.Equal(got, wantTr) {
			t.Errorf("changes\n got %v\nwant %v", got, wantTr)
		}
		st, _ := c.Status("relay1")
		if st.Probes != 12 || st.Since != start.Add(128*time.Second) || st.Seq != lastSeq {
			t.Errorf("final status %+v", st)
		}
	})
}

// TestUnknownGoesDownAfterFall: a target that never answers well starts
// unknown (usable) and is down after Fall probes at FastInterval.
func TestUnknownGoesDownAfterFall(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		p.set("mx1", errRefused)
		c := health.New(timingOptions(p))
		mustAdd(t, c, health.Target{Name: "mx1", Address: "192.0.2.2:25", Kind: health.ProbeTCP})
		stop := run(t, c)
		sleepUntil(p.start, 3*time.Second)
		wantState(t, c, "mx1", health.Unknown)
		sleepUntil(p.start, 5*time.Second)
		wantState(t, c, "mx1", health.Down)
		stop()
		if got, want := p.times("mx1"), secs(0, 2, 4); !slices.Equal(got, want) {
			t.Errorf("probe times %v, want %v", got, want)
		}
	})
}

// TestSilentTargetDownWithinFallTimeouts: probes of a server that never
// answers end at the timeout, so the target is down after Fall timeouts
// and the FastInterval waits between them.
func TestSilentTargetDownWithinFallTimeouts(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		p.setHang("imap1", true)
		c := health.New(timingOptions(p))
		mustAdd(t, c, health.Target{Name: "imap1", Address: "192.0.2.3:143", Kind: health.ProbeIMAP})
		stop := run(t, c)
		// Probes start at 0, 3, 6 and each times out after 1 s.
		sleepUntil(p.start, 6*time.Second+999*time.Millisecond)
		wantState(t, c, "imap1", health.Unknown)
		sleepUntil(p.start, 7*time.Second)
		wantState(t, c, "imap1", health.Down)
		st, _ := c.Status("imap1")
		if !errors.Is(st.LastError, context.DeadlineExceeded) || st.LastLatency != time.Second ||
			st.Since != p.start.Add(7*time.Second) {
			t.Errorf("status %+v", st)
		}
		stop()
	})
}

// TestLateSuccessIsFailure: a prober that ignores its deadline and
// answers late has not shown the target fit within the timeout.
func TestLateSuccessIsFailure(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		opts := timingOptions(health.ProberFunc(func(ctx context.Context, _ health.Target) error {
			time.Sleep(1500 * time.Millisecond)
			return nil
		}))
		opts.Fall = 1
		c := health.New(opts)
		mustAdd(t, c, health.Target{Name: "slow", Address: "192.0.2.4:25"})
		stop := run(t, c)
		sleepUntil(time.Now(), 2*time.Second)
		wantState(t, c, "slow", health.Down)
		st, _ := c.Status("slow")
		var pe *health.ProbeError
		if !errors.As(st.LastError, &pe) || !pe.Timeout() {
			t.Errorf("LastError = %v, want a timeout ProbeError", st.LastError)
		}
		stop()
	})
}

// TestPassiveFailuresBringTargetDownBeforeNextProbe: Fall reports from
// clients take an up target down at once, without waiting for a probe.
func TestPassiveFailuresBringTargetDownBeforeNextProbe(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		c := health.New(timingOptions(p))
		sub := c.Subscribe()
		defer sub.Close()
		mustAdd(t, c, health.Target{Name: "relay1", Address: "192.0.2.1:25", Kind: health.ProbeSMTP})
		stop := run(t, c)
		// Up at 2, next probe due at 12. Clients fail at 2.5: the first
		// failure brings the next probe to 4, but Fall of them take the
		// target down before that.
		sleepUntil(p.start, 2500*time.Millisecond)
		wantState(t, c, "relay1", health.Up)
		errLost := errors.New("connection lost before the end of DATA")
		for i := range 3 {
			wantState(t, c, "relay1", health.Up)
			c.ReportFailure("relay1", fmt.Errorf("delivery %d: %w", i, errLost))
			synctest.Wait()
		}
		wantState(t, c, "relay1", health.Down)
		if n := p.count("relay1"); n != 2 {
			t.Errorf("%d probes before the passive down, want 2", n)
		}
		st, _ := c.Status("relay1")
		if st.Reports != 3 || st.ConsecutiveFailures != 3 || !errors.Is(st.LastError, errLost) {
			t.Errorf("status %+v", st)
		}
		var last health.Change
		for ch, ok := sub.TryNext(); ok; ch, ok = sub.TryNext() {
			last = ch
		}
		if last.From != health.Up || last.To != health.Down || !last.Passive || !errors.Is(last.Err, errLost) ||
			last.At != p.start.Add(2500*time.Millisecond) {
			t.Errorf("last change %+v", last)
		}
		// The server is fine for probes: the probe at 4 and one
		// FastInterval later bring it back.
		sleepUntil(p.start, 5*time.Second)
		wantState(t, c, "relay1", health.Down)
		sleepUntil(p.start, 7*time.Second)
		wantState(t, c, "relay1", health.Up)
		stop()
		if got, want := p.times("relay1"), secs(0, 2, 4, 6); !slices.Equal(got, want) {
			t.Errorf("probe times %v, want %v", got, want)
		}
	})
}

// TestPassiveFailureHastensNextProbe: one failure seen by a client makes
// the target "changing state", so it is probed at FastInterval from its
// last probe (at once if that is past), as HAProxy's fastinter.
func TestPassiveFailureHastensNextProbe(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		c := health.New(timingOptions(p))
		mustAdd(t, c, health.Target{Name: "a", Address: "192.0.2.1:25"})
		mustAdd(t, c, health.Target{Name: "b", Address: "192.0.2.2:25"})
		stop := run(t, c)
		sleepUntil(p.start, 3*time.Second) // both up at 2; next probes at 12
		c.ReportFailure("a", nil)          // probe at last probe (2) + 2
		sleepUntil(p.start, 5*time.Second)
		c.ReportFailure("b", nil) // 2 + 2 is past: probe now
		sleepUntil(p.start, 30*time.Second)
		stop()
		if got, want := p.times("a"), secs(0, 2, 4, 14, 24); !slices.Equal(got, want) {
			t.Errorf("a: probe times %v, want %v", got, want)
		}
		if got, want := p.times("b"), secs(0, 2, 5, 15, 25); !slices.Equal(got, want) {
			t.Errorf("b: probe times %v, want %v", got, want)
		}
		if st, _ := c.Status("a"); st.State != health.Up || st.ConsecutiveFailures != 0 ||
			!errors.Is(st.LastError, health.ErrReportedFailure) {
			t.Errorf("a: %+v", st)
		}
	})
}

// TestPassiveSuccessesCountTowardRise: a client that delivered through a
// target marked down proves it works; Rise such reports bring it up.
func TestPassiveSuccessesCountTowardRise(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		p.set("relay1", errRefused)
		c := health.New(timingOptions(p))
		mustAdd(t, c, health.Target{Name: "relay1", Address: "192.0.2.1:25"})
		stop := run(t, c)
		// Down at 4, next probe at 34; the first success brings it to 6.
		sleepUntil(p.start, 4500*time.Millisecond)
		wantState(t, c, "relay1", health.Down)
		c.ReportSuccess("relay1")
		synctest.Wait()
		wantState(t, c, "relay1", health.Down)
		c.ReportSuccess("relay1")
		wantState(t, c, "relay1", health.Up)
		if st, _ := c.Status("relay1"); st.Since != p.start.Add(4500*time.Millisecond) || st.Reports != 2 {
			t.Errorf("status %+v", st)
		}
		stop()
	})
}

// TestUnknownNamesAreIgnored: the View contract for names the checker
// does not hold.
func TestUnknownNamesAreIgnored(t *testing.T) {
	t.Parallel()
	c := health.New(&health.Options{Rise: 1, Fall: 1})
	sub := c.Subscribe()
	defer sub.Close()
	c.ReportFailure("nobody", errRefused)
	c.ReportSuccess("nobody")
	wantState(t, c, "nobody", health.Unknown)
	if _, ok := c.Status("nobody"); ok {
		t.Error("Status of an unknown name reported ok")
	}
	if ch, ok := sub.TryNext(); ok {
		t.Errorf("change %+v for an unknown name", ch)
	}
	if n := len(c.Snapshot()); n != 0 {
		t.Errorf("snapshot has %d targets", n)
	}
}

// TestAddAndRemoveWhileRunning: a target added to a running checker is
// probed at once; a removed one is no longer probed, its in-flight probe is
// abandoned, it reads as Unknown and reports on it are ignored.
func TestAddAndRemoveWhileRunning(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		c := health.New(timingOptions(p))
		sub := c.Subscribe()
		defer sub.Close()
		stop := run(t, c)
		sleepUntil(p.start, 5*time.Second)
		mustAdd(t, c, health.Target{Name: "replica2", Address: "192.0.2.5:143", Kind: health.ProbeIMAP})
		if err := c.AddTarget(health.Target{Name: "replica2", Address: "192.0.2.6:143"}); !errors.Is(err, health.ErrDuplicateTarget) {
			t.Errorf("duplicate AddTarget: %v", err)
		}
		sleepUntil(p.start, 8*time.Second) // probes at 5 and 7: up
		wantState(t, c, "replica2", health.Up)

		p.setHang("replica2", true)
		sleepUntil(p.start, 17*time.Second+500*time.Millisecond) // probe at 17 hangs
		if !c.RemoveTarget("replica2") {
			t.Fatal("RemoveTarget of a held target returned false")
		}
		if c.RemoveTarget("replica2") {
			t.Error("second RemoveTarget returned true")
		}
		c.ReportFailure("replica2", errRefused)
		wantState(t, c, "replica2", health.Unknown)
		sleepUntil(p.start, 60*time.Second)
		if got, want := p.times("replica2"), secs(5, 7, 17); !slices.Equal(got, want) {
			t.Errorf("probe times %v, want %v", got, want)
		}
		var changes []health.Change
		for ch, ok := sub.TryNext(); ok; ch, ok = sub.TryNext() {
			changes = append(changes, ch)
		}
		if len(changes) != 2 || changes[1].From != health.Up || changes[1].To != health.Unknown || !changes[1].Removed {
			t.Errorf("changes %+v", changes)
		}

		// Added again under the same name: a fresh target.
		p.setHang("replica2", false)
		mustAdd(t, c, health.Target{Name: "replica2", Address: "192.0.2.5:143", Kind: health.ProbeIMAP})
		wantState(t, c, "replica2", health.Unknown)
		sleepUntil(p.start, 63*time.Second)
		wantState(t, c, "replica2", health.Up)
		stop()
	})
}

// TestRunLifecycle: Run refuses to run twice at once, returns when its
// context ends, leaves no goroutine behind (synctest would report a
// deadlock or leak), and can run again.
func TestRunLifecycle(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		c := health.New(timingOptions(p))
		mustAdd(t, c, health.Target{Name: "mx1", Address: "192.0.2.2:25"})
		stop := run(t, c)
		synctest.Wait()
		if err := c.Run(context.Background()); !errors.Is(err, health.ErrRunning) {
			t.Errorf("second Run: %v", err)
		}
		sleepUntil(p.start, 3*time.Second)
		stop()
		n := p.count("mx1")
		sleepUntil(p.start, 60*time.Second)
		if p.count("mx1") != n {
			t.Error("probes continued after Run returned")
		}
		// Run again: state is kept, probing resumes.
		wantState(t, c, "mx1", health.Up)
		stop = run(t, c)
		sleepUntil(p.start, 61*time.Second)
		if p.count("mx1") != n+1 {
			t.Errorf("%d probes after restart, want %d", p.count("mx1"), n+1)
		}
		stop()
	})
}

// TestJitterSpreadsProbes: with jitter, waits stay within ±Jitter of the
// interval and the first probe within Jitter × Interval.
func TestJitterSpreadsProbes(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		opts := timingOptions(p)
		opts.Jitter = 0.2
		opts.Rise = 1
		c := health.New(opts)
		names := []string{"a", "b", "c", "d"}
		for _, n := range names {
			mustAdd(t, c, health.Target{Name: n, Address: "192.0.2.1:25"})
		}
		stop := run(t, c)
		sleepUntil(p.start, 200*time.Second)
		stop()
		firsts := map[time.Duration]bool{}
		for _, n := range names {
			at := p.times(n)
			if len(at) < 10 {
				t.Fatalf("%s: only %d probes", n, len(at))
			}
			if at[0] > 2*time.Second {
				t.Errorf("%s: first probe at %v, want ≤ 2s", n, at[0])
			}
			firsts[at[0]] = true
			for i := 1; i < len(at); i++ {
				if d := at[i] - at[i-1]; d < 8*time.Second || d > 12*time.Second {
					t.Errorf("%s: wait %v between probes, want 8s..12s", n, d)
				}
			}
		}
		if len(firsts) < 2 {
			t.Errorf("all targets first probed at the same instant %v", firsts)
		}
	})
}

func TestAddTargetValidation(t *testing.T) {
	t.Parallel()
	c := health.New(nil)
	for _, tg := range []health.Target{
		{Address: "192.0.2.1:25"},
		{Name: "no-port", Address: "192.0.2.1"},
		{Name: "kind", Address: "192.0.2.1:25", Kind: 7},
		{Name: "tls", Address: "192.0.2.1:25", TLS: 9},
		{Name: "tcp-starttls", Address: "192.0.2.1:25", TLS: health.StartTLS},
		{Name: "rise", Address: "192.0.2.1:25", Rise: -1},
		{Name: "timeout", Address: "192.0.2.1:25", Timeout: -time.Second},
		{Name: "ehlo", Address: "192.0.2.1:25", Kind: health.ProbeSMTP, EHLOName: "a\r\nRSET"},
		{Name: "ehlo-space", Address: "192.0.2.1:25", Kind: health.ProbeSMTP, EHLOName: "mail example"},
		{Name: "login", Address: "192.0.2.1:143", Kind: health.ProbeIMAP, Username: "a", Password: "x\r\nh9 LOGOUT"},
	} {
		if err := c.AddTarget(tg); !errors.Is(err, health.ErrInvalidTarget) {
			t.Errorf("AddTarget(%+v) = %v, want ErrInvalidTarget", tg, err)
		}
	}
	if n := len(c.Snapshot()); n != 0 {
		t.Errorf("%d targets held after invalid adds", n)
	}
}

// TestPerTargetOverrides: a target's own interval, rise and fall replace
// the checker's defaults for it alone.
func TestPerTargetOverrides(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		p := newScriptedProber()
		c := health.New(timingOptions(p))
		mustAdd(t, c, health.Target{Name: "default", Address: "192.0.2.1:25"})
		mustAdd(t, c, health.Target{Name: "eager", Address: "192.0.2.2:25",
			Interval: 5 * time.Second, FastInterval: time.Second, DownInterval: 7 * time.Second, Rise: 1, Fall: 1})
		stop := run(t, c)
		sleepUntil(p.start, 500*time.Millisecond)
		wantState(t, c, "eager", health.Up) // Rise 1
		wantState(t, c, "default", health.Unknown)
		sleepUntil(p.start, 10500*time.Millisecond)
		p.set("eager", errRefused)
		p.set("default", errRefused)
		sleepUntil(p.start, 30*time.Second)
		stop()
		// eager: up at 0, steady every 5 s; down at its first failure (15),
		// then every 7 s.
		if got, want := p.times("eager"), secs(0, 5, 10, 15, 22, 29); !slices.Equal(got, want) {
			t.Errorf("eager: probe times %v, want %v", got, want)
		}
		// default: up at 2, steady every 10 s; failing from 12, every 2 s,
		// down at 16, next probe at 46.
		if got, want := p.times("default"), secs(0, 2, 12, 14, 16); !slices.Equal(got, want) {
			t.Errorf("default: probe times %v, want %v", got, want)
		}
		wantState(t, c, "default", health.Down)
	})
}
