package imaptest

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

func message(n int) []byte {
	return fmt.Appendf(nil, "From: bob@example.org\r\nTo: alice@example.org\r\nSubject: note %d\r\nMessage-ID: <note-%d@example.org>\r\n\r\nbody %d\r\n", n, n, n)
}

func login(t *testing.T, s *Set, r *Replica) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(r.Addr(), nil)
	if err != nil {
		t.Fatalf("dial %s: %v", r.Name(), err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(s.Username(), s.Password()).Wait(); err != nil {
		t.Fatalf("login %s: %v", r.Name(), err)
	}
	return c
}

type seen struct {
	uid   imap.UID
	flags []imap.Flag
	id    string
}

// list selects INBOX over IMAP and returns UIDVALIDITY and every message.
func list(t *testing.T, c *imapclient.Client) (uint32, []seen) {
	t.Helper()
	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatalf("select: %v", err)
	}
	if sel.NumMessages == 0 {
		return sel.UIDValidity, nil
	}
	all := imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}
	bufs, err := c.Fetch(all, &imap.FetchOptions{UID: true, Flags: true, Envelope: true}).Collect()
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	var out []seen
	for _, b := range bufs {
		fl := slices.Clone(b.Flags)
		slices.Sort(fl)
		out = append(out, seen{uid: b.UID, flags: fl, id: b.Envelope.MessageID})
	}
	return sel.UIDValidity, out
}

func TestReplicasShareUIDs(t *testing.T) {
	t.Parallel()
	s := NewSet(t, &Options{Replicas: 3})
	for i := 1; i <= 5; i++ {
		uid, err := s.Append("INBOX", message(i), nil)
		if err != nil {
			t.Fatal(err)
		}
		if uid != imap.UID(i) {
			t.Fatalf("append %d got UID %d", i, uid)
		}
	}
	if err := s.Store("INBOX", imap.UIDSetNum(2), imap.StoreFlagsAdd, []imap.Flag{imap.FlagSeen}); err != nil {
		t.Fatal(err)
	}
	if err := s.Expunge("INBOX", imap.UIDSetNum(4)); err != nil {
		t.Fatal(err)
	}
	var want []seen
	var wantValidity uint32
	for i, r := range s.Replicas() {
		v, got := list(t, login(t, s, r))
		if i == 0 {
			want, wantValidity = got, v
			continue
		}
		if v != wantValidity || !slices.EqualFunc(got, want, func(a, b seen) bool {
			return a.uid == b.uid && a.id == b.id && slices.Equal(a.flags, b.flags)
		}) {
			t.Fatalf("%s: validity %d %v, want %d %v", r.Name(), v, got, wantValidity, want)
		}
	}
	if len(want) != 4 || want[1].uid != 2 || !slices.Contains(want[1].flags, imap.FlagSeen) || want[3].uid != 5 {
		t.Fatalf("content %v", want)
	}
}

