package health

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

var _ View = (*Checker)(nil)

// Status is what the checker knows about one target at one moment.
type Status struct {
	Name    string
	Address string
	Kind    ProbeKind
	State   State
	// Since is when the target entered State (for Unknown: when it was
	// added).
	Since time.Time
	// LastError is the error of the last bad observation, active or
	// passive; nil if there was none. LastErrorAt is when it was seen.
	LastError   error
	LastErrorAt time.Time
	// ConsecutiveSuccesses and ConsecutiveFailures count the observations
	// (probes and passive reports) since the last one of the other kind.
	// At most one of them is non-zero.
	ConsecutiveSuccesses int
	ConsecutiveFailures  int
	// LastProbe is when the last active probe ended (zero before the
	// first) and LastLatency how long it took, whatever its outcome.
	LastProbe   time.Time
	LastLatency time.Duration
	// Probes and Reports count active probes and passive reports.
	Probes  uint64
	Reports uint64
	// Seq is the Seq of the last Change of this target, 0 if none. A
	// subscriber that reads a snapshot after subscribing can ignore the
	// changes whose Seq is not above it.
	Seq uint64
}

// Checker probes targets, applies rise/fall hysteresis to probe results
// and passive reports, and publishes target states. Create it with New;
// it is safe for concurrent use.
type Checker struct {
	s   settings
	log *slog.Logger

	mu      sync.Mutex
	targets map[string]*target
	seq     uint64 // last Change.Seq handed out
	subs    map[*Subscription]struct{}
	running bool      // Run is between its start and its return
	run     *runState // non-nil while Run starts target loops

	hookMu   sync.Mutex
	hookQ    []func()
	hookBusy bool
}

type runState struct {
	ctx context.Context
	wg  sync.WaitGroup
}

type target struct {
	cfg    Target
	prober Prober
	st     Status
	// cancel stops the target's probe loop; nil when no loop runs.
	cancel context.CancelFunc
	// wake tells the loop that a passive report changed the pace.
	wake chan struct{}
}

// New returns a checker without targets. It does no I/O and starts no
// goroutine: add targets with AddTarget and probe them with Run.
func New(opts *Options) *Checker {
	s := resolve(opts)
	return &Checker{
		s:       s,
		log:     s.Logger,
		targets: make(map[string]*target),
		subs:    make(map[*Subscription]struct{}),
	}
}

// AddTarget adds a target in the Unknown state. Zero fields take the
// checker's defaults. When the checker is running, probing starts at once
// (after a jittered delay). It fails with ErrInvalidTarget or
// ErrDuplicateTarget.
func (c *Checker) AddTarget(t Target) error {
	t, err := c.s.withDefaults(t)
	if err != nil {
		return err
	}
	tg := &target{cfg: t, prober: cmp.Or[Prober](t.Prober, c.s.Prober), wake: make(chan struct{}, 1)}
	tg.st = Status{Name: t.Name, Address: t.Address, Kind: t.Kind, State: Unknown, Since: time.Now()}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.targets[t.Name]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicateTarget, t.Name)
	}
	c.targets[t.Name] = tg
	if c.run != nil {
		c.startLocked(c.run, tg)
	}
	return nil
}

// RemoveTarget removes the named target and stops probing it (a probe in
// flight is canceled and its result ignored). Afterwards the name reads as
// Unknown and reports on it are ignored. Subscribers get a Change with
// Removed set. It reports whether the target existed.
func (c *Checker) RemoveTarget(name string) bool {
	c.mu.Lock()
	t, ok := c.targets[name]
	if !ok {
		c.mu.Unlock()
		return false
	}
	delete(c.targets, name)
	if t.cancel != nil {
		t.cancel()
		t.cancel = nil
	}
	ch := Change{Target: name, From: t.st.State, To: Unknown, At: time.Now(), Removed: true}
	c.publishLocked(t, &ch)
	c.mu.Unlock()
	c.dispatch()
	return true
}

