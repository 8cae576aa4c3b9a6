package imapfailover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"
	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/imaptest"
)

func TestTLSModesAndSASL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		server imaptest.TLSMode
		client TLSMode
		sasl   bool
	}{
		{imaptest.TLSImplicit, TLSImplicit, false},
		{imaptest.TLSStartTLS, TLSStartTLS, true},
		{imaptest.TLSNone, TLSNone, true},
	} {
		t.Run(tc.client.String(), func(t *testing.T) {
			t.Parallel()
			s := imaptest.NewSet(t, &imaptest.Options{Replicas: 1, TLS: tc.server})
			appendN(t, s, 1, 1)
			p := newTestPool(t, s, func(o *Options) {
				r := &o.Replicas[0]
				r.TLS, r.TLSConfig = tc.client, s.ClientTLSConfig()
				if tc.sasl {
					r.Username, r.Password = "", ""
					r.SASL = func() sasl.Client { return sasl.NewPlainClient("", s.Username(), s.Password()) }
				}
			})
			rep, err := p.Mailbox("INBOX", &MailboxOptions{DeliverExisting: true}).Sync(t.Context(), newRecorder().handle)
			if err != nil || rep.Delivered != 1 {
				t.Fatalf("%+v %v", rep, err)
			}
		})
	}
	// A client that expects TLS does not talk in plain text to a server
	// without it.
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	p := newTestPool(t, s, func(o *Options) { o.Replicas[0].TLS = TLSImplicit })
	if err := p.Do(t.Context(), Repeatable, noop); !errors.Is(err, ErrNoReplica) {
		t.Fatalf("plain server with implicit TLS: %v", err)
	}
	p = newTestPool(t, s, func(o *Options) { o.Replicas[0].Password = "wrong" })
	var ie *imap.Error
	if err := p.Do(t.Context(), Repeatable, noop); !errors.As(err, &ie) {
		t.Fatalf("wrong password: %v", err)
	}
}

// The first run stops its replica before its command, so the command
// fails with a broken connection.
func TestDoRepeatsOnlyRepeatable(t *testing.T) {
	t.Parallel()
	for _, repeat := range []Repeat{Once, Repeatable} {
		t.Run(fmt.Sprint(repeat), func(t *testing.T) {
			t.Parallel()
			s := imaptest.NewSet(t, nil)
			p := newTestPool(t, s, nil)
			var ran []string
			err := p.Do(t.Context(), repeat, func(ctx context.Context, c *Conn) error {
				ran = append(ran, c.Replica())
				if len(ran) == 1 {
					if err := s.Replica(0).Stop(); err != nil {
						t.Fatal(err)
					}
				}
				return c.Noop(ctx)
			})
			switch repeat {
			case Once:
				if !errors.Is(err, ErrConnLost) || fmt.Sprint(ran) != "[imap1]" {
					t.Fatalf("Once: ran on %v, err %v", ran, err)
				}
			case Repeatable:
				if err != nil || fmt.Sprint(ran) != "[imap1 imap2]" {
					t.Fatalf("Repeatable: ran on %v, err %v", ran, err)
				}
			}
		})
	}
}

func TestIdleConnectionCheckedBeforeReuse(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	var log hookLog
	p := newTestPool(t, s, func(o *Options) { o.Hooks = log.hooks() })
	for range 3 {
		if err := p.Do(t.Context(), Once, noop); err != nil {
			t.Fatal(err)
		}
	}
	if st := p.Stats(); st.Open != 1 || st.Idle["imap1"] != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The server restarts: the idle connection is dead but looks fine
	// until used. Even an operation that must not be repeated runs,
	// because the check comes before it.
	if err := s.Replica(0).Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Replica(0).Start(); err != nil {
		t.Fatal(err)
	}
	var on string
	if err := p.Do(t.Context(), Once, func(ctx context.Context, c *Conn) error {
		on = c.Replica()
		return c.Noop(ctx)
	}); err != nil || on != "imap1" {
		t.Fatalf("on %s: %v", on, err)
	}
	if connected, failovers, _, _, _ := log.snapshot(); fmt.Sprint(connected) != "[imap1 ok imap1 ok]" || len(failovers) != 0 {
		t.Fatalf("Connected %v, Failover %v", connected, failovers)
	}
}

