package queue_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/memqueue"
)

// call is one Deliver call seen by the fake deliverer.
type call struct {
	at    time.Time
	id    string
	from  string
	rcpts []string
	body  string
	n     int // attempt number
}

// fake is a Deliverer whose answers come from a function of the call.
type fake struct {
	mu     sync.Mutex // held while answer runs, unless concurrent
	calls  []call
	answer func(c call) ([]queue.RecipientResult, error)
	seen   chan call
	// concurrent: answer runs without mu, for tests of parallel attempts.
	concurrent bool
}

// locked runs fn with the fake's lock held, to read what answer wrote.
func (f *fake) locked(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

func newFake(answer func(c call) ([]queue.RecipientResult, error)) *fake {
	return &fake{answer: answer, seen: make(chan call, 1000)}
}

func (f *fake) Deliver(ctx context.Context, d *queue.Delivery) ([]queue.RecipientResult, error) {
	body, err := io.ReadAll(queue.NewBodyReader(d.Body))
	if err != nil {
		return nil, err
	}
	c := call{at: time.Now(), id: d.ID, from: d.Envelope.From, body: string(body), n: d.Attempt}
	for _, r := range d.Recipients {
		c.rcpts = append(c.rcpts, r.Address)
	}
	res, err := f.run(c)
	f.seen <- c
	return res, err
}

// run records c and calls answer; the lock is released even if answer
// panics (TestRunnerDelivererPanic).
func (f *fake) run(c call) ([]queue.RecipientResult, error) {
	f.mu.Lock()
	f.calls = append(f.calls, c)
	if f.concurrent {
		f.mu.Unlock()
	} else {
		defer f.mu.Unlock()
	}
	return f.answer(c)
}

func all(o queue.Outcome, n int, reply queue.Reply) []queue.RecipientResult {
	r := make([]queue.RecipientResult, n)
	for i := range r {
		r[i] = queue.RecipientResult{Outcome: o, Reply: reply, Host: "mx1.example.net [192.0.2.1]"}
	}
	return r
}

var (
	ok250  = queue.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
	tmp451 = queue.Reply{Code: 451, Enhanced: "4.3.0", Text: "try again later"}
	bad550 = queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user here"}
)

const testBody = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: lunch\r\nMessage-ID: <1@example.org>\r\n\r\nAt noon?\r\n"

// world is a store, a runner and a fake deliverer inside a synctest bubble.
type world struct {
	t      *testing.T
	store  *memqueue.Store
	fake   *fake
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, f *fake, o *queue.RunnerOptions) *world {
	w := &world{t: t, store: memqueue.New(nil), fake: f, done: make(chan error, 1)}
	if o == nil {
		o = &queue.RunnerOptions{}
	}
	if o.Schedule == nil {
		o.Schedule = queue.Retry{Jitter: -1}
	}
	if o.ReportingMTA == "" {
		o.ReportingMTA = "mta.example.org"
	}
	r := queue.NewRunner(w.store, f, o)
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() { w.done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-w.done
	})
	return w
}

func (w *world) enqueue(from string, rcpts ...string) string {
	w.t.Helper()
	env := queue.Envelope{From: from}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Address: r})
	}
	return w.enqueueEnv(env)
}

func (w *world) enqueueEnv(env queue.Envelope) string {
	w.t.Helper()
	id, err := w.store.Enqueue(context.Background(), &queue.Message{Envelope: env, Body: strings.NewReader(testBody)})
	if err != nil {
		w.t.Fatal(err)
	}
	return id
}

// calls returns how many Deliver calls were made.
func (w *world) calls() int {
	n := 0
	w.fake.locked(func() { n = len(w.fake.calls) })
	return n
}

// next waits for the next Deliver call; the bubble's clock jumps to it.
func (w *world) next() call {
	w.t.Helper()
	select {
	case c := <-w.fake.seen:
		return c
	case <-time.After(30 * 24 * time.Hour):
		w.t.Fatal("no delivery attempt within 30 days")
		return call{}
	}
}

