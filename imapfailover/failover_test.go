package imapfailover

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/hamail/hamail/internal/imaptest"
)

// A replica rebuilt with a new UIDVALIDITY that also lags behind: moving
// onto it, back to the replica that has everything, and back again must
// neither hand out a message twice nor miss one.
func TestUIDValidityChangeOnLaggingReplica(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendN(t, s, 1, 3)
	p := newTestPool(t, s, nil)
	mb := p.Mailbox("INBOX", &MailboxOptions{DeliverExisting: true})
	rec := newRecorder()
	sync := func(wantReplica string, wantDelivered int) *SyncReport {
		t.Helper()
		rep, err := mb.Sync(t.Context(), rec.handle)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Replica != wantReplica || rep.Delivered != wantDelivered {
			t.Fatalf("report %+v, want %d delivered from %s", rep, wantDelivered, wantReplica)
		}
		return rep
	}
	sync("imap1", 3)
	// 4 and 5 reach imap1 only; imap2 is rebuilt meanwhile.
	appendN(t, s, 4, 5, 0)
	sync("imap1", 2)
	if _, err := s.ResetUIDValidity("INBOX", 1); err != nil {
		t.Fatal(err)
	}
	stop := func(i int) {
		t.Helper()
		if err := s.Replica(i).Stop(); err != nil {
			t.Fatal(err)
		}
	}
	start := func(i int) {
		t.Helper()
		if err := s.Replica(i).Start(); err != nil {
			t.Fatal(err)
		}
	}

	stop(0)
	if rep := sync("imap2", 0); !rep.UIDValidityChanged || rep.Remapped != 3 {
		t.Fatalf("onto the rebuilt replica: %+v", rep)
	}
	if st := waitState(t, mb); len(st.Missing) != 2 {
		t.Fatalf("missing %v, want the fingerprints of 4 and 5", st.Missing)
	}
	// 6 arrives on imap2 only, while imap1 is down.
	appendN(t, s, 6, 6, 1)
	sync("imap2", 1)

	start(0)
	stop(1)
	if rep := sync("imap1", 0); !rep.UIDValidityChanged || rep.Remapped != 5 {
		t.Fatalf("back onto the first replica: %+v", rep)
	}
	// 6 reaches imap1 by replication: already handled.
	appendN(t, s, 6, 6, 0)
	if rep := sync("imap1", 0); rep.Remapped != 1 {
		t.Fatalf("after 6 replicated: %+v", rep)
	}
	appendN(t, s, 7, 7, 0)
	appendN(t, s, 7, 7, 1)
	sync("imap1", 1)

	start(1)
	stop(0)
	if rep := sync("imap2", 0); !rep.UIDValidityChanged || rep.Remapped != 5 {
		t.Fatalf("onto the rebuilt replica again: %+v", rep)
	}
	appendN(t, s, 8, 8, 1)
	sync("imap2", 1)
	rec.assertExactlyOnce(t, 1, 8)
}

// Watch must not take a replica that lacks messages already handled (it
// cannot tell an expunge from a message not yet replicated) while a
// better one is up, and must follow it without repeating anything when
// it is the only one left.
func TestWatchSkipsLaggingReplica(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 3})
	p := newTestPool(t, s, nil)
	var expunged int
	mb := p.Mailbox("INBOX", &MailboxOptions{OnExpunge: func(_ context.Context, _ uint32, uids []imap.UID) error {
		expunged += len(uids)
		return nil
	}})
	rec := newRecorder()
	stop := runWatch(t, mb, rec.handle)
	waitState(t, mb)
	appendN(t, s, 1, 2)
	appendN(t, s, 3, 4, 0, 2) // imap2 lags
	rec.waitFor(t, 4, 10*time.Second)
	if err := s.Replica(0).Stop(); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 5, 5, 0, 2)
	rec.waitFor(t, 5, 10*time.Second)
	if r := rec.lastReplica(); r != "imap3" {
		t.Fatalf("message 5 read from %s, want imap3 (imap2 lags)", r)
	}
	if err := s.Replica(2).Stop(); err != nil {
		t.Fatal(err)
	}
	// Only the lagging replica is left; it catches up, then 6 arrives.
	appendN(t, s, 3, 5, 1)
	appendN(t, s, 6, 6)
	rec.waitFor(t, 6, 10*time.Second)
	if r := rec.lastReplica(); r != "imap2" {
		t.Fatalf("message 6 read from %s, want imap2", r)
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	rec.assertExactlyOnce(t, 1, 6)
	if expunged != 0 {
		t.Fatalf("%d messages reported expunged", expunged)
	}
}

