package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// RunnerOptions configures a Runner. A nil *RunnerOptions means the
// defaults; so does each zero field.
type RunnerOptions struct {
	// Concurrency is the largest number of attempts in flight; 0 means 16.
	Concurrency int
	// AttemptTimeout bounds one call to Deliver; 0 means 10 minutes.
	AttemptTimeout time.Duration
	// LeaseDuration is how long an item is leased for one attempt; it must
	// exceed AttemptTimeout so that a slow attempt does not lose its lease
	// to another worker. 0 means AttemptTimeout plus one minute.
	LeaseDuration time.Duration
	// Schedule decides retries and the lifetime; nil means Retry{}.
	Schedule Schedule
	// PollInterval is how often a store that is not a Notifier is asked
	// for due items when idle; 0 means one second.
	PollInterval time.Duration
	// NoticeRetry is the wait before trying again to hand over a notice
	// that failed (hook error, enqueue error); 0 means 5 minutes.
	NoticeRetry time.Duration

	// ReportingMTA names this host in notices; "" means os.Hostname.
	ReportingMTA string
	// ReturnLimit is DSNOptions.ReturnLimit for the notices built.
	ReturnLimit int64
	// OnNotice, if set, receives every notice (failure or delay) before
	// the DSN is enqueued. An error leaves the notice owed: it is offered
	// again after NoticeRetry. A crash can repeat a call for the same
	// notice; Notice.ID with Notice.Kind and the recipients identify it.
	OnNotice func(ctx context.Context, n *Notice) error
	// NoDSN: do not enqueue DSN messages; notices go to OnNotice only.
	NoDSN bool

	// OnAttempt, if set, is called after each delivery attempt with what
	// happened, for metrics and logs. It must not block.
	OnAttempt func(a *Attempt)

	// Now is the clock for attempt times and retry decisions; nil means
	// time.Now. Waits use the time package's timers (tests drive them
	// with testing/synctest).
	Now func() time.Time
	// Logger receives attempt failures and store errors; nil discards.
	Logger *slog.Logger
}

// Attempt describes one finished delivery attempt (RunnerOptions.OnAttempt).
type Attempt struct {
	ID         string
	Number     int               // 1 for the first attempt
	Recipients []Recipient       // the recipients tried
	Results    []RecipientResult // as the Deliverer returned them
	Err        error             // as the Deliverer returned it
	Start      time.Time
	Duration   time.Duration
}

// Runner delivers the items of a Store through a Deliverer. Create it with
// NewRunner, then call Run. Several runners, in one process or many, may
// share a store: leases keep them from attempting the same item at once.
type Runner struct {
	store     Store
	deliverer Deliverer
	o         RunnerOptions
	sched     Schedule
	now       func() time.Time
	log       *slog.Logger
}

// NewRunner returns a runner of store's items through d. It does no I/O.
func NewRunner(store Store, d Deliverer, opts *RunnerOptions) *Runner {
	r := &Runner{store: store, deliverer: d}
	if opts != nil {
		r.o = *opts
	}
	if r.o.Concurrency <= 0 {
		r.o.Concurrency = 16
	}
	if r.o.AttemptTimeout <= 0 {
		r.o.AttemptTimeout = 10 * time.Minute
	}
	if r.o.LeaseDuration <= 0 {
		r.o.LeaseDuration = r.o.AttemptTimeout + time.Minute
	}
	if limit := r.o.LeaseDuration - r.o.LeaseDuration/10; r.o.AttemptTimeout > limit {
		// An attempt outliving its lease could run beside a second
		// attempt of the same item by another worker.
		r.o.AttemptTimeout = limit
	}
	if r.o.PollInterval <= 0 {
		r.o.PollInterval = time.Second
	}
	if r.o.NoticeRetry <= 0 {
		r.o.NoticeRetry = 5 * time.Minute
	}
	r.sched = r.o.Schedule
	if r.sched == nil {
		r.sched = Retry{}
	}
	r.now = r.o.Now
	if r.now == nil {
		r.now = time.Now
	}
	r.log = r.o.Logger
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r
}