// idle waits until the runner has nothing left to do and checks the store
// is empty.
func (w *world) drained() {
	w.t.Helper()
	synctest.Wait()
	st, err := w.store.Stats(context.Background())
	if err != nil {
		w.t.Fatal(err)
	}
	if st.Items != 0 {
		items, _ := w.store.List(context.Background(), "", 0)
		for _, it := range items {
			w.t.Logf("left: %s %+v next %v", it.ID, it.Recipients, it.NextAttempt)
		}
		w.t.Fatalf("%d items left in the queue", st.Items)
	}
}

func TestRunnerDelivered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			return all(queue.OutcomeDelivered, len(c.rcpts), ok250), nil
		}), nil)
		id := w.enqueue("alice@example.org", "bob@example.net", "carol@example.net")
		c := w.next()
		if c.id != id || !slices.Equal(c.rcpts, []string{"bob@example.net", "carol@example.net"}) || c.body != testBody || c.n != 1 {
			t.Errorf("Deliver got %+v", c)
		}
		w.drained()
		if w.calls() != 1 {
			t.Errorf("%d attempts, want 1 and no notice", w.calls())
		}
	})
}

func TestRunnerTemporaryThenDelivered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			attemptsMu sync.Mutex
			attempts   []string
		)
		n := 0
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			n++
			if n == 1 {
				return all(queue.OutcomeTemporary, len(c.rcpts), tmp451), nil
			}
			return all(queue.OutcomeDelivered, len(c.rcpts), ok250), nil
		}), &queue.RunnerOptions{OnAttempt: func(a *queue.Attempt) {
			attemptsMu.Lock()
			defer attemptsMu.Unlock()
			attempts = append(attempts, fmt.Sprintf("%d:%s:%s", a.Number, a.Recipients[0].Address, a.Results[0].Outcome))
		}})
		id := w.enqueue("alice@example.org", "bob@example.net")
		first := w.next()
		synctest.Wait()
		it, err := w.store.Inspect(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if it.Attempts != 1 || !strings.Contains(it.LastError, "451 4.3.0 try again later") || it.Recipients[0].Reply != tmp451 || it.Recipients[0].Host != "mx1.example.net [192.0.2.1]" {
			t.Errorf("after a temporary failure: %+v", it)
		}
		second := w.next()
		// Postfix-like: the first retry waits the minimum backoff.
		if gap := second.at.Sub(first.at); gap != 5*time.Minute {
			t.Errorf("retry after %v, want 5m", gap)
		}
		if second.n != 2 {
			t.Errorf("second attempt numbered %d", second.n)
		}
		w.drained()
		attemptsMu.Lock()
		defer attemptsMu.Unlock()
		if want := []string{"1:bob@example.net:temporary", "2:bob@example.net:delivered"}; !slices.Equal(attempts, want) {
			t.Errorf("OnAttempt saw %v, want %v", attempts, want)
		}
	})
}

