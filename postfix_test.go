package hamail

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/hamail/hamail/internal/peers"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/queue"
)

// TestRealPostfixRelay queues mail while the relay, a real Postfix, is
// down, then starts it: every message reaches the next hop exactly once,
// with the DSN parameters (ENVID, NOTIFY, ORCPT) the Mailer sent, which
// Postfix passes on only if it parsed them.
func TestRealPostfixRelay(t *testing.T) {
	t.Parallel()
	hop := smtptest.NewServer(t, nil)
	pf := peers.StartPostfix(t, peers.PostfixOptions{RelayHost: hop.Addr()})
	pf.Stop()
	m := open(t, &Options{Relays: relayOf(&fakeAddr{pf.Addr}), SMTP: testSMTP(), Dir: t.TempDir(), Runner: testRunner()})
	const n = 5
	for i := range n {
		_, err := m.Send(waitCtx(t), &Message{
			From:       "app@example.org",
			Recipients: []queue.Recipient{{Address: "bob@example.com", Notify: queue.NotifyFailure, ORcpt: "rfc822;robert@old.example"}},
			EnvID:      fmt.Sprintf("env-%d", i),
			Body:       strings.NewReader(fmt.Sprintf("Message-ID: <%d.postfix@example.org>\nSubject: %d\n\nmessage %d\n", i, i, i)),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if st, err := m.Stats(waitCtx(t)); err != nil || st.Items != n {
		t.Fatalf("queued %+v %v, want %d items", st, err, n)
	}
	pf.Start()
	msgs, err := hop.WaitMessages(waitCtx(t), n)
	if err != nil {
		t.Fatalf("next hop got %d of %d: %v\n%s", len(hop.Messages()), n, err, pf.Log())
	}
	waitEmpty(t, m.Store())
	seen := map[string]int{}
	for _, msg := range msgs {
		i := bytes.Index(msg.Body, []byte("Message-ID: <"))
		if i < 0 {
			t.Fatalf("no Message-ID:\n%s", msg.Body)
		}
		var k int
		fmt.Sscanf(string(msg.Body[i+len("Message-ID: <"):]), "%d.", &k)
		seen[fmt.Sprint(k)]++
		if msg.MailOpts.EnvelopeID != fmt.Sprintf("env-%d", k) {
			t.Errorf("message %d: ENVID %q", k, msg.MailOpts.EnvelopeID)
		}
		if len(msg.Rcpts) != 1 || msg.Rcpts[0].Opts.OriginalRecipient != "robert@old.example" || len(msg.Rcpts[0].Opts.Notify) != 1 {
			t.Errorf("message %d: RCPT %+v", k, msg.Rcpts)
		}
		if !bytes.Contains(msg.Body, []byte("\r\nSubject: ")) {
			t.Errorf("message %d: lines not CRLF:\n%q", k, msg.Body)
		}
	}
	for i := range n {
		if seen[fmt.Sprint(i)] != 1 {
			t.Fatalf("message %d arrived %d times (%v)", i, seen[fmt.Sprint(i)], seen)
		}
	}
}

// fakeAddr lets relayOf name a server by its address alone.
type fakeAddr struct{ addr string }

func (f *fakeAddr) Addr() string { return f.addr }
