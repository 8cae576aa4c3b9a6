package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/peers"
	"github.com/hamail/hamail/internal/smtptest"
)

// TestThroughPostfix: hasend hands a -t message to a real Postfix relay,
// which delivers it to the next hop with the Bcc recipient and without the
// Bcc field.
func TestThroughPostfix(t *testing.T) {
	t.Parallel()
	hop := smtptest.NewServer(t, &smtptest.Options{Domain: "next-hop.example.test"})
	pf := peers.StartPostfix(t, peers.PostfixOptions{RelayHost: hop.Addr()})
	environ := map[string]string{"HASEND_RELAY": pf.Addr, "HASEND_TLS": "may", "HASEND_DOMAIN": "host.example.org", "USER": "cron"}
	r := runHasend(t, []string{"-t", "-i"}, environ, "To: ops@example.org\nBcc: audit@example.org\nSubject: via postfix\n\nok\n.\n")
	if r.code != exOK {
		t.Fatalf("exit %d, stderr: %s", r.code, r.stderr)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	msgs, err := hop.WaitMessages(ctx, 1)
	if err != nil {
		t.Fatalf("nothing arrived through Postfix: %v\n%s", err, pf.Log())
	}
	m := msgs[0]
	got := rcptAddrs(m)
	slices.Sort(got) // Postfix orders recipients its own way
	if !slices.Equal(got, []string{"audit@example.org", "ops@example.org"}) || m.From != "cron@host.example.org" {
		t.Errorf("through Postfix: from %q to %q", m.From, got)
	}
	if body := string(m.Body); strings.Contains(body, "audit@") || !strings.Contains(body, "\r\n\r\nok\r\n.\r\n") {
		t.Errorf("message through Postfix:\n%s", body)
	}
}
