package main

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/internal/peers"
)

// TestPostfixRelaysThroughRelayd: a real Postfix, as a client of a trusted
// network, relays into relayd (pipelining its commands, RFC 2920), and
// relayd delivers to the next hop. Postfix is the most common client a
// submission server meets. (The Postfix instances of internal/peers run
// without tlsmgr, so this hop is in clear; STARTTLS is tested with go-smtp.)
func TestPostfixRelaysThroughRelayd(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	f := newFixture(t)
	p := startInProcess(t, f.args(hop.Addr(), "-trusted-networks", "127.0.0.0/8"))
	pf := peers.StartPostfix(t, peers.PostfixOptions{
		RelayHost: p.smtp,
		Config:    map[string]string{"smtp_tls_security_level": "none"},
	})

	c, err := smtp.Dial(pf.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMail("app@example.org", []string{"bob@example.net"}, strings.NewReader(message("via postfix"))); err != nil {
		t.Fatalf("submitting to Postfix: %v", err)
	}
	m := waitMessages(t, hop, 1, 60*time.Second)[0]
	body := string(m.Body)
	if m.From != "app@example.org" || len(m.Rcpts) != 1 || m.Rcpts[0].Addr != "bob@example.net" {
		t.Errorf("envelope at the next hop: %q → %v", m.From, m.Rcpts)
	}
	// relayd's trace field says the hop from Postfix was neither
	// encrypted nor authenticated (RFC 3848 ESMTP), above Postfix's own.
	first, _, _ := strings.Cut(body, "\r\n\r\n")
	if !strings.HasPrefix(first, "Received: from ") || !strings.Contains(first, "(relayd) with ESMTP id") {
		t.Errorf("relayd's Received field missing or wrong:\n%s", first)
	}
	if !strings.Contains(body, "Subject: via postfix\r\n") {
		t.Errorf("message changed:\n%s", body)
	}
}