func TestHealthOrdersReplicas(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 3})
	hv := newFakeHealth()
	p := newTestPool(t, s, func(o *Options) { o.Health = hv })
	served := func() string {
		t.Helper()
		var on string
		if err := p.Do(t.Context(), Once, func(ctx context.Context, c *Conn) error {
			on = c.Replica()
			return c.Noop(ctx)
		}); err != nil {
			t.Fatal(err)
		}
		return on
	}
	if on := served(); on != "imap1" {
		t.Fatalf("by priority: %s", on)
	}
	hv.set("imap1", health.Down)
	if on := served(); on != "imap2" {
		t.Fatalf("imap1 down: %s", on)
	}
	// When every replica is said to be Down, they are still tried, by
	// priority: the health view may be wrong, the connection is not.
	hv.set("imap2", health.Down)
	hv.set("imap3", health.Down)
	if on := served(); on != "imap1" {
		t.Fatalf("all down: %s", on)
	}
	hv.mu.Lock()
	defer hv.mu.Unlock()
	if hv.success["imap1"] != 2 || hv.success["imap2"] != 1 {
		t.Fatalf("passive reports: %v", hv.success)
	}
}

func TestMaxConnsBoundsConnections(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	p := newTestPool(t, s, func(o *Options) { o.MaxConns = 2 })
	// Eight callers share two connections: when one goes idle a waiting
	// caller takes it, so every call finishes (a deadlock fails here).
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := 0
	for range 8 {
		wg.Go(func() {
			err := p.Do(ctx, Once, func(ctx context.Context, c *Conn) error {
				mu.Lock()
				peak = max(peak, p.Stats().Open)
				mu.Unlock()
				return c.Noop(ctx)
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if peak > 2 || p.Stats().Open > 2 {
		t.Fatalf("peak %d open connections, limit 2", peak)
	}
}

func TestFetchHelpers(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	msg := testMessage(1)
	uid, err := s.Append("INBOX", msg, []imap.Flag{imap.FlagFlagged})
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Replica(0).Status("INBOX")
	if err != nil {
		t.Fatal(err)
	}
	uv := st.UIDValidity
	p := newTestPool(t, s, nil)
	header := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader}
	bufs, err := p.FetchMessages(t.Context(), "INBOX", uv, imap.UIDSetNum(uid), &FetchItems{
		Envelope: true, Flags: true, Size: true, InternalDate: true, Sections: []*imap.FetchItemBodySection{header},
	})
	if err != nil || len(bufs) != 1 {
		t.Fatalf("%d messages, %v", len(bufs), err)
	}
	b := bufs[0]
	if b.UID != uid || b.Envelope.MessageID != "order-1@example.org" || b.RFC822Size != int64(len(msg)) ||
		b.InternalDate.IsZero() || len(b.Flags) != 1 || b.Flags[0] != imap.FlagFlagged {
		t.Fatalf("fetched %+v", b)
	}
	if h := b.FindBodySection(&imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader}); !bytes.HasPrefix(msg, h) || len(h) == 0 {
		t.Fatalf("header %q", h)
	}

	var body bytes.Buffer
	n, err := p.WriteBody(t.Context(), &body, "INBOX", uv, uid, nil)
	if err != nil || n != int64(len(msg)) || !bytes.Equal(body.Bytes(), msg) {
		t.Fatalf("body %q (%d) %v", body.Bytes(), n, err)
	}
	// Reading with PEEK leaves \Seen alone.
	if bufs, err = p.FetchMessages(t.Context(), "INBOX", uv, imap.UIDSetNum(uid), &FetchItems{Flags: true}); err != nil || len(bufs[0].Flags) != 1 {
		t.Fatalf("flags after reading: %+v %v", bufs, err)
	}

	if _, err := p.WriteBody(t.Context(), &body, "INBOX", uv, uid+1, nil); !errors.Is(err, ErrNoMessage) {
		t.Fatalf("missing UID: %v", err)
	}
	if _, err := p.FetchMessages(t.Context(), "INBOX", uv+1, imap.UIDSetNum(uid), nil); !errors.Is(err, ErrUIDValidity) {
		t.Fatalf("wrong UIDVALIDITY: %v", err)
	}
}