// Run probes every target until ctx ends, then waits for its probes to
// stop and returns ctx.Err(). Targets added or removed while it runs are
// started or stopped. Run returns ErrRunning if the checker is already
// running; after it returns it may be called again.
func (c *Checker) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running {
		c.mu.Unlock()
		return ErrRunning
	}
	r := &runState{ctx: ctx}
	c.running = true
	c.run = r
	for _, t := range c.targets {
		c.startLocked(r, t)
	}
	c.mu.Unlock()

	<-ctx.Done()

	c.mu.Lock()
	c.run = nil
	for _, t := range c.targets {
		t.cancel = nil
	}
	c.mu.Unlock()
	r.wg.Wait()
	c.mu.Lock()
	c.running = false
	c.mu.Unlock()
	return ctx.Err()
}

func (c *Checker) startLocked(r *runState, t *target) {
	ctx, cancel := context.WithCancel(r.ctx)
	t.cancel = cancel
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer cancel()
		c.loop(ctx, t)
	}()
}

// loop probes one target until ctx ends. Waits are measured from the end
// of the previous probe, as HAProxy does, and chosen by the target's pace
// (see interval).
func (c *Checker) loop(ctx context.Context, t *target) {
	last := time.Now()
	next := last.Add(c.firstDelay(t))
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
			// A passive report may have made the pace faster: move the
			// next probe earlier, never later.
			if at := last.Add(c.jittered(c.interval(t))); at.Before(next) {
				next = at
				timer.Reset(time.Until(next))
			}
			continue
		case <-timer.C:
		}
		c.probe(ctx, t)
		if ctx.Err() != nil {
			return
		}
		last = time.Now()
		next = last.Add(c.jittered(c.interval(t)))
		timer.Reset(time.Until(next))
	}
}

func (c *Checker) probe(ctx context.Context, t *target) {
	pctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	start := time.Now()
	err := t.prober.Probe(pctx, t.cfg)
	end := time.Now()
	perr := pctx.Err()
	cancel()
	if ctx.Err() != nil {
		// Shutting down or removed: says nothing about the target.
		return
	}
	if err == nil && perr != nil {
		// The prober answered after its deadline: too slow is down.
		err = &ProbeError{Target: t.cfg.Name, Kind: t.cfg.Kind, Step: "timeout", Err: perr}
	}
	c.observe(t, observation{ok: err == nil, err: err, at: end, latency: end.Sub(start)})
}

// interval is the wait before the next probe, by the target's pace:
// Interval while steadily up, DownInterval while steadily down,
// FastInterval while unknown or while observations disagree with the state.
func (c *Checker) interval(t *target) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return t.intervalLocked()
}

func (t *target) intervalLocked() time.Duration {
	switch {
	case t.st.State == Up && t.st.ConsecutiveFailures == 0:
		return t.cfg.Interval
	case t.st.State == Down && t.st.ConsecutiveSuccesses == 0:
		return t.cfg.DownInterval
	default:
		return t.cfg.FastInterval
	}
}

func (c *Checker) jittered(d time.Duration) time.Duration {
	if c.s.jitter == 0 {
		return d
	}
	f := 1 + c.s.jitter*(2*rand.Float64()-1)
	return time.Duration(float64(d) * f)
}

func (c *Checker) firstDelay(t *target) time.Duration {
	if c.s.jitter == 0 {
		return 0
	}
	return time.Duration(rand.Float64() * c.s.jitter * float64(t.cfg.Interval))
}

type observation struct {
	ok      bool
	err     error
	passive bool
	at      time.Time
	latency time.Duration // active probes only
}

