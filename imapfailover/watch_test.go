package imapfailover

import (
	"context"
	"errors"
	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/faultproxy"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/hamail/hamail/internal/imaptest"
)

func TestSyncBaselineThenNew(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendN(t, s, 1, 3)
	p := newTestPool(t, s, nil)
	mb := p.Mailbox("INBOX", nil)
	rec := newRecorder()
	rep, err := mb.Sync(t.Context(), rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Delivered != 0 || rep.Replica != "imap1" {
		t.Fatalf("first sync delivered existing messages: %+v", rep)
	}
	appendN(t, s, 4, 5)
	if rep, err = mb.Sync(t.Context(), rec.handle); err != nil || rep.Delivered != 2 {
		t.Fatalf("second sync: %+v %v", rep, err)
	}
	if rep, err = mb.Sync(t.Context(), rec.handle); err != nil || rep.Delivered != 0 {
		t.Fatalf("third sync: %+v %v", rep, err)
	}
	rec.assertExactlyOnce(t, 4, 5)
	if st, _ := mb.State(t.Context()); st.LastUID != 5 || len(st.Messages) != 5 {
		t.Fatalf("state %+v", st)
	}
}

func TestSyncDeliverExistingAndExpunge(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendN(t, s, 1, 4)
	p := newTestPool(t, s, nil)
	var expunged []imap.UID
	mb := p.Mailbox("INBOX", &MailboxOptions{
		DeliverExisting: true,
		OnExpunge: func(_ context.Context, _ uint32, uids []imap.UID) error {
			expunged = append(expunged, uids...)
			return nil
		},
	})
	rec := newRecorder()
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	rec.assertExactlyOnce(t, 1, 4)
	if err := s.Expunge("INBOX", imap.UIDSetNum(2, 3)); err != nil {
		t.Fatal(err)
	}
	rep, err := mb.Sync(t.Context(), rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Expunged) != 2 || len(expunged) != 2 || expunged[0] != 2 || expunged[1] != 3 {
		t.Fatalf("expunged %v / %v", rep.Expunged, expunged)
	}
}

func TestHandlerErrorStopsAndRedelivers(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	p := newTestPool(t, s, nil)
	mb := p.Mailbox("INBOX", nil)
	rec := newRecorder()
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 1, 3)
	boom := errors.New("disk full")
	calls := 0
	_, err := mb.Sync(t.Context(), func(ctx context.Context, m *Message) error {
		calls++
		if calls == 2 {
			return boom
		}
		return rec.handle(ctx, m)
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	rec.assertExactlyOnce(t, 1, 3)
}

// The replica Watch reads from dies 20 times, in turn by a server stop
// (connections closed), a TCP reset and a black hole (found at the
// heartbeat), while messages keep arriving: each is handled exactly once.
func TestWatchFailoverOnKill(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 3})
	var proxies []*faultproxy.Proxy
	for _, r := range s.Replicas() {
		proxies = append(proxies, faultproxy.Start(t, r.Addr()))
	}
	p := newTestPool(t, s, func(o *Options) {
		for i := range o.Replicas {
			o.Replicas[i].Addr = proxies[i].Addr()
		}
		o.Heartbeat = 200 * time.Millisecond
		o.CommandTimeout = 500 * time.Millisecond
	})
	mb := p.Mailbox("INBOX", nil)
	rec := newRecorder()
	stop := runWatch(t, mb, rec.handle)
	// Wait until Watch has taken stock, so what follows is new.
	waitState(t, mb)
	const rounds = 20
	n := 0
	for round := range rounds {
		// Messages keep arriving on every replica, the active one included.
		n++
		appendN(t, s, n, n)
		rec.waitFor(t, n, 10*time.Second)
		// Kill the replica Watch is reading from: the one that delivered
		// the last message.
		active := rec.lastReplica()
		i := slices.IndexFunc(s.Replicas(), func(r *imaptest.Replica) bool { return r.Name() == active })
		victim, proxy := s.Replica(i), proxies[i]
		kill, revive := victim.Stop, victim.Start
		switch round % 3 {
		case 1:
			kill = func() error { return proxy.SetMode(faultproxy.Reset) }
			revive = func() error { return proxy.SetMode(faultproxy.Pass) }
		case 2:
			kill = func() error { return proxy.SetMode(faultproxy.BlackHole) }
			revive = func() error { return proxy.SetMode(faultproxy.Pass) }
		}
		if err := kill(); err != nil {
			t.Fatal(err)
		}
		// Two arrive while it is down (they reach it too, as replication
		// would once it is back).
		appendN(t, s, n+1, n+2)
		n += 2
		rec.waitFor(t, n, 10*time.Second)
		if r := rec.lastReplica(); r == active {
			t.Fatalf("round %d: message read from %s, which is dead", round, r)
		}
		if err := revive(); err != nil {
			t.Fatal(err)
		}
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch returned %v", err)
	}
	rec.assertExactlyOnce(t, 1, n)
}