// Split brain: both replicas gave UID 3 to different messages. The reader
// handled one of them; once replication renumbers both (Dovecot's dsync
// gives them new UIDs and drops the old one), the handled one is
// recognised and only the other is handed out.
func TestSplitBrainRenumbering(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendN(t, s, 1, 2)
	p := newTestPool(t, s, nil)
	var expunged []imap.UID
	mb := p.Mailbox("INBOX", &MailboxOptions{DeliverExisting: true, OnExpunge: func(_ context.Context, _ uint32, uids []imap.UID) error {
		expunged = append(expunged, uids...)
		return nil
	}})
	rec := newRecorder()
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 3, 3, 0)
	appendN(t, s, 4, 4, 1)
	if rep, err := mb.Sync(t.Context(), rec.handle); err != nil || rep.Delivered != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
	// The reader moves to the other side before replication resolves the
	// conflict: its UID 3 looks handled, nothing is delivered yet.
	if err := s.Replica(0).Stop(); err != nil {
		t.Fatal(err)
	}
	if rep, err := mb.Sync(t.Context(), rec.handle); err != nil || rep.Replica != "imap2" || rep.Delivered != 0 {
		t.Fatalf("%+v %v", rep, err)
	}
	// Replication resolves it: UID 3 goes, both messages come back as 4 and 5.
	if err := s.Expunge("INBOX", imap.UIDSetNum(3)); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 3, 4)
	rep, err := mb.Sync(t.Context(), rec.handle)
	if err != nil || rep.Delivered != 1 || rep.Remapped != 1 {
		t.Fatalf("after renumbering: %+v %v", rep, err)
	}
	rec.assertExactlyOnce(t, 1, 4)
	if len(expunged) != 0 {
		t.Fatalf("renumbered message reported expunged: %v", expunged)
	}
}

// breakOnConn closes the connection when the client writes a command
// containing marker, once.
type breakOnConn struct {
	net.Conn
	marker  string
	tripped *atomic.Bool
}

func (c *breakOnConn) Write(b []byte) (int, error) {
	if strings.Contains(string(b), c.marker) && c.tripped.CompareAndSwap(false, true) {
		c.Conn.Close()
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}

// A connection that breaks in the middle of a resync leaves the state as
// it was: the expunge and flag changes it had seen are reported by the
// next resync, not lost.
func TestResyncBrokenHalfWayLosesNothing(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	appendN(t, s, 1, 4)
	var tripped atomic.Bool
	tripped.Store(true) // armed later
	p := newTestPool(t, s, func(o *Options) {
		o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &breakOnConn{Conn: c, marker: "(UID FLAGS)", tripped: &tripped}, nil
		}
		o.FailureHold = time.Nanosecond
	})
	var expunged []imap.UID
	var flagged []FlagChange
	mb := p.Mailbox("INBOX", &MailboxOptions{
		OnExpunge: func(_ context.Context, _ uint32, uids []imap.UID) error {
			expunged = append(expunged, uids...)
			return nil
		},
		OnFlags: func(_ context.Context, changes []FlagChange) error {
			flagged = append(flagged, changes...)
			return nil
		},
	})
	rec := newRecorder()
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	if err := s.Expunge("INBOX", imap.UIDSetNum(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Store("INBOX", imap.UIDSetNum(3), imap.StoreFlagsAdd, []imap.Flag{imap.FlagAnswered}); err != nil {
		t.Fatal(err)
	}
	tripped.Store(false)
	if _, err := mb.Sync(t.Context(), rec.handle); !errors.Is(err, ErrConnLost) {
		t.Fatalf("sync with a broken flags fetch: %v", err)
	}
	rep, err := mb.Sync(t.Context(), rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	if len(expunged) != 1 || expunged[0] != 1 || len(flagged) != 1 || flagged[0].UID != 3 || rep.FlagChanges != 1 {
		t.Fatalf("expunged %v, flag changes %+v, report %+v", expunged, flagged, rep)
	}
}

// Every replica down: Watch keeps trying and resumes when one is back,
// losing nothing that arrived meanwhile.
func TestWatchSurvivesAllReplicasDown(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	p := newTestPool(t, s, nil)
	mb := p.Mailbox("INBOX", nil)
	rec := newRecorder()
	stop := runWatch(t, mb, rec.handle)
	waitState(t, mb)
	appendN(t, s, 1, 1)
	rec.waitFor(t, 1, 10*time.Second)
	for _, r := range s.Replicas() {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	appendN(t, s, 2, 3)
	if err := s.Replica(1).Start(); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, 3, 10*time.Second)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	rec.assertExactlyOnce(t, 1, 3)
}

// Closing the pool ends a running Watch with ErrClosed.
func TestPoolCloseEndsWatch(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	p := newTestPool(t, s, nil)
	mb := p.Mailbox("INBOX", nil)
	done := make(chan error, 1)
	go func() { done <- mb.Watch(t.Context(), newRecorder().handle) }()
	waitState(t, mb)
	p.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Watch returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch still running after Close")
	}
	if st := p.Stats(); st.Open != 0 {
		t.Fatalf("connections left open: %+v", st)
	}
}
