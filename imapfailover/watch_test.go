package imapfailover

import (
	"context"
	"errors"
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

func TestWatchFailoverOnKill(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 3})
	p := newTestPool(t, s, nil)
	mb := p.Mailbox("INBOX", nil)
	rec := newRecorder()
	stop := runWatch(t, mb, rec.handle)
	// Wait until Watch has taken stock, so what follows is new.
	deadline := time.Now().Add(5 * time.Second)
	for st, _ := mb.State(t.Context()); st == nil; st, _ = mb.State(t.Context()) {
		if time.Now().After(deadline) {
			t.Fatal("no first sync")
		}
		time.Sleep(5 * time.Millisecond)
	}
	const rounds = 20
	n := 0
	for round := range rounds {
		// Messages keep arriving on every replica, the active one included.
		n++
		appendN(t, s, n, n)
		rec.waitFor(t, n, 10*time.Second)
		victim := s.Replica(round % 3)
		if err := victim.Stop(); err != nil {
			t.Fatal(err)
		}
		n++
		appendN(t, s, n, n)
		rec.waitFor(t, n, 10*time.Second)
		if err := victim.Start(); err != nil {
			t.Fatal(err)
		}
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch returned %v", err)
	}
	rec.assertExactlyOnce(t, 1, n)
}