func TestSubsetSimulatesLag(t *testing.T) {
	t.Parallel()
	s := NewSet(t, nil)
	if _, err := s.Append("INBOX", message(1), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append("INBOX", message(2), nil, 0); err != nil {
		t.Fatal(err)
	}
	st0, _ := s.Replica(0).Status("INBOX")
	st1, _ := s.Replica(1).Status("INBOX")
	if st0.UIDNext != 3 || st1.UIDNext != 2 {
		t.Fatalf("UIDNEXT %d/%d, want 3/2", st0.UIDNext, st1.UIDNext)
	}
	// Catching up in order gives the lagging replica the same UID.
	if uid, err := s.Append("INBOX", message(2), nil, 1); err != nil || uid != 2 {
		t.Fatalf("catch up: uid %d err %v", uid, err)
	}
	// Appending to both after a split gives a DivergedError.
	if _, err := s.Append("INBOX", message(3), nil, 0); err != nil {
		t.Fatal(err)
	}
	var de *DivergedError
	if _, err := s.Append("INBOX", message(4), nil); !errors.As(err, &de) || de.UIDs["imap1"] != 4 || de.UIDs["imap2"] != 3 {
		t.Fatalf("diverged append: %v", err)
	}
	if _, err := s.Append("INBOX", message(5), nil, 7); !errors.Is(err, ErrUnknownReplica) {
		t.Fatalf("unknown replica: %v", err)
	}
}

func TestStopStartKeepsDataAndAddress(t *testing.T) {
	t.Parallel()
	s := NewSet(t, nil)
	r := s.Replica(0)
	addr := r.Addr()
	if _, err := s.Append("INBOX", message(1), nil); err != nil {
		t.Fatal(err)
	}
	c := login(t, s, r)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if r.Running() {
		t.Fatal("running after Stop")
	}
	// The live connection is closed by Stop.
	if err := c.Noop().Wait(); err == nil {
		t.Fatal("NOOP succeeded on a stopped replica")
	}
	if _, err := imapclient.DialInsecure(addr, nil); err == nil {
		t.Fatal("dial succeeded while stopped")
	}
	// A change made while stopped reaches it, as replication would.
	if _, err := s.Append("INBOX", message(2), nil); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	if r.Addr() != addr {
		t.Fatalf("address changed: %s → %s", addr, r.Addr())
	}
	_, got := list(t, login(t, s, r))
	if len(got) != 2 || got[0].id != "note-1@example.org" || got[1].uid != 2 {
		t.Fatalf("after restart: %v", got)
	}
	if r.Sessions() < 2 {
		t.Fatalf("sessions %d", r.Sessions())
	}
}

func TestResetUIDValidity(t *testing.T) {
	t.Parallel()
	s := NewSet(t, nil)
	for i := 1; i <= 3; i++ {
		if _, err := s.Append("INBOX", message(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Expunge("INBOX", imap.UIDSetNum(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Store("INBOX", imap.UIDSetNum(3), imap.StoreFlagsAdd, []imap.Flag{imap.FlagFlagged}); err != nil {
		t.Fatal(err)
	}
	before, _ := list(t, login(t, s, s.Replica(0)))
	v, err := s.ResetUIDValidity("INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if v == before {
		t.Fatalf("UIDVALIDITY unchanged: %d", v)
	}
	for _, r := range s.Replicas() {
		got, msgs := list(t, login(t, s, r))
		if got != v {
			t.Fatalf("%s: UIDVALIDITY %d, want %d", r.Name(), got, v)
		}
		if len(msgs) != 2 || msgs[0].uid != 1 || msgs[0].id != "note-2@example.org" ||
			msgs[1].uid != 2 || !slices.Contains(msgs[1].flags, imap.FlagFlagged) {
			t.Fatalf("%s: %v", r.Name(), msgs)
		}
	}
	uids, err := s.Replica(1).SearchMessageID("INBOX", "<note-3@example.org>")
	if err != nil || !slices.Equal(uids, []imap.UID{2}) {
		t.Fatalf("search: %v %v", uids, err)
	}
}

func TestAuthAndTLS(t *testing.T) {
	t.Parallel()
	plain := NewSet(t, &Options{Replicas: 1, Username: "carol@example.net", Password: "pw"})
	c, err := imapclient.DialInsecure(plain.Replica(0).Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("carol@example.net", "wrong").Wait(); err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	if err := c.Login("carol@example.net", "pw").Wait(); err != nil {
		t.Fatal(err)
	}

	for _, mode := range []TLSMode{TLSStartTLS, TLSImplicit} {
		s := NewSet(t, &Options{Replicas: 1, TLS: mode})
		opts := &imapclient.Options{TLSConfig: s.ClientTLSConfig()}
		var c *imapclient.Client
		var err error
		if mode == TLSStartTLS {
			c, err = imapclient.DialStartTLS(s.Replica(0).Addr(), opts)
		} else {
			c, err = imapclient.DialTLS(s.Replica(0).Addr(), opts)
		}
		if err != nil {
			t.Fatalf("mode %d: %v", mode, err)
		}
		if err := c.Login(s.Username(), s.Password()).Wait(); err != nil {
			t.Fatalf("mode %d login: %v", mode, err)
		}
		c.Close()
	}
	if NewSet(t, &Options{Replicas: 1}).ClientTLSConfig() != nil {
		t.Fatal("TLS config without TLS")
	}
}

func TestIdleReportsChangesQueuedBeforeIt(t *testing.T) {
	t.Parallel()
	s := NewSet(t, &Options{Replicas: 1})
	exists := make(chan uint32, 10)
	c, err := imapclient.DialInsecure(s.Replica(0).Addr(), &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					exists <- *d.NumMessages
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(s.Username(), s.Password()).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	// Appended after the last command and before IDLE.
	if _, err := s.Append("INBOX", message(1), nil); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-exists:
		if n != 1 {
			t.Fatalf("EXISTS %d", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no EXISTS during IDLE")
	}
	// And a change during IDLE is reported too.
	if _, err := s.Append("INBOX", message(2), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-exists:
		if n != 2 {
			t.Fatalf("EXISTS %d", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no EXISTS during IDLE")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestNoIdle(t *testing.T) {
	t.Parallel()
	s := NewSet(t, &Options{Replicas: 1, NoIdle: true})
	c, err := imapclient.DialInsecure(s.Replica(0).Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(s.Username(), s.Password()).Wait(); err != nil {
		t.Fatal(err)
	}
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if caps.Has(imap.CapIdle) || !caps.Has(imap.CapIMAP4rev1) {
		t.Fatalf("capabilities %v", caps)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if s.Replica(0).Idles() != 0 {
		t.Fatal("IDLE counted without one")
	}
	cmd, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if s.Replica(0).Idles() != 1 {
		t.Fatalf("%d IDLE commands seen", s.Replica(0).Idles())
	}
}
