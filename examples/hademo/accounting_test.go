package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/imapfailover"
	"github.com/hamail/hamail/internal/imaptest"
	"github.com/hamail/hamail/internal/smtptest"
)

// The report's counts come from records; these tests feed the recorders
// directly to show that a duplicate or a loss does show.

func TestReaderCountsMessagesReadTwice(t *testing.T) {
	t.Parallel()
	rd := newReader()
	for _, id := range []string{"a@x", "b@x", "a@x"} {
		if err := rd.handle(context.Background(), &imapfailover.Message{Replica: "imap1", Envelope: &imap.Envelope{MessageID: id}}); err != nil {
			t.Fatal(err)
		}
	}
	c := rd.counts()
	if c.Unique != 2 || c.ReadTwice != 1 || c.ByReplica["imap1"] != 3 {
		t.Errorf("counts = %+v, want 2 distinct, 1 read twice, 3 reads on imap1", c)
	}
	if n := missing(map[string]bool{"a@x": true, "c@x": true}, c.Seen); n != 1 {
		t.Errorf("missing = %d, want 1 (c@x was never read)", n)
	}
}

func TestStoreCountsFirstAcceptanceAndDuplicates(t *testing.T) {
	t.Parallel()
	set := imaptest.NewSet(t, nil)
	s := newMailStore(set, 0)
	defer s.stop()
	msg := func(id string) smtptest.Message {
		return smtptest.Message{Body: []byte("Message-ID: <" + id + ">\r\n\r\nhi\r\n"), Reply: smtp.SMTPError{Code: 250}}
	}
	s.accept("mx1.example.com", msg("a@x"))
	s.accept("mx2.example.com", msg("a@x")) // sent again after a lost reply
	s.accept("relay-1", msg("b@x"))
	lost := msg("c@x")
	lost.Unanswered = true // dropped after the dot: the server never took it
	s.accept("mx1.example.com", lost)
	refused := msg("d@x")
	refused.Reply = smtp.SMTPError{Code: 451}
	s.accept("mx1.example.com", refused)

	c := s.counts()
	if c.Unique != 2 || c.AcceptedTwice != 1 || c.ByHost["mx1.example.com"] != 1 || c.ByHost["relay-1"] != 1 ||
		c.ByHost["mx2.example.com"] != 0 || c.Unanswered != 2 || c.Stored != 2 || c.Err != nil {
		t.Errorf("counts = %+v", c)
	}
	// Stored once each on imap1, whatever the duplicates.
	uids, err := set.Replica(0).SearchMessageID("INBOX", "a@x")
	if err != nil || len(uids) != 1 {
		t.Errorf("a@x stored %d times on imap1 (%v), want once", len(uids), err)
	}
}

func TestTableSaysFailedWhenSomethingIsLost(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	rep := &Report{Sent: 3, Delivered: 3, Read: 2, Lost: 1}
	if err := printTable(&out, &world{}, rep); err != nil {
		t.Fatal(err)
	}
	if rep.OK() || !strings.Contains(out.String(), "FAILED") {
		t.Errorf("a report with a lost message: OK() = %v, table:\n%s", rep.OK(), out.String())
	}
	rep = &Report{Sent: 3, Delivered: 3, Read: 3, ReadTwice: 1}
	if rep.OK() {
		t.Error("a report with a message read twice is OK")
	}
}