// Run leases due items and attempts them, at most Concurrency at a time,
// until ctx ends. It then stops leasing, lets the attempts in flight end
// (their Deliver context is cancelled; what they report is recorded, and
// recipients without a definite result are released to be tried again at
// once), and returns nil. It returns early only if the store is closed.
func (r *Runner) Run(ctx context.Context) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		inflight int
		freed    = make(chan struct{}, 1)
	)
	defer wg.Wait()
	notifier, _ := r.store.(Notifier)
	for {
		if ctx.Err() != nil {
			return nil
		}
		mu.Lock()
		free := r.o.Concurrency - inflight
		mu.Unlock()
		if free == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-freed:
			}
			continue
		}
		items, err := r.store.Lease(ctx, free, r.o.LeaseDuration)
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return err
			}
			if ctx.Err() != nil {
				return nil
			}
			// Corrupt records come with the good items; anything else is
			// a store failure worth a pause.
			r.log.Error("queue: lease", "err", err)
			if len(items) == 0 && !errors.Is(err, ErrCorrupt) {
				if !r.wait(ctx, r.o.PollInterval, nil, freed) {
					return nil
				}
				continue
			}
		}
		for _, it := range items {
			mu.Lock()
			inflight++
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					inflight--
					mu.Unlock()
					select {
					case freed <- struct{}{}:
					default:
					}
				}()
				r.attempt(ctx, it)
			})
		}
		if len(items) > 0 && len(items) == free {
			continue // there may be more due
		}
		// Nothing more is due: wait for the next due time or a change.
		delay := r.o.PollInterval
		var changed <-chan struct{}
		if notifier != nil {
			next, ok, ch, err := notifier.NextDue(ctx)
			switch {
			case err != nil && errors.Is(err, ErrClosed):
				return err
			case err != nil:
				r.log.Error("queue: next due", "err", err)
			case ok:
				changed = ch
				delay = max(next.Sub(r.now()), 0)
				if delay == 0 && len(items) == 0 {
					// Became due between Lease and NextDue, or taken by
					// another runner: look again shortly, not in a loop.
					delay = 10 * time.Millisecond
				}
			default:
				changed = ch
				delay = -1 // nothing queued: wait for a change
			}
		}
		if !r.wait(ctx, delay, changed, freed) {
			return nil
		}
	}
}

// wait returns after d (never if d < 0), a change, a freed slot or the end
// of ctx; false means ctx ended.
func (r *Runner) wait(ctx context.Context, d time.Duration, changed <-chan struct{}, freed <-chan struct{}) bool {
	var timeout <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-timeout:
	case <-changed:
	case <-freed:
	}
	return true
}

