package peers_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/internal/peers"
	"github.com/hamail/hamail/internal/smtptest"
)

func sendVia(t *testing.T, addr, from string, to []string, body string) {
	t.Helper()
	// Plain SMTP: the instances offer no STARTTLS, which smtp.SendMail
	// insists on.
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.SendMail(from, to, strings.NewReader(body)); err != nil {
		t.Fatalf("send via %s: %v", addr, err)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
}

// waitMessages waits until the next hop has received n messages.
func waitMessages(t *testing.T, hop *smtptest.Server, n int) []smtptest.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, err := hop.WaitMessages(ctx, n)
	if err != nil {
		t.Fatalf("waiting for %d messages at the next hop: %v (got %d)", n, err, len(hop.Messages()))
	}
	return msgs
}

func rcpts(m smtptest.Message) []string {
	var to []string
	for _, r := range m.Rcpts {
		to = append(to, r.Addr)
	}
	slices.Sort(to)
	return to
}

func TestPostfixRelaysToNextHop(t *testing.T) {
	t.Parallel()
	hop := smtptest.NewServer(t, nil)
	pf := peers.StartPostfix(t, peers.PostfixOptions{RelayHost: hop.Addr()})

	id := fmt.Sprintf("<%d.relay-test@example.org>", time.Now().UnixNano())
	body := "From: alice@example.org\r\nTo: bob@example.com\r\nMessage-ID: " + id +
		"\r\nSubject: relayed\r\n\r\nHello through a real Postfix.\r\n"
	sendVia(t, pf.Addr, "alice@example.org", []string{"bob@example.com", "carol@example.net"}, body)

	m := waitMessages(t, hop, 1)[0]
	if m.From != "alice@example.org" {
		t.Errorf("MAIL FROM = %q", m.From)
	}
	if want := []string{"bob@example.com", "carol@example.net"}; !slices.Equal(rcpts(m), want) {
		t.Errorf("RCPT TO = %v, want %v", rcpts(m), want)
	}
	if !bytes.Contains(m.Body, []byte("Message-ID: "+id)) || !bytes.Contains(m.Body, []byte("Hello through a real Postfix.")) {
		t.Errorf("relayed message lost content:\n%s", m.Body)
	}
	if !bytes.Contains(m.Body, []byte("Received: from")) {
		t.Errorf("relayed message has no Received header from Postfix:\n%s", m.Body)
	}
}

// A message accepted while the next hop is unreachable waits in the queue
// and is delivered once the relayhost points at a working one; a stopped
// instance refuses connections and comes back on the same address with its
// queue.
func TestPostfixQueuesAndRestarts(t *testing.T) {
	t.Parallel()
	hop := smtptest.NewServer(t, nil)
	hop.Stop() // unreachable at first
	pf := peers.StartPostfix(t, peers.PostfixOptions{RelayHost: hop.Addr()})

	sendVia(t, pf.Addr, "alice@example.org", []string{"dave@example.com"}, "Subject: queued\r\n\r\nwaiting\r\n")
	deadline := time.Now().Add(10 * time.Second)
	for pf.QueueLen() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("accepted message never showed up in the queue")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Stop with the message still queued, start again: it survives.
	addr := pf.Addr
	pf.Stop()
	if pf.Running() {
		t.Fatal("Running() after Stop")
	}
	if _, err := smtp.Dial(addr); err == nil {
		t.Fatal("stopped Postfix still accepts connections")
	}
	pf.Start()
	if pf.Addr != addr {
		t.Fatalf("address changed across restart: %s -> %s", addr, pf.Addr)
	}

	if err := hop.Start(); err != nil {
		t.Fatal(err)
	}
	pf.Flush()
	if got := rcpts(waitMessages(t, hop, 1)[0]); !slices.Equal(got, []string{"dave@example.com"}) {
		t.Fatalf("RCPT TO = %v", got)
	}

	// A new next hop via SetRelayHost.
	hop2 := smtptest.NewServer(t, nil)
	pf.SetRelayHost(hop2.Addr())
	sendVia(t, pf.Addr, "alice@example.org", []string{"erin@example.com"}, "Subject: again\r\n\r\nafter restart\r\n")
	if got := rcpts(waitMessages(t, hop2, 1)[0]); !slices.Equal(got, []string{"erin@example.com"}) {
		t.Fatalf("RCPT TO at the new next hop = %v", got)
	}
}

// Instances started at the same time each get their entry in the default
// main.cf (edited under a lock) and relay independently.
func TestPostfixInstancesInParallel(t *testing.T) {
	t.Parallel()
	hop := smtptest.NewServer(t, nil)
	for i := range 4 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			pf := peers.StartPostfix(t, peers.PostfixOptions{RelayHost: hop.Addr()})
			to := fmt.Sprintf("user%d@example.com", i)
			sendVia(t, pf.Addr, "alice@example.org", []string{to}, "Subject: parallel\r\n\r\nx\r\n")
			// Wait here: the instance stops when this subtest ends.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := hop.Wait(ctx, func(smtptest.Stats) bool {
				for _, m := range hop.Messages() {
					if slices.Contains(rcpts(m), to) {
						return true
					}
				}
				return false
			})
			if err != nil {
				t.Fatalf("message for %s never reached the next hop: %v", to, err)
			}
		})
	}
}