func TestRunnerMixedOutcomes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var dsn call
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			if c.from == "" {
				dsn = c
				return all(queue.OutcomeDelivered, 1, ok250), nil
			}
			var out []queue.RecipientResult
			for _, r := range c.rcpts {
				switch {
				case r == "bob@example.net":
					out = append(out, queue.RecipientResult{Outcome: queue.OutcomeDelivered, Reply: ok250, Host: "mx1.example.net [192.0.2.1]"})
				case r == "nobody@example.net":
					out = append(out, queue.RecipientResult{Outcome: queue.OutcomePermanent, Reply: bad550, Host: "mx1.example.net [192.0.2.1]"})
				case c.n == 1:
					out = append(out, queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: tmp451, Host: "mx2.example.net [192.0.2.2]"})
				default:
					out = append(out, queue.RecipientResult{Outcome: queue.OutcomeDelivered, Reply: ok250})
				}
			}
			return out, nil
		}), nil)
		id := w.enqueueEnv(queue.Envelope{
			From:  "alice@example.org",
			EnvID: "ENV-7",
			Recipients: []queue.Recipient{
				{Address: "bob@example.net"},
				{Address: "nobody@example.net", ORcpt: "rfc822;nobody@example.net"},
				{Address: "carol@example.net"},
			},
		})
		first := w.next()
		if len(first.rcpts) != 3 {
			t.Fatalf("first attempt to %v", first.rcpts)
		}
		var retried call
		for range 3 {
			c := w.next()
			if c.id == id {
				retried = c
				break
			}
		}
		// Only the recipient still pending is tried again.
		if !slices.Equal(retried.rcpts, []string{"carol@example.net"}) {
			t.Errorf("retry went to %v, want only carol", retried.rcpts)
		}
		w.drained()
		w.fake.locked(func() {})
		if dsn.id == "" {
			t.Fatal("no DSN was sent for the permanent failure")
		}
		if !slices.Equal(dsn.rcpts, []string{"alice@example.org"}) {
			t.Errorf("DSN sent to %v, want the reverse path", dsn.rcpts)
		}
		r := parseDSN(t, dsn.body)
		if r.msgFields.Get("Original-Envelope-Id") != "ENV-7" || r.msgFields.Get("Reporting-MTA") != "dns; mta.example.org" {
			t.Errorf("per-message fields %v", r.msgFields)
		}
		if len(r.rcptFields) != 1 {
			t.Fatalf("DSN reports %d recipients, want 1", len(r.rcptFields))
		}
		f := r.rcptFields[0]
		for k, v := range map[string]string{
			"Final-Recipient":    "rfc822; nobody@example.net",
			"Original-Recipient": "rfc822;nobody@example.net",
			"Action":             "failed",
			"Status":             "5.1.1",
			"Remote-MTA":         "dns; mx1.example.net",
			"Diagnostic-Code":    "smtp; 550 5.1.1 no such user here",
		} {
			if got := f.Get(k); got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
		if r.original != testBody || r.originalType != "message/rfc822" {
			t.Errorf("returned original %q (%s), want the whole message", r.original, r.originalType)
		}
	})
}

func TestRunnerUnknownAfterDot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := 0
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			n++
			if n == 1 {
				return []queue.RecipientResult{{Outcome: queue.OutcomeUnknown, Reply: queue.Reply{Text: "connection lost after the final dot"}, Host: "mx1.example.net [192.0.2.1]"}}, nil
			}
			return all(queue.OutcomeDelivered, len(c.rcpts), ok250), nil
		}), nil)
		id := w.enqueue("alice@example.org", "bob@example.net")
		w.next()
		synctest.Wait()
		it, err := w.store.Inspect(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		rs := it.Recipients[0]
		if rs.Status != queue.StatusPending || !rs.PossibleDuplicate || !strings.Contains(it.LastError, "outcome unknown") {
			t.Errorf("after an unknown outcome: %+v, last error %q", rs, it.LastError)
		}
		if c := w.next(); !slices.Equal(c.rcpts, []string{"bob@example.net"}) {
			t.Errorf("retry to %v", c.rcpts)
		}
		w.drained()
	})
}

func TestRunnerWholeAttemptError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := 0
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			n++
			if n == 1 {
				return nil, errors.New("no route to any host")
			}
			return all(queue.OutcomeDelivered, len(c.rcpts), ok250), nil
		}), nil)
		id := w.enqueue("alice@example.org", "bob@example.net", "carol@example.net")
		w.next()
		synctest.Wait()
		it, err := w.store.Inspect(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if it.Attempts != 1 || len(it.Pending()) != 2 || !strings.Contains(it.LastError, "no route to any host") {
			t.Errorf("after a failed attempt: %+v", it)
		}
		w.next()
		w.drained()
	})
}

func TestRunnerLifetimeExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var dsn call
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			if c.from == "" {
				dsn = c
				return all(queue.OutcomeDelivered, 1, ok250), nil
			}
			return all(queue.OutcomeTemporary, len(c.rcpts), tmp451), nil
		}), &queue.RunnerOptions{Schedule: queue.Retry{Jitter: -1, MaxLifetime: 3 * time.Hour}})
		start := time.Now()
		id := w.enqueueEnv(queue.Envelope{From: "alice@example.org", Ret: queue.RetHeaders, Recipients: []queue.Recipient{{Address: "bob@example.net"}}})
		var times []time.Duration
		for range 20 {
			c := w.next()
			if c.id != id {
				break
			}
			times = append(times, c.at.Sub(start))
		}
		// Waits: age clamped to [5m, 4000s]; the last attempt is at the end
		// of the lifetime, never after.
		want := []time.Duration{0, 5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute, 80 * time.Minute,
			80*time.Minute + 4000*time.Second, 3 * time.Hour}
		if !slices.Equal(times, want) {
			t.Errorf("attempts at %v, want %v", times, want)
		}
		w.drained()
		w.fake.locked(func() {})
		r := parseDSN(t, dsn.body)
		if len(r.rcptFields) != 1 || r.rcptFields[0].Get("Action") != "failed" || r.rcptFields[0].Get("Status") != "4.3.0" ||
			r.rcptFields[0].Get("Diagnostic-Code") != "smtp; 451 4.3.0 try again later" {
			t.Errorf("expiry DSN fields %v", r.rcptFields)
		}
		if r.originalType != "text/rfc822-headers" || strings.Contains(r.original, "At noon") || !strings.Contains(r.original, "Subject: lunch") {
			t.Errorf("RET=HDRS returned %s %q", r.originalType, r.original)
		}
	})
}

func TestRunnerNoBounceForNullReversePath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			hookMu  sync.Mutex
			notices []*queue.Notice
		)
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			return all(queue.OutcomePermanent, len(c.rcpts), bad550), nil
		}), &queue.RunnerOptions{OnNotice: func(ctx context.Context, n *queue.Notice) error {
			hookMu.Lock()
			defer hookMu.Unlock()
			notices = append(notices, n)
			return nil
		}})
		w.enqueue("", "bob@example.net")
		w.next()
		w.drained()
		if w.calls() != 1 {
			t.Errorf("%d deliveries: a bounce was sent for a null reverse path", w.calls())
		}
		hookMu.Lock()
		defer hookMu.Unlock()
		if len(notices) != 1 || notices[0].Kind != queue.NoticeFailure || notices[0].Recipients[0].Reply != bad550 {
			t.Errorf("hook got %v", notices)
		}
	})
}

func TestRunnerNotifyNever(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			return all(queue.OutcomePermanent, len(c.rcpts), bad550), nil
		}), nil)
		w.enqueueEnv(queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{
			{Address: "bob@example.net", Notify: queue.NotifyNever},
			{Address: "carol@example.net", Notify: queue.NotifySuccess},
		}})
		w.next()
		w.drained()
		if w.calls() != 1 {
			t.Errorf("%d deliveries, want no DSN for NOTIFY=NEVER and NOTIFY=SUCCESS", w.calls())
		}
	})
}