// attempt makes one delivery attempt of a leased item and records it.
func (r *Runner) attempt(ctx context.Context, it *Item) {
	log := r.log.With("id", it.ID)
	// Writes go through even when Run is stopping: a result that is not
	// recorded would be delivered again.
	wctx := context.WithoutCancel(ctx)
	rs := append([]RecipientState(nil), it.Recipients...)
	attempts := it.Attempts
	lastErr := it.LastError
	pending := it.Pending()
	now := r.now()

	var body Body
	if len(pending) > 0 {
		b, err := r.store.Body(wctx, it.ID)
		if errors.Is(err, ErrNotFound) {
			if _, ierr := r.store.Inspect(wctx, it.ID); errors.Is(ierr, ErrNotFound) {
				return // completed meanwhile by another worker
			}
			// The item is there and its body is not. Unlike ErrCorrupt
			// this may pass (a distributed store catching up), so it is
			// retried on the schedule below, and the lifetime ends it.
		}
		switch {
		case errors.Is(err, ErrCorrupt):
			// The content is lost for good (a spool file gone, a body of
			// the wrong length): no attempt can deliver it, and the sender
			// must learn of it, so the pending recipients fail now and the
			// failure notice goes out without the original.
			log.Error("queue: message content lost, giving up", "err", err)
			for _, i := range pending {
				rs[i].Status = StatusFailed
				rs[i].LastAttempt = now
				rs[i].Reply = Reply{Enhanced: "5.3.0", Text: "message content lost from the queue"}
				rs[i].Host = ""
			}
			lastErr = err.Error()
			pending = nil
		case err != nil:
			// A store failure: no attempt now; the recipients wait on the
			// retry schedule like after a failed attempt, so the lifetime
			// still ends it.
			log.Error("queue: opening body", "err", err)
			lastErr = fmt.Sprintf("reading the message from the queue: %v", err)
			for _, i := range pending {
				rs[i].LastAttempt = now
				rs[i].Reply = Reply{Enhanced: "4.3.0", Text: lastErr}
				rs[i].Host = ""
			}
			pending = nil
		default:
			body = b
		}
	}
	if len(pending) > 0 {
		d := &Delivery{ID: it.ID, Envelope: it.Envelope, Body: body, Attempt: attempts + 1}
		for _, i := range pending {
			d.Recipients = append(d.Recipients, rs[i].Recipient)
		}
		actx, cancel := context.WithTimeout(ctx, r.o.AttemptTimeout)
		results, derr := r.deliver(actx, d)
		cancel()
		_ = body.Close()
		start := now
		now = r.now()
		if r.o.OnAttempt != nil {
			r.o.OnAttempt(&Attempt{ID: it.ID, Number: d.Attempt, Recipients: d.Recipients, Results: results, Err: derr, Start: start, Duration: now.Sub(start)})
		}
		stopping := ctx.Err() != nil
		definite := false
		var errs []string
		for j, i := range pending {
			res := RecipientResult{Outcome: OutcomeTemporary}
			if j < len(results) {
				res = results[j]
			} else if derr != nil {
				res.Reply = Reply{Text: derr.Error()}
			} else {
				res.Reply = Reply{Text: "no result from the deliverer"}
			}
			if stopping && res.Outcome == OutcomeTemporary {
				continue // released, not counted: it is tried again at once
			}
			st := &rs[i]
			definite = true
			st.LastAttempt = now
			st.Reply, st.Host = res.Reply, res.Host
			switch res.Outcome {
			case OutcomeDelivered:
				st.Status = StatusDelivered
			case OutcomePermanent:
				st.Status = StatusFailed
			case OutcomeUnknown:
				st.PossibleDuplicate = true
				errs = append(errs, fmt.Sprintf("%s: outcome unknown: %s", st.Address, res.Reply))
			default:
				errs = append(errs, fmt.Sprintf("%s: %s", st.Address, res.Reply))
			}
		}
		if stopping && !definite {
			r.record(wctx, log, it, Update{Recipients: it.Recipients, Attempts: attempts, LastError: lastErr, NextAttempt: now})
			return
		}
		attempts++
		lastErr = strings.Join(errs, "; ")
		if derr != nil && lastErr == "" {
			lastErr = derr.Error()
		}
		if stopping && len(pendingOf(rs)) > 0 {
			r.record(wctx, log, it, Update{Recipients: rs, Attempts: attempts, LastError: lastErr, NextAttempt: now})
			return
		}
	}

	// Schedule the recipients still pending, or give them up.
	var next time.Time
	if still := pendingOf(rs); len(still) > 0 {
		n, ok := r.sched.Next(it.Created, now)
		if ok {
			next = n
		} else {
			for _, i := range still {
				rs[i].Status = StatusFailed
			}
			log.Info("queue: lifetime over, giving up", "recipients", len(still))
		}
	}
	// A recipient who asked for no failure notice owes none.
	for i := range rs {
		if rs[i].Status == StatusFailed && !rs[i].Notify.Wants(NotifyFailure) {
			rs[i].Reported = true
		}
	}
	failed := owedFailures(rs)
	delayed := r.owedDelays(it, rs, now)
	if len(failed) == 0 && len(delayed) == 0 {
		if next.IsZero() {
			if err := r.store.Complete(wctx, it.Lease); err != nil {
				log.Error("queue: complete", "err", err)
			}
			return
		}
		r.record(wctx, log, it, Update{Recipients: rs, Attempts: attempts, LastError: lastErr, NextAttempt: next})
		return
	}
	// Record the outcome before handing notices over: a crash in between
	// then finds them still owed, and their keys keep the DSN from being
	// queued twice.
	noticeNext := next
	if noticeNext.IsZero() {
		noticeNext = now.Add(r.o.NoticeRetry)
	}
	if !r.record(wctx, log, it, Update{Recipients: rs, Attempts: attempts, LastError: lastErr, NextAttempt: noticeNext}) {
		return
	}
	handed := true
	if len(failed) > 0 {
		if err := r.notify(wctx, it, NoticeFailure, rs, failed, time.Time{}); err != nil {
			log.Error("queue: failure notice", "err", err)
			handed = false
		} else {
			for _, i := range failed {
				rs[i].Reported = true
			}
		}
	}
	if len(delayed) > 0 {
		until := it.Created.Add(r.sched.Lifetime())
		if err := r.notify(wctx, it, NoticeDelay, rs, delayed, until); err != nil {
			log.Error("queue: delay notice", "err", err)
			handed = false
		} else {
			for _, i := range delayed {
				rs[i].DelayReported = true
			}
		}
	}
	if next.IsZero() && handed {
		if err := r.store.Complete(wctx, it.Lease); err != nil {
			log.Error("queue: complete", "err", err)
		}
		return
	}
	r.record(wctx, log, it, Update{Recipients: rs, Attempts: attempts, LastError: lastErr, NextAttempt: noticeNext})
}

