package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/imapfailover"
	"github.com/hamail/hamail/mxresolve"
	"github.com/hamail/hamail/smtpclient"
)

// TestWorldCarriesMailFromMXToBothReplicas checks the demo's plumbing on
// its own: DNS sends the client to mx1 through the loopback dialer, the
// delivery step stores what mx1 accepted on imap1 and later imap2 with the
// same UID, and a reader following the mailbox gets it once.
func TestWorldCarriesMailFromMXToBothReplicas(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	w, err := newWorld(50 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	client, err := smtpclient.New(&smtpclient.Options{
		Resolver: mxresolve.New(&mxresolve.Options{Nameservers: []string{w.dns.Addr()}}),
		Dialer:   w.net, MXPort: mxPort,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	rd := newReader()
	pool, err := imapfailover.New(&imapfailover.Options{Replicas: w.imapReplicas(), Dial: rd.wire.dial,
		CommandTimeout: 5 * time.Second, Heartbeat: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- pool.Mailbox("INBOX", &imapfailover.MailboxOptions{DeliverExisting: true}).Watch(watchCtx, rd.handle)
	}()

	const n = 3
	for i := range n {
		body := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nMessage-ID: <world-%d@example.org>\r\nSubject: %d\r\n\r\nhi\r\n", sender, recipient, i, i)
		res, err := client.Send(ctx, &smtpclient.Message{From: sender, To: []smtpclient.Recipient{{Addr: recipient}},
			Body: strings.NewReader(body), Size: int64(len(body))})
		if err != nil || res.Count(smtpclient.Delivered) != 1 {
			t.Fatalf("send %d: %+v, %v", i, res, err)
		}
	}
	for rd.counts().Unique < n {
		select {
		case <-rd.changed:
		case <-ctx.Done():
			t.Fatalf("reader got %d of %d messages", rd.counts().Unique, n)
		}
	}
	if got := len(w.mx[0].srv.Messages()); got != n {
		t.Errorf("mx1 recorded %d messages, want %d (the primary MX)", got, n)
	}
	// imap2 gets the copies after the lag, with the same UIDs.
	for {
		s1, err1 := w.imap.Replica(0).Status("INBOX")
		s2, err2 := w.imap.Replica(1).Status("INBOX")
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if *s2.NumMessages == n {
			if s1.UIDNext != s2.UIDNext || s1.UIDValidity != s2.UIDValidity {
				t.Errorf("replicas differ: %+v vs %+v", s1, s2)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("imap2 has %d messages, want %d", *s2.NumMessages, n)
		}
		time.Sleep(10 * time.Millisecond) // polling a status with a deadline
	}
	c := w.store.counts()
	if c.Unique != n || c.ByHost["mx1.example.com"] != n || c.Err != nil {
		t.Errorf("store counts = %+v", c)
	}
	if rc := rd.counts(); rc.ReadTwice != 0 || rc.Unique != n {
		t.Errorf("reader counts = %+v", rc)
	}
	stopWatch()
	<-watchDone
}