func TestRunnerHookOnlyAndRetriedNotice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			hookMu    sync.Mutex
			hookCalls []time.Time
		)
		count := func() int {
			hookMu.Lock()
			defer hookMu.Unlock()
			return len(hookCalls)
		}
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			return all(queue.OutcomePermanent, len(c.rcpts), bad550), nil
		}), &queue.RunnerOptions{NoDSN: true, OnNotice: func(ctx context.Context, n *queue.Notice) error {
			hookMu.Lock()
			defer hookMu.Unlock()
			hookCalls = append(hookCalls, time.Now())
			if len(hookCalls) == 1 {
				return errors.New("ticket system down")
			}
			return nil
		}})
		w.enqueue("alice@example.org", "bob@example.net")
		w.next()
		synctest.Wait()
		if n := count(); n != 1 {
			t.Fatalf("hook called %d times", n)
		}
		time.Sleep(6 * time.Minute) // let the bubble's clock pass the notice retry
		w.drained()
		hookMu.Lock()
		defer hookMu.Unlock()
		if len(hookCalls) != 2 || hookCalls[1].Sub(hookCalls[0]) != 5*time.Minute {
			t.Errorf("hook calls at %v, want a retry after 5m", hookCalls)
		}
		if w.calls() != 1 {
			t.Errorf("%d deliveries: NoDSN still sent a DSN or retried the failed recipient", w.calls())
		}
	})
}

func TestRunnerDelayWarning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var dsns []call
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			if c.from == "" {
				dsns = append(dsns, c)
				return all(queue.OutcomeDelivered, 1, ok250), nil
			}
			return all(queue.OutcomeTemporary, len(c.rcpts), tmp451), nil
		}), &queue.RunnerOptions{Schedule: queue.Retry{Jitter: -1, MaxLifetime: 4 * time.Hour, Warn: time.Hour}})
		w.enqueue("alice@example.org", "bob@example.net")
		for range 30 {
			w.next()
			synctest.Wait()
			if st, _ := w.store.Stats(context.Background()); st.Items == 0 {
				break
			}
		}
		w.drained()
		w.fake.locked(func() {})
		if len(dsns) != 2 {
			t.Fatalf("%d notices, want one delay and one failure", len(dsns))
		}
		d := parseDSN(t, dsns[0].body)
		if d.rcptFields[0].Get("Action") != "delayed" || d.rcptFields[0].Get("Will-Retry-Until") == "" {
			t.Errorf("delay notice fields %v", d.rcptFields[0])
		}
		if f := parseDSN(t, dsns[1].body); f.rcptFields[0].Get("Action") != "failed" {
			t.Errorf("final notice fields %v", f.rcptFields[0])
		}
	})
}

func TestRunnerBoundedConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		cur, peak := 0, 0
		f := newFake(nil)
		f.concurrent = true
		f.answer = func(c call) ([]queue.RecipientResult, error) {
			mu.Lock()
			cur++
			peak = max(peak, cur)
			mu.Unlock()
			time.Sleep(time.Second) // a slow server, on the bubble's clock
			mu.Lock()
			cur--
			mu.Unlock()
			return all(queue.OutcomeDelivered, len(c.rcpts), ok250), nil
		}
		w := start(t, f, &queue.RunnerOptions{Concurrency: 4})
		for i := range 30 {
			w.enqueue("alice@example.org", fmt.Sprintf("r%d@example.net", i))
		}
		for range 30 {
			w.next()
		}
		w.drained()
		mu.Lock()
		defer mu.Unlock()
		if peak != 4 {
			t.Errorf("peak concurrency %d, want 4", peak)
		}
	})
}

func TestRunnerCleanStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		started := make(chan struct{})
		f := newFake(nil)
		f.answer = func(c call) ([]queue.RecipientResult, error) { return nil, nil }
		blocking := queue.DelivererFunc(func(ctx context.Context, d *queue.Delivery) ([]queue.RecipientResult, error) {
			close(started)
			<-ctx.Done() // a transaction cut short by the stop
			return []queue.RecipientResult{
				{Outcome: queue.OutcomeDelivered, Reply: ok250},
				{Outcome: queue.OutcomeTemporary, Reply: queue.Reply{Text: "interrupted"}},
			}, ctx.Err()
		})
		store := memqueue.New(nil)
		r := queue.NewRunner(store, blocking, nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		id, err := store.Enqueue(context.Background(), &queue.Message{Envelope: queue.Envelope{From: "alice@example.org",
			Recipients: []queue.Recipient{{Address: "bob@example.net"}, {Address: "carol@example.net"}}}, Body: strings.NewReader(testBody)})
		if err != nil {
			t.Fatal(err)
		}
		<-started
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after a stop, want nil", err)
		}
		// Run returned after the attempt ended: its definite result is
		// recorded, the interrupted recipient is released for now.
		it, err := store.Inspect(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if it.Recipients[0].Status != queue.StatusDelivered || it.Recipients[1].Status != queue.StatusPending || it.Recipients[1].Reply.Text == "interrupted" {
			t.Errorf("after stop: %+v", it.Recipients)
		}
		if it.NextAttempt.After(time.Now()) || !it.Lease.Until.IsZero() {
			t.Errorf("after stop the item is not due at once: next %v lease %+v", it.NextAttempt, it.Lease)
		}
		_ = f
	})
}

