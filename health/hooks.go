package health

import "time"

// Hooks are optional functions the checker calls on what it sees: the
// place for metrics adapters. They are called one at a time, in the order
// the events happened (so a target's changes arrive in order), outside the
// checker's locks: a hook may call the Checker. A hook runs on the
// goroutine that caused the event or on one that is already running hooks
// (a probe loop, or a client calling ReportFailure), so it must be quick
// and must not block.
type Hooks struct {
	// Probed is called after every active probe.
	Probed func(ProbeResult)
	// Reported is called after every passive report on a known target.
	Reported func(Report)
	// Changed is called for every state change, and when a target is
	// removed.
	Changed func(Change)
}

// ProbeResult is the outcome of one active probe.
type ProbeResult struct {
	Target  string
	Kind    ProbeKind
	At      time.Time     // when the probe ended
	Latency time.Duration // how long it took
	Err     error         // nil when the target passed
}

// Report is one passive report.
type Report struct {
	Target string
	At     time.Time
	Err    error // nil for ReportSuccess
}

// Change is a state transition of one target.
type Change struct {
	Target   string
	From, To State
	At       time.Time
	// Err is the error of the observation that brought the target down;
	// nil for other changes.
	Err error
	// Passive is set when a passive report, not a probe, caused it.
	Passive bool
	// Removed is set when the target was removed (To is then Unknown).
	Removed bool
	// Seq numbers changes across the checker, increasing: a target's
	// changes have increasing Seq.
	Seq uint64
	// Skipped counts the changes of this target a slow subscription
	// coalesced into this one; From is then the state before the first of
	// them, and From may equal To. Always 0 for hooks.
	Skipped int
}

// enqueueLocked queues f to run in order with the other hooks. Called with
// c.mu held, so queue order is the order of the events.
func (c *Checker) enqueueLocked(f func()) {
	c.hookMu.Lock()
	c.hookQ = append(c.hookQ, f)
	c.hookMu.Unlock()
}

// dispatch runs queued hooks unless another goroutine already is: that one
// will run what was queued. Hooks therefore run one at a time, in order,
// without any checker lock held, and a hook that calls back into the
// checker only queues more work.
func (c *Checker) dispatch() {
	c.hookMu.Lock()
	if c.hookBusy {
		c.hookMu.Unlock()
		return
	}
	c.hookBusy = true
	done := false
	defer func() {
		if !done {
			// A hook panicked: let later events still run their hooks.
			c.hookMu.Lock()
			c.hookBusy = false
			c.hookMu.Unlock()
		}
	}()
	for len(c.hookQ) > 0 {
		q := c.hookQ
		c.hookQ = nil
		c.hookMu.Unlock()
		for _, f := range q {
			f()
		}
		c.hookMu.Lock()
	}
	// Cleared under the same lock that saw the queue empty, so an event
	// queued after this point finds no dispatcher busy and runs its own.
	c.hookBusy = false
	done = true
	c.hookMu.Unlock()
}