// observe applies one probe result or passive report to t.
func (c *Checker) observe(t *target, o observation) {
	c.mu.Lock()
	if c.targets[t.cfg.Name] != t {
		// Removed (and perhaps added again) meanwhile.
		c.mu.Unlock()
		return
	}
	st := &t.st
	pace := t.intervalLocked()
	if o.passive {
		st.Reports++
	} else {
		st.Probes++
		st.LastProbe = o.at
		st.LastLatency = o.latency
	}
	var ch *Change
	if o.ok {
		st.ConsecutiveFailures = 0
		st.ConsecutiveSuccesses++
		if st.State != Up && st.ConsecutiveSuccesses >= t.cfg.Rise {
			ch = &Change{Target: st.Name, From: st.State, To: Up, At: o.at, Passive: o.passive}
		}
	} else {
		st.LastError = o.err
		st.LastErrorAt = o.at
		st.ConsecutiveSuccesses = 0
		st.ConsecutiveFailures++
		if st.State != Down && st.ConsecutiveFailures >= t.cfg.Fall {
			ch = &Change{Target: st.Name, From: st.State, To: Down, At: o.at, Err: o.err, Passive: o.passive}
		}
	}
	c.hooksLocked(t, o)
	if ch != nil {
		st.State = ch.To
		st.Since = ch.At
		c.publishLocked(t, ch)
	}
	if o.passive && t.intervalLocked() != pace {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
	c.mu.Unlock()
	c.dispatch()
}

// publishLocked numbers a change, queues it to every subscription, and
// queues the hooks and the log line for it.
func (c *Checker) publishLocked(t *target, ch *Change) {
	c.seq++
	ch.Seq = c.seq
	t.st.Seq = c.seq
	for s := range c.subs {
		s.push(*ch)
	}
	change := *ch
	addr := t.cfg.Address
	c.enqueueLocked(func() {
		switch {
		case change.Removed:
			c.log.Info("health: target removed", "target", change.Target, "address", addr, "from", change.From)
		case change.To == Down:
			c.log.Warn("health: target down", "target", change.Target, "address", addr, "from", change.From,
				"passive", change.Passive, "error", change.Err)
		default:
			c.log.Info("health: target "+change.To.String(), "target", change.Target, "address", addr,
				"from", change.From, "passive", change.Passive)
		}
		if f := c.s.Hooks.Changed; f != nil {
			f(change)
		}
	})
}

func (c *Checker) hooksLocked(t *target, o observation) {
	name, kind := t.cfg.Name, t.cfg.Kind
	if o.passive {
		c.enqueueLocked(func() {
			if !o.ok {
				c.log.Debug("health: failure reported", "target", name, "error", o.err)
			}
			if f := c.s.Hooks.Reported; f != nil {
				f(Report{Target: name, At: o.at, Err: o.err})
			}
		})
		return
	}
	c.enqueueLocked(func() {
		c.log.Debug("health: probe", "target", name, "kind", kind, "latency", o.latency, "error", o.err)
		if f := c.s.Hooks.Probed; f != nil {
			f(ProbeResult{Target: name, Kind: kind, At: o.at, Latency: o.latency, Err: o.err})
		}
	})
}

// ReportSuccess records a good exchange with the named target seen on a
// real connection; it counts toward Rise and breaks a run of failures.
// Unknown names are ignored.
func (c *Checker) ReportSuccess(name string) {
	c.report(name, nil)
}

// ReportFailure records a failure of the named target seen on a real
// connection; it counts toward Fall, so Fall reports bring an up target
// down at once, and it makes the next probe come at FastInterval. A nil
// err is recorded as ErrReportedFailure. Unknown names are ignored.
func (c *Checker) ReportFailure(name string, err error) {
	if err == nil {
		err = ErrReportedFailure
	}
	c.report(name, err)
}

func (c *Checker) report(name string, err error) {
	c.mu.Lock()
	t := c.targets[name]
	c.mu.Unlock()
	if t == nil {
		return
	}
	c.observe(t, observation{ok: err == nil, err: err, passive: true, at: time.Now()})
}

// State returns the state of the named target; Unknown for a name the
// checker does not hold.
func (c *Checker) State(name string) State {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.targets[name]; t != nil {
		return t.st.State
	}
	return Unknown
}

// Status returns the status of the named target, and false if the checker
// does not hold it.
func (c *Checker) Status(name string) (Status, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.targets[name]; t != nil {
		return t.st, true
	}
	return Status{}, false
}

// Snapshot returns the status of every target, sorted by name, taken at
// one instant.
func (c *Checker) Snapshot() []Status {
	c.mu.Lock()
	out := make([]Status, 0, len(c.targets))
	for _, t := range c.targets {
		out = append(out, t.st)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b Status) int { return cmp.Compare(a.Name, b.Name) })
	return out
}
