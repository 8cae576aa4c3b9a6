package imapfailover

import (
	"context"
	"errors"
	"fmt"
	"github.com/hamail/hamail/health"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/hamail/hamail/internal/peers"
)

func dovecotReplica(name string, d *peers.Dovecot, prio int) Replica {
	return Replica{Name: name, Addr: d.Addr, Priority: prio, TLS: TLSNone, Username: d.User, Password: d.Password}
}

func dovecotPool(t *testing.T, mod func(*Options), rs ...Replica) *Pool {
	t.Helper()
	o := &Options{
		Replicas: rs, CommandTimeout: 5 * time.Second, DialTimeout: 5 * time.Second,
		Heartbeat: 500 * time.Millisecond, ReconnectDelay: 50 * time.Millisecond, FailureHold: 2 * time.Second,
	}
	if mod != nil {
		mod(o)
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func storeFlags(t *testing.T, d *peers.Dovecot, uids imap.UIDSet, flag imap.Flag) {
	t.Helper()
	c := d.Login()
	defer c.Close()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(uids, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{flag}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
}

func TestDovecotCondstoreResync(t *testing.T) {
	t.Parallel()
	d := peers.StartDovecot(t, peers.DovecotOptions{})
	for i := 1; i <= 5; i++ {
		d.Append("INBOX", testMessage(i))
	}
	p := dovecotPool(t, nil, dovecotReplica("dovecot1", d, 0))
	var changes []FlagChange
	store := &MemoryStore{}
	opts := &MailboxOptions{Store: store, OnFlags: func(_ context.Context, c []FlagChange) error {
		changes = append(changes, c...)
		return nil
	}}
	mb := p.Mailbox("INBOX", opts)
	rec := newRecorder()
	rep, err := mb.Sync(t.Context(), rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := mb.State(t.Context())
	if st.ModSeq["dovecot1"] == 0 {
		t.Fatalf("no HIGHESTMODSEQ remembered: %+v %+v", rep, st.ModSeq)
	}
	storeFlags(t, d, imap.UIDSetNum(2, 4), imap.FlagFlagged)
	d.Append("INBOX", testMessage(6))
	if rep, err = mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	if rep.FlagCheck != "changedsince" || rep.FlagChanges != 2 || rep.Delivered != 1 {
		t.Fatalf("report %+v", rep)
	}
	if len(changes) != 2 || changes[0].UID != 2 || changes[1].UID != 4 {
		t.Fatalf("changes %+v", changes)
	}
	// Nothing changed: HIGHESTMODSEQ says so and no flags are fetched.
	if rep, err = mb.Sync(t.Context(), rec.handle); err != nil || rep.FlagCheck != "" || rep.Delivered != 0 {
		t.Fatalf("idle resync %+v %v", rep, err)
	}
	rec.assertExactlyOnce(t, 6, 6)

	// A remembered mod-sequence above the replica's HIGHESTMODSEQ (a
	// replica restored from a backup) cannot be trusted: every flag is
	// checked.
	st, _ = store.Load(t.Context(), "INBOX")
	st.ModSeq["dovecot1"] = 1 << 40
	if err := store.Save(t.Context(), "INBOX", st); err != nil {
		t.Fatal(err)
	}
	storeFlags(t, d, imap.UIDSetNum(5), imap.FlagSeen)
	rep, err = p.Mailbox("INBOX", opts).Sync(t.Context(), rec.handle)
	if err != nil || rep.FlagCheck != "full" || rep.FlagChanges != 1 || changes[len(changes)-1].UID != 5 {
		t.Fatalf("after a restored replica: %+v %v", rep, err)
	}
}

func TestDovecotPairFailover(t *testing.T) {
	t.Parallel()
	pair := peers.StartDovecotPair(t, peers.DovecotOptions{})
	hv := newFakeHealth()
	p := dovecotPool(t, func(o *Options) { o.Health = hv }, dovecotReplica("a", pair.A, 0), dovecotReplica("b", pair.B, 1))
	mb := p.Mailbox("INBOX", nil)
	rec := newRecorder()
	var mu sync.Mutex
	from := map[string]string{}
	stop := runWatch(t, mb, func(ctx context.Context, m *Message) error {
		mu.Lock()
		from[m.Envelope.MessageID] = m.Replica
		mu.Unlock()
		return rec.handle(ctx, m)
	})
	waitState(t, mb)
	n := 0
	for range 2 {
		// Only on A (not yet replicated): Watch must be following A.
		n++
		pair.A.Append("INBOX", testMessage(n))
		rec.waitFor(t, n, 20*time.Second)
		pair.Sync()
		pair.A.Stop()
		hv.set("a", health.Down)
		// Delivered to B while A is down.
		n++
		pair.B.Append("INBOX", testMessage(n))
		rec.waitFor(t, n, 20*time.Second)
		pair.A.Start()
		pair.Sync()
		// A is back: Watch returns to it at a heartbeat.
		hv.set("a", health.Up)
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	rec.assertExactlyOnce(t, 1, n)
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i <= n; i++ {
		if want := []string{"b", "a"}[i%2]; from[fmt.Sprintf("order-%d@example.org", i)] != want {
			t.Fatalf("message %d read from %v, want %s", i, from, want)
		}
	}
}

func TestDovecotReplicaLag(t *testing.T) {
	t.Parallel()
	pair := peers.StartDovecotPair(t, peers.DovecotOptions{})
	for i := 1; i <= 3; i++ {
		pair.A.Append("INBOX", testMessage(i))
	}
	pair.Sync()
	// B is preferred. No failure hold, so that B's rank depends only on
	// its content.
	p := dovecotPool(t, func(o *Options) { o.FailureHold = time.Nanosecond },
		dovecotReplica("b", pair.B, 0), dovecotReplica("a", pair.A, 1))
	var expunged []imap.UID
	mb := p.Mailbox("INBOX", &MailboxOptions{OnExpunge: func(_ context.Context, _ uint32, uids []imap.UID) error {
		expunged = append(expunged, uids...)
		return nil
	}})
	rec := newRecorder()
	sync := func(wantReplica string, wantLagging bool, wantDelivered int) {
		t.Helper()
		rep, err := mb.Sync(t.Context(), rec.handle)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Replica != wantReplica || rep.Lagging != wantLagging || rep.Delivered != wantDelivered || len(rep.Expunged) != 0 {
			t.Fatalf("report %+v, want replica %s lagging %v delivered %d", rep, wantReplica, wantLagging, wantDelivered)
		}
	}
	sync("b", false, 0)
	// 4 and 5 reach only A, and are handled from A while B is down.
	pair.A.Append("INBOX", testMessage(4))
	pair.A.Append("INBOX", testMessage(5))
	pair.B.Stop()
	sync("a", false, 2)
	pair.B.Start()
	// B is back but lags (UIDNEXT 4, last handled 5): left for A.
	sync("a", false, 0)
	// Only the lagging B is left: used, not trusted for expunges (4 and
	// 5 are missing there, not expunged).
	pair.A.Stop()
	sync("b", true, 0)
	// Once B caught up it is used again; a new message is delivered once.
	pair.A.Start()
	pair.Sync()
	pair.B.Append("INBOX", testMessage(6))
	sync("b", false, 1)
	if len(expunged) != 0 {
		t.Fatalf("expunges reported: %v", expunged)
	}
	rec.assertExactlyOnce(t, 4, 6)
}

// A mailbox deleted and created again on Dovecot has a new UIDVALIDITY and
// new UIDs: the messages handled before are recognised by Message-ID.
func TestDovecotUIDValidityChange(t *testing.T) {
	t.Parallel()
	d := peers.StartDovecot(t, peers.DovecotOptions{})
	for i := 1; i <= 3; i++ {
		d.Append("Orders", testMessage(i))
	}
	p := dovecotPool(t, nil, dovecotReplica("dovecot1", d, 0))
	mb := p.Mailbox("Orders", &MailboxOptions{DeliverExisting: true})
	rec := newRecorder()
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	c := d.Login()
	if err := c.Delete("Orders").Wait(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, i := range []int{3, 1, 4, 2} {
		d.Append("Orders", testMessage(i))
	}
	rep, err := mb.Sync(t.Context(), rec.handle)
	if err != nil || !rep.UIDValidityChanged || rep.Remapped != 3 || rep.Delivered != 1 {
		t.Fatalf("after the mailbox was recreated: %+v %v", rep, err)
	}
	rec.assertExactlyOnce(t, 1, 4)
}

// Split brain in a replicated pair: A and B both give UID 2 to a
// different message. The reader handles A's; dsync then gives both new
// UIDs and drops UID 2. The handled message is recognised under its new
// UID, the other is handed out once, and neither is reported expunged,
// on either replica.
func TestDovecotSplitBrain(t *testing.T) {
	t.Parallel()
	pair := peers.StartDovecotPair(t, peers.DovecotOptions{})
	pair.A.Append("INBOX", testMessage(1))
	pair.Sync()
	p := dovecotPool(t, func(o *Options) { o.FailureHold = time.Nanosecond },
		dovecotReplica("a", pair.A, 0), dovecotReplica("b", pair.B, 1))
	var expunged []imap.UID
	mb := p.Mailbox("INBOX", &MailboxOptions{DeliverExisting: true, OnExpunge: func(_ context.Context, _ uint32, uids []imap.UID) error {
		expunged = append(expunged, uids...)
		return nil
	}})
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
	sync("a", 1)
	_, uidA := pair.A.Append("INBOX", testMessage(2))
	_, uidB := pair.B.Append("INBOX", testMessage(3))
	if uidA != uidB {
		t.Fatalf("no conflict: UIDs %d and %d", uidA, uidB)
	}
	sync("a", 1)
	// An incremental sync (DovecotPair.Sync) leaves the conflict as it is
	// here; a full one resolves it.
	pair.A.Doveadm("sync", "-u", pair.A.User, "-f", "tcp:"+pair.B.DoveadmAddr)
	if rep := sync("a", 1); rep.Remapped != 1 {
		t.Fatalf("after dsync: %+v", rep)
	}
	pair.A.Stop()
	sync("b", 0)
	rec.assertExactlyOnce(t, 1, 3)
	if len(expunged) != 0 {
		t.Fatalf("reported expunged: %v", expunged)
	}
}
