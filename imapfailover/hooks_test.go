package imapfailover

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/imaptest"
)

// hookLog records what Hooks report.
type hookLog struct {
	mu        sync.Mutex
	connected []string // "replica ok" or "replica err"
	failovers []string // "from>to"
	errs      []error
	resynced  []*SyncReport
	durations []time.Duration
}

func (l *hookLog) hooks() Hooks {
	return Hooks{
		Connected: func(replica string, err error) {
			l.mu.Lock()
			defer l.mu.Unlock()
			s := replica + " ok"
			if err != nil {
				s = replica + " err"
			}
			l.connected = append(l.connected, s)
		},
		Failover: func(from, to string, err error) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.failovers = append(l.failovers, from+">"+to)
			l.errs = append(l.errs, err)
		},
		Resynced: func(mailbox, replica string, d time.Duration, r *SyncReport) {
			l.mu.Lock()
			defer l.mu.Unlock()
			if mailbox != "INBOX" || replica != r.Replica {
				panic(fmt.Sprintf("Resynced(%q, %q) with report from %q", mailbox, replica, r.Replica))
			}
			l.resynced = append(l.resynced, r)
			l.durations = append(l.durations, d)
		},
	}
}

func (l *hookLog) snapshot() (connected, failovers []string, errs []error, resynced []*SyncReport, durations []time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.connected...), append([]string(nil), l.failovers...),
		append([]error(nil), l.errs...), append([]*SyncReport(nil), l.resynced...),
		append([]time.Duration(nil), l.durations...)
}

func TestHooksSyncAndDoReportFailover(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendN(t, s, 1, 2)
	if err := s.Replica(0).Stop(); err != nil {
		t.Fatal(err)
	}
	var log hookLog
	p := newTestPool(t, s, func(o *Options) { o.Hooks = log.hooks() })
	rep, err := p.Mailbox("INBOX", &MailboxOptions{DeliverExisting: true}).Sync(t.Context(), newRecorder().handle)
	if err != nil {
		t.Fatal(err)
	}
	connected, failovers, errs, resynced, durations := log.snapshot()
	if fmt.Sprint(connected) != "[imap1 err imap2 ok]" {
		t.Errorf("Connected: %v", connected)
	}
	var e *Error
	if fmt.Sprint(failovers) != "[imap1>imap2]" || !errors.As(errs[0], &e) || e.Replica != "imap1" {
		t.Errorf("Failover: %v %v", failovers, errs)
	}
	if len(resynced) != 1 || resynced[0].Replica != "imap2" || resynced[0].Delivered != 2 || rep.Delivered != 2 || durations[0] <= 0 {
		t.Errorf("Resynced: %+v in %v", resynced, durations)
	}

	// The failed replica is now tried last: Do goes straight to the other
	// one, which is no failover. Once it fails too, Do reports the move.
	if err := p.Do(t.Context(), Repeatable, func(ctx context.Context, c *Conn) error { return c.Noop(ctx) }); err != nil {
		t.Fatal(err)
	}
	if _, failovers, _, _, _ := log.snapshot(); len(failovers) != 1 {
		t.Errorf("Failover after a plain Do: %v", failovers)
	}
	if err := s.Replica(0).Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Replica(1).Stop(); err != nil {
		t.Fatal(err)
	}
	var served string
	if err := p.Do(t.Context(), Repeatable, func(ctx context.Context, c *Conn) error {
		served = c.Replica()
		return c.Noop(ctx)
	}); err != nil {
		t.Fatal(err)
	}
	if _, failovers, _, _, _ := log.snapshot(); served != "imap1" || fmt.Sprint(failovers) != "[imap1>imap2 imap2>imap1]" {
		t.Errorf("served by %s, Failover: %v", served, failovers)
	}
}

func TestHooksWatchReportsFailoverOnce(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	var log hookLog
	p := newTestPool(t, s, func(o *Options) { o.Hooks = log.hooks() })
	mb := p.Mailbox("INBOX", nil)
	rec := newRecorder()
	stop := runWatch(t, mb, rec.handle)
	waitState(t, mb)
	appendN(t, s, 1, 1)
	rec.waitFor(t, 1, 10*time.Second)
	if err := s.Replica(0).Stop(); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 2, 2, 1)
	rec.waitFor(t, 2, 10*time.Second)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	rec.assertExactlyOnce(t, 1, 2)
	connected, failovers, _, resynced, _ := log.snapshot()
	if fmt.Sprint(failovers) != "[imap1>imap2]" {
		t.Errorf("Failover: %v", failovers)
	}
	if len(connected) < 2 || connected[0] != "imap1 ok" || connected[len(connected)-1] != "imap2 ok" {
		t.Errorf("Connected: %v", connected)
	}
	// First sync, the one after the new message on imap1, the one on
	// imap2 after the failover (which may have found message 2, or left
	// it to one more).
	delivered := 0
	for _, r := range resynced {
		delivered += r.Delivered
	}
	if len(resynced) < 3 || resynced[0].Replica != "imap1" || resynced[len(resynced)-1].Replica != "imap2" || delivered != 2 {
		t.Errorf("Resynced: %d reports, %d delivered", len(resynced), delivered)
	}
}

func TestHooksResyncDurationExcludesHandler(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	appendN(t, s, 1, 3)
	// A clock that moves only inside the handler: any duration reported
	// beyond zero would be the handler's.
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var log hookLog
	p := newTestPool(t, s, func(o *Options) {
		o.Hooks = log.hooks()
		o.Now = func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			return now
		}
	})
	slow := func(context.Context, *Message) error {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Hour)
		return nil
	}
	if _, err := p.Mailbox("INBOX", &MailboxOptions{DeliverExisting: true}).Sync(t.Context(), slow); err != nil {
		t.Fatal(err)
	}
	_, _, _, resynced, durations := log.snapshot()
	if len(resynced) != 1 || resynced[0].Delivered != 3 || durations[0] != 0 {
		t.Fatalf("Resynced %+v in %v", resynced, durations)
	}
}