// deliver calls the Deliverer. A panic in it fails this attempt, not the
// process: the recipients are retried, as after any error (the panic may
// have come after the server took the message; a duplicate is preferred to
// a loss).
func (r *Runner) deliver(ctx context.Context, d *Delivery) (res []RecipientResult, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("queue: deliverer panicked", "id", d.ID, "panic", p, "stack", string(debug.Stack()))
			res, err = nil, fmt.Errorf("deliverer panicked: %v", p)
		}
	}()
	return r.deliverer.Deliver(ctx, d)
}

func (r *Runner) record(ctx context.Context, log *slog.Logger, it *Item, u Update) bool {
	if err := r.store.Record(ctx, it.Lease, u); err != nil {
		// ErrLeaseLost: another worker has the item; it will redo what
		// this attempt could not record (at least once).
		log.Error("queue: record", "err", err)
		return false
	}
	return true
}

func pendingOf(rs []RecipientState) []int {
	var p []int
	for i := range rs {
		if rs[i].Status == StatusPending {
			p = append(p, i)
		}
	}
	return p
}

func owedFailures(rs []RecipientState) []int {
	var p []int
	for i := range rs {
		if rs[i].Status == StatusFailed && !rs[i].Reported {
			p = append(p, i)
		}
	}
	return p
}

func (r *Runner) owedDelays(it *Item, rs []RecipientState, now time.Time) []int {
	warn := r.sched.DelayWarning()
	if warn <= 0 || now.Sub(it.Created) < warn {
		return nil
	}
	var p []int
	for i := range rs {
		if rs[i].Status == StatusPending && !rs[i].DelayReported && rs[i].Notify.Wants(NotifyDelay) {
			p = append(p, i)
		}
	}
	return p
}

// notify hands a notice to the hook and enqueues its DSN to the reverse
// path. The DSN's key names the item, the kind and the recipients, so a
// notice repeated after a crash is not queued twice while the first is
// still queued.
func (r *Runner) notify(ctx context.Context, it *Item, kind NoticeKind, rs []RecipientState, idx []int, until time.Time) error {
	n := &Notice{Kind: kind, ID: it.ID, Envelope: it.Envelope, Arrival: it.Created, RetryUntil: until}
	key := fmt.Sprintf("dsn:%s:%s", it.ID, kind)
	for _, i := range idx {
		n.Recipients = append(n.Recipients, rs[i])
		key += fmt.Sprintf(":%d", i)
	}
	if r.o.OnNotice != nil {
		if err := r.o.OnNotice(ctx, n); err != nil {
			return fmt.Errorf("notice hook: %w", err)
		}
	}
	// RFC 3461 §6.2 and RFC 5321 §4.5.5: no notice about a message with a
	// null reverse path; that is how loops of bounces are avoided.
	if r.o.NoDSN || it.Envelope.From == "" {
		return nil
	}
	var original Body
	if body, err := r.store.Body(ctx, it.ID); err != nil {
		// The notice goes out without the original rather than not at
		// all (the third part of a report is optional, RFC 6522 §3).
		r.log.Error("queue: notice without the original message", "id", it.ID, "err", err)
	} else {
		defer body.Close()
		original = body
	}
	mta := r.o.ReportingMTA
	if mta == "" {
		mta, _ = os.Hostname()
	}
	dsn, err := NewDSN(n, original, &DSNOptions{ReportingMTA: mta, Date: r.now(), ReturnLimit: r.o.ReturnLimit})
	if err != nil {
		return err
	}
	_, err = r.store.Enqueue(ctx, &Message{
		Key: key,
		Envelope: Envelope{
			From:       "",
			Recipients: []Recipient{{Address: it.Envelope.From, Notify: NotifyNever}},
			SMTPUTF8:   it.Envelope.SMTPUTF8,
			Size:       int64(len(dsn)),
		},
		Body: bytes.NewReader(dsn),
	})
	return err
}