type dsnReport struct {
	header       mail.Header
	msgFields    textproto.MIMEHeader
	rcptFields   []textproto.MIMEHeader
	original     string
	originalType string
	human        string
}

// parseDSN reads a DSN back with net/mail and mime/multipart.
func parseDSN(t *testing.T, raw string) dsnReport {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("DSN is not a message: %v", err)
	}
	var r dsnReport
	r.header = m.Header
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("DSN Content-Type %q (%v)", m.Header.Get("Content-Type"), err)
	}
	if m.Header.Get("Auto-Submitted") != "auto-replied" {
		t.Errorf("Auto-Submitted = %q", m.Header.Get("Auto-Submitted"))
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			if i < 2 {
				t.Fatalf("DSN has %d parts", i)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		content, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		ct := p.Header.Get("Content-Type")
		if strings.ContainsFunc(string(content), func(r rune) bool { return r >= 0x80 }) && p.Header.Get("Content-Transfer-Encoding") != "8bit" {
			t.Errorf("part %d (%s) has 8-bit content without Content-Transfer-Encoding: 8bit", i, ct)
		}
		switch i {
		case 0:
			if !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("first part %s", ct)
			}
			r.human = string(content)
		case 1:
			if ct != "message/delivery-status" && ct != "message/global-delivery-status" {
				t.Errorf("second part %s", ct)
			}
			tr := textproto.NewReader(bufio.NewReader(strings.NewReader(string(content))))
			r.msgFields, err = tr.ReadMIMEHeader()
			if err != nil {
				t.Fatalf("per-message fields: %v", err)
			}
			for {
				h, err := tr.ReadMIMEHeader()
				if len(h) > 0 {
					r.rcptFields = append(r.rcptFields, h)
				}
				if err != nil {
					break
				}
			}
		case 2:
			r.original, r.originalType = string(content), ct
		}
	}
	return r
}

func TestRunnerDelivererPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := 0
		w := start(t, newFake(func(c call) ([]queue.RecipientResult, error) {
			n++
			if n == 1 {
				panic("nil map in the deliverer")
			}
			return all(queue.OutcomeDelivered, len(c.rcpts), ok250), nil
		}), nil)
		id := w.enqueue("alice@example.org", "bob@example.net")
		synctest.Wait()
		it, err := w.store.Inspect(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if it.Attempts != 1 || !strings.Contains(it.LastError, "panicked") {
			t.Errorf("after a panic: attempts %d, last error %q", it.Attempts, it.LastError)
		}
		w.next() // the retry
		w.drained()
	})
}

// damagedBody is a store whose Body fails for one item with err.
type damagedBody struct {
	*memqueue.Store
	mu  sync.Mutex
	id  string
	err error
}

func (s *damagedBody) Body(ctx context.Context, id string) (queue.Body, error) {
	s.mu.Lock()
	bad, err := s.id, s.err
	s.mu.Unlock()
	if id == bad {
		return nil, &queue.Error{Op: "body", ID: id, Err: err}
	}
	return s.Store.Body(ctx, id)
}