// fakeHealth is a health.View that records passive reports.
type fakeHealth struct {
	mu       sync.Mutex
	states   map[string]health.State
	failures map[string][]time.Time
	success  map[string]int
}

func newFakeHealth() *fakeHealth {
	return &fakeHealth{states: map[string]health.State{}, failures: map[string][]time.Time{}, success: map[string]int{}}
}

func (f *fakeHealth) State(target string) health.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.states[target]
}

func (f *fakeHealth) set(target string, s health.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states[target] = s
}

func (f *fakeHealth) ReportSuccess(target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.success[target]++
}

func (f *fakeHealth) ReportFailure(target string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures[target] = append(f.failures[target], time.Now())
}

func (f *fakeHealth) firstFailure(target string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.failures[target]) == 0 {
		return time.Time{}, false
	}
	return f.failures[target][0], true
}

var _ health.View = (*fakeHealth)(nil)

func waitState(t *testing.T, mb *Mailbox) *MailboxState {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := mb.State(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if st != nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatal("no first sync")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchDetectsBlackHoleWithinHeartbeat(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	proxy := faultproxy.Start(t, s.Replica(0).Addr())
	hv := newFakeHealth()
	const heartbeat, timeout = 300 * time.Millisecond, time.Second
	p := newTestPool(t, s, func(o *Options) {
		o.Replicas[0].Addr = proxy.Addr()
		o.Heartbeat, o.CommandTimeout, o.DialTimeout = heartbeat, timeout, timeout
		o.Health = hv
	})
	mb := p.Mailbox("INBOX", nil)
	rec := newRecorder()
	var from []string
	var mu sync.Mutex
	runWatch(t, mb, func(ctx context.Context, m *Message) error {
		mu.Lock()
		from = append(from, m.Replica)
		mu.Unlock()
		return rec.handle(ctx, m)
	})
	waitState(t, mb)
	appendN(t, s, 1, 1)
	rec.waitFor(t, 1, 5*time.Second)
	if err := proxy.SetMode(faultproxy.BlackHole); err != nil {
		t.Fatal(err)
	}
	holed := time.Now()
	appendN(t, s, 2, 2)
	rec.waitFor(t, 2, 10*time.Second)
	rec.assertExactlyOnce(t, 1, 2)
	mu.Lock()
	defer mu.Unlock()
	// (Message 1 comes from imap1 unless the machine is so loaded that a
	// NOOP took longer than the timeout.)
	if from[1] != "imap2" {
		t.Fatalf("delivered from %v", from)
	}
	failed, ok := hv.firstFailure("imap1")
	if !ok {
		t.Fatal("the black hole was not reported to the health view")
	}
	// Found at the next heartbeat, when the NOOP gets no answer within the
	// command timeout; the bound leaves room for a loaded machine.
	if d := failed.Sub(holed); d > heartbeat+timeout+2*time.Second {
		t.Fatalf("black hole found after %v", d)
	}
}

func TestWatchUIDValidityChangeNoDuplicates(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendN(t, s, 1, 3)
	p := newTestPool(t, s, nil)
	mb := p.Mailbox("INBOX", &MailboxOptions{DeliverExisting: true})
	rec := newRecorder()
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 4, 5)
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	// Message 2 is expunged, the mailbox is rebuilt with a new UIDVALIDITY
	// (so every UID changes), and two messages arrive after.
	if err := s.Expunge("INBOX", imap.UIDSetNum(2)); err != nil {
		t.Fatal(err)
	}
	before := waitState(t, mb).UIDValidity
	if _, err := s.ResetUIDValidity("INBOX"); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 6, 7)
	// A message without Message-ID is recognised by its fingerprint.
	if _, err := s.Append("INBOX", []byte("From: carol@example.org\r\nSubject: no id\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\nhi\r\n"), nil); err != nil {
		t.Fatal(err)
	}
	rep, err := mb.Sync(t.Context(), rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.UIDValidityChanged || rep.Remapped != 4 || rep.Delivered != 3 || rep.UIDValidity == before {
		t.Fatalf("report %+v", rep)
	}
	if _, err := s.ResetUIDValidity("INBOX"); err != nil {
		t.Fatal(err)
	}
	if rep, err = mb.Sync(t.Context(), rec.handle); err != nil || rep.Delivered != 0 || rep.Remapped != 7 {
		t.Fatalf("second reset: %+v %v", rep, err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for id, n := range rec.seen {
		if n != 1 {
			t.Errorf("%q handled %d times", id, n)
		}
	}
	if len(rec.order) != 8 {
		t.Errorf("%d deliveries, want 8: %v", len(rec.order), rec.order)
	}
}

func TestFileStoreWatchSurvivesRestart(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	dir := t.TempDir()
	rec := newRecorder()
	// Three runs of the "process": each a new pool, mailbox and store on
	// the same directory, stopped while messages keep arriving.
	for run := range 3 {
		p := newTestPool(t, s, nil)
		mb := p.Mailbox("INBOX", &MailboxOptions{Store: NewFileStore(dir)})
		stop := runWatch(t, mb, rec.handle)
		waitState(t, mb)
		appendN(t, s, run*4+1, run*4+2)
		rec.waitFor(t, run*4+2, 5*time.Second)
		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		p.Close()
		// Arrive while nobody watches.
		appendN(t, s, run*4+3, run*4+4)
		if run < 2 {
			continue
		}
		// The last run's messages 11 and 12 are picked up by a final Sync.
		p2 := newTestPool(t, s, nil)
		mb2 := p2.Mailbox("INBOX", &MailboxOptions{Store: NewFileStore(dir)})
		if _, err := mb2.Sync(t.Context(), rec.handle); err != nil {
			t.Fatal(err)
		}
	}
	rec.assertExactlyOnce(t, 1, 12)
}

func TestWatchPollsServerWithoutIdle(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{NoIdle: true})
	p := newTestPool(t, s, func(o *Options) { o.PollInterval = 20 * time.Millisecond })
	mb := p.Mailbox("INBOX", nil)
	rec := newRecorder()
	stop := runWatch(t, mb, rec.handle)
	waitState(t, mb)
	appendN(t, s, 1, 2)
	rec.waitFor(t, 2, 10*time.Second)
	if err := s.Replica(0).Stop(); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 3, 3)
	rec.waitFor(t, 3, 10*time.Second)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	rec.assertExactlyOnce(t, 1, 3)
	for _, r := range s.Replicas() {
		if r.Idles() != 0 {
			t.Fatalf("%s got %d IDLE commands", r.Name(), r.Idles())
		}
	}
}

// Without CONDSTORE (imapmemserver has none) flag changes are found by
// fetching the flags of every known message.
func TestSyncFlagChangesWithoutCondstore(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendN(t, s, 1, 4)
	p := newTestPool(t, s, nil)
	var got []FlagChange
	mb := p.Mailbox("INBOX", &MailboxOptions{OnFlags: func(_ context.Context, changes []FlagChange) error {
		got = append(got, changes...)
		return nil
	}})
	rec := newRecorder()
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	if err := s.Store("INBOX", imap.UIDSetNum(2, 4), imap.StoreFlagsAdd, []imap.Flag{imap.FlagSeen}); err != nil {
		t.Fatal(err)
	}
	rep, err := mb.Sync(t.Context(), rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	if rep.FlagCheck != "full" || rep.FlagChanges != 2 || len(got) != 2 || got[0].UID != 2 || got[1].UID != 4 ||
		len(got[0].Flags) != 1 || got[0].Flags[0] != imap.FlagSeen {
		t.Fatalf("report %+v, changes %+v", rep, got)
	}
	// Nothing changed: nothing reported.
	if rep, err = mb.Sync(t.Context(), rec.handle); err != nil || rep.FlagChanges != 0 || len(got) != 2 {
		t.Fatalf("second sync %+v %v", rep, err)
	}
	// The flags are part of the saved state.
	if st := waitState(t, mb); len(st.Messages[2].Flags) != 1 || st.Messages[1].Flags == nil {
		t.Fatalf("state %+v", st.Messages)
	}
}
