package smtpclient

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/peers"
	"github.com/hamail/hamail/internal/smtptest"
)

// TestTwoRealPostfixRelays sends through two real Postfix instances sharing
// one tier, stops one, and keeps sending: every message arrives exactly once
// at the next hop.
func TestTwoRealPostfixRelays(t *testing.T) {
	t.Parallel()
	hop := smtptest.NewServer(t, nil)
	pa := peers.StartPostfix(t, peers.PostfixOptions{RelayHost: hop.Addr()})
	pb := peers.StartPostfix(t, peers.PostfixOptions{RelayHost: hop.Addr()})
	c := newTestClient(t, &Options{
		Relays: []Relay{{Name: "postfix-a", Addr: pa.Addr}, {Name: "postfix-b", Addr: pb.Addr}},
		Timeouts: Timeouts{Connect: 2 * time.Second, Greeting: 5 * time.Second, Hello: 5 * time.Second,
			Mail: 5 * time.Second, Rcpt: 5 * time.Second, DataInit: 5 * time.Second, DataBlock: 5 * time.Second,
			DataEnd: 10 * time.Second, Reset: 2 * time.Second, Quit: time.Second},
		Breaker: BreakerOptions{Failures: 1, OpenTimeout: time.Hour},
	})
	used := map[string]int{}
	send := func(i int) {
		t.Helper()
		body := fmt.Sprintf("From: app@example.org\r\nTo: bob@example.com\r\nMessage-ID: <%d.postfix-test@example.org>\r\nSubject: %d\r\n\r\nmessage %d\r\n", i, i, i)
		m := &Message{From: "app@example.org", To: []Recipient{{Addr: "bob@example.com"}}, Body: strings.NewReader(body), Size: int64(len(body))}
		res, err := c.Send(testCtx(t), m)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		rr := res.Recipients[0]
		if rr.Outcome != Delivered {
			t.Fatalf("message %d: %+v", i, rr)
		}
		used[rr.Host]++
	}
	for i := range 6 {
		send(i)
	}
	if used["postfix-a"] == 0 || used["postfix-b"] == 0 {
		t.Fatalf("load not shared inside the tier: %v", used)
	}
	pa.Stop()
	clear(used)
	for i := 6; i < 12; i++ {
		send(i)
	}
	if used["postfix-b"] != 6 {
		t.Fatalf("after stopping postfix-a: %v", used)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	msgs, err := hop.WaitMessages(ctx, 12)
	if err != nil {
		t.Fatalf("next hop got %d of 12 messages: %v", len(hop.Messages()), err)
	}
	seen := map[int]int{}
	for _, m := range msgs {
		var n int
		i := bytes.Index(m.Body, []byte("Message-ID: <"))
		if i < 0 {
			t.Fatalf("no Message-ID in\n%s", m.Body)
		}
		fmt.Sscanf(string(m.Body[i+len("Message-ID: <"):]), "%d.", &n)
		seen[n]++
	}
	for i := range 12 {
		if seen[i] != 1 {
			t.Fatalf("message %d arrived %d times (%v)", i, seen[i], seen)
		}
	}
}