// runDamaged runs a runner over a store whose body of the first message
// enqueued fails with err, until the queue is empty, and returns the
// deliveries made.
func runDamaged(t *testing.T, err error, o *queue.RunnerOptions) (id string, calls []call) {
	f := newFake(func(c call) ([]queue.RecipientResult, error) {
		return all(queue.OutcomeDelivered, len(c.rcpts), ok250), nil
	})
	store := &damagedBody{Store: memqueue.New(nil), err: err}
	o.ReportingMTA = "mta.example.org"
	r := queue.NewRunner(store, f, o)
	id, qerr := store.Enqueue(context.Background(), &queue.Message{Envelope: queue.Envelope{From: "alice@example.org",
		Recipients: []queue.Recipient{{Address: "bob@example.net"}}}, Body: strings.NewReader(testBody)})
	if qerr != nil {
		t.Fatal(qerr)
	}
	store.mu.Lock()
	store.id = id
	store.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	for range 100 {
		synctest.Wait()
		if st, _ := store.Stats(context.Background()); st.Items == 0 {
			break
		}
		time.Sleep(time.Hour) // the bubble's clock: let retries come due
	}
	cancel()
	<-done
	if st, _ := store.Stats(context.Background()); st.Items != 0 {
		t.Fatalf("%d items still queued", st.Items)
	}
	f.locked(func() { calls = slices.Clone(f.calls) })
	return id, calls
}

func TestRunnerLostBody(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var notices []*queue.Notice
		id, calls := runDamaged(t, queue.ErrCorrupt, &queue.RunnerOptions{OnNotice: func(ctx context.Context, n *queue.Notice) error {
			notices = append(notices, n)
			return nil
		}})
		// Nothing to deliver: the only delivery is the notice to the sender.
		if len(calls) != 1 || calls[0].from != "" || !slices.Equal(calls[0].rcpts, []string{"alice@example.org"}) {
			t.Fatalf("deliveries %+v, want only the failure notice", calls)
		}
		if len(notices) != 1 || notices[0].ID != id || notices[0].Kind != queue.NoticeFailure {
			t.Fatalf("notices %+v", notices)
		}
		r := parseDSN(t, calls[0].body)
		f := r.rcptFields[0]
		if f.Get("Action") != "failed" || f.Get("Status") != "5.3.0" || !strings.Contains(f.Get("Diagnostic-Code"), "content lost") {
			t.Errorf("notice fields %v", f)
		}
		if r.originalType != "" {
			t.Errorf("the notice returns an original (%s) it cannot have", r.originalType)
		}
	})
}

func TestRunnerUnreadableBodyExpires(t *testing.T) {
	// A read failure, or a body not found while its item is queued (a
	// distributed store catching up), may pass: retried, not given up.
	for _, cause := range []error{errors.New("input/output error"), queue.ErrNotFound} {
		t.Run(cause.Error(), func(t *testing.T) { testRunnerUnreadableBody(t, cause) })
	}
}

func testRunnerUnreadableBody(t *testing.T, cause error) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		_, calls := runDamaged(t, cause, &queue.RunnerOptions{Schedule: queue.Retry{Jitter: -1, MaxLifetime: 10 * time.Hour}})
		// Retried on the schedule, then given up at the end of the lifetime
		// with a notice.
		if len(calls) != 1 || calls[0].from != "" {
			t.Fatalf("deliveries %+v, want only the failure notice", calls)
		}
		if age := calls[0].at.Sub(start); age < 10*time.Hour || age > 11*time.Hour {
			t.Errorf("given up after %v, want at the lifetime of 10h", age)
		}
		f := parseDSN(t, calls[0].body).rcptFields[0]
		if f.Get("Action") != "failed" || f.Get("Status") != "4.3.0" || !strings.Contains(f.Get("Diagnostic-Code"), cause.Error()) {
			t.Errorf("notice fields %v", f)
		}
	})
}
