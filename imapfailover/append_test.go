package imapfailover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/hamail/hamail/internal/faultproxy"
	"github.com/hamail/hamail/internal/imaptest"
)

// lossyConn breaks the connection once the server has stored a message
// containing marker and before its tagged OK is read: the case where an
// APPEND took effect but the client cannot know.
type lossyConn struct {
	net.Conn
	marker  []byte
	sent    atomic.Bool
	stored  func() bool
	tripped *atomic.Bool
}

func (c *lossyConn) Write(b []byte) (int, error) {
	// Mark before writing: the server may answer, and the reader see the
	// answer, before Write returns.
	if bytes.Contains(b, c.marker) && !c.tripped.Load() {
		c.sent.Store(true)
	}
	return c.Conn.Write(b)
}

func (c *lossyConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	// Whatever arrives after the message was sent is the answer to the
	// APPEND: lose it with the connection.
	if c.sent.Load() && c.tripped.CompareAndSwap(false, true) {
		deadline := time.Now().Add(5 * time.Second)
		for !c.stored() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		c.Conn.Close()
		return 0, net.ErrClosed
	}
	return n, err
}

func TestAppendAfterLostOKFindsTheMessage(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	r := s.Replica(0)
	var tripped atomic.Bool
	msg := testMessage(1)
	p := newTestPool(t, s, func(o *Options) {
		o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &lossyConn{Conn: c, marker: []byte("body 1"), tripped: &tripped, stored: func() bool {
				uids, _ := r.SearchMessageID("INBOX", "<order-1@example.org>")
				return len(uids) > 0
			}}, nil
		}
	})
	res, err := p.Append(t.Context(), "INBOX", msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !tripped.Load() || !res.Found || res.Attempts != 2 || res.UID != 1 || res.MessageID != "order-1@example.org" {
		t.Fatalf("result %+v (connection broken: %v)", res, tripped.Load())
	}
	if uids, _ := r.SearchMessageID("INBOX", "<order-1@example.org>"); len(uids) != 1 {
		t.Fatalf("%d copies", len(uids))
	}
}

func TestAppendBlackHoleRetriedOnNextReplica(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	proxy := faultproxy.Start(t, s.Replica(0).Addr())
	var log hookLog
	p := newTestPool(t, s, func(o *Options) {
		o.Replicas[0].Addr = proxy.Addr()
		o.CommandTimeout = time.Second
		o.DialTimeout = time.Second
		o.Hooks = log.hooks()
	})
	// Warm a pooled connection, then let the network swallow everything.
	if err := p.Do(t.Context(), Once, func(ctx context.Context, c *Conn) error { return c.Noop(ctx) }); err != nil {
		t.Fatal(err)
	}
	if err := proxy.SetMode(faultproxy.BlackHole); err != nil {
		t.Fatal(err)
	}
	res, err := p.Append(t.Context(), "INBOX", []byte("From: bob@example.org\r\nSubject: no id\r\n\r\nhello\r\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replica != "imap2" || res.Found {
		t.Fatalf("result %+v", res)
	}
	if _, failovers, errs, _, _ := log.snapshot(); fmt.Sprint(failovers) != "[imap1>imap2]" || !errors.Is(errs[0], ErrTimeout) {
		t.Fatalf("Failover %v %v", failovers, errs)
	}
	for i, r := range s.Replicas() {
		uids, err := r.SearchMessageID("INBOX", "<"+res.MessageID+">")
		if err != nil {
			t.Fatal(err)
		}
		if want := []int{0, 1}[i]; len(uids) != want {
			t.Fatalf("%s holds %d copies, want %d", r.Name(), len(uids), want)
		}
	}
}

func TestAppendServerRefusalIsNotRetried(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	p := newTestPool(t, s, nil)
	res, err := p.Append(t.Context(), "Nonexistent", testMessage(1), nil)
	var ie *imap.Error
	if !errors.As(err, &ie) || res != nil {
		t.Fatalf("err %v res %+v", err, res)
	}
	for _, r := range s.Replicas() {
		if r.Sessions() > 1 {
			t.Fatalf("%s got %d sessions: refusal retried", r.Name(), r.Sessions())
		}
	}
}

func TestMessageID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		id      string
		present bool
		bad     bool
	}{
		{"Message-ID: <a@b>\r\n\r\nbody", "a@b", true, false},
		{"Subject: x\r\nmessage-id:\r\n <folded@example.org>\r\n\r\n", "folded@example.org", true, false},
		{"Subject: x\n\nMessage-ID: <in-body@x>\n", "", false, false},
		{"Message-ID: <unterminated\r\n\r\n", "", true, true},
		{"Message-ID: \r\n\r\n", "", true, true},
		{"Message-ID: bare@example.org\r\n\r\n", "bare@example.org", true, false},
		{"Resent-Message-ID: <r@x>\r\n\r\n", "", false, false},
	} {
		id, ok, err := MessageID([]byte(tc.in))
		if id != tc.id || ok != tc.present || (err != nil) != tc.bad {
			t.Errorf("%q: got %q %v %v", tc.in, id, ok, err)
		}
		if tc.bad && !errors.Is(err, ErrNoMessageID) {
			t.Errorf("%q: error %v", tc.in, err)
		}
	}
	id, out, err := ensureMessageID([]byte("Subject: x\n\nbody\n"), "example.net")
	if err != nil || !bytes.HasPrefix(out, []byte("Message-ID: <"+id+">\nSubject")) {
		t.Fatalf("added %q %q %v", id, out, err)
	}
	if got, _, _ := MessageID(out); got != id {
		t.Fatalf("added ID not found: %q", got)
	}
}

func FuzzMessageID(f *testing.F) {
	f.Add([]byte("Message-ID: <a@b>\r\n\r\nbody"))
	f.Add([]byte("message-id:\r\n <x@y>\r\n\r\n"))
	f.Add([]byte("Message-ID: <\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, ok, err := MessageID(b)
		if err != nil {
			if !ok || !errors.Is(err, ErrNoMessageID) {
				t.Fatalf("error without a header: %v", err)
			}
			return
		}
		if ok && (id == "" || bytes.ContainsAny([]byte(id), "<>\r\n \t")) {
			t.Fatalf("bad id %q", id)
		}
		nid, out, err := ensureMessageID(b, "example.net")
		if err != nil {
			t.Fatal(err)
		}
		if got, ok2, _ := MessageID(out); ok && got != id || !ok && nid == "" || !ok2 {
			t.Fatalf("round trip: %q %q", got, nid)
		}
	})
}
