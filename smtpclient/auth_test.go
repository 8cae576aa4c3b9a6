package smtpclient

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/hamail/hamail/internal/syncbuf"
)

func TestSASLClients(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tok := func(context.Context) (string, error) { return "ya29.token", nil }
	tests := []struct {
		a    Auth
		mech string
		ir   string
	}{
		{Auth{Mechanism: AuthPlain, Username: "u", Password: "p"}, "PLAIN", "\x00u\x00p"},
		{Auth{Mechanism: AuthXOAUTH2, Username: "u@example.org", Token: tok}, "XOAUTH2", "user=u@example.org\x01auth=Bearer ya29.token\x01\x01"},
		{Auth{Mechanism: AuthOAuthBearer, Username: "u@example.org", Token: tok}, "OAUTHBEARER", "n,a=u@example.org,\x01host=smtp.example.org\x01port=587\x01auth=Bearer ya29.token\x01\x01"},
	}
	for _, tt := range tests {
		c, err := saslClient(ctx, &tt.a, "smtp.example.org:587")
		if err != nil {
			t.Fatal(err)
		}
		mech, ir, err := c.Start()
		if err != nil || mech != tt.mech || string(ir) != tt.ir {
			t.Errorf("%s: Start() = %q, %q, %v", tt.a.Mechanism, mech, ir, err)
		}
	}
	boom := errors.New("token endpoint down")
	_, err := saslClient(ctx, &Auth{Mechanism: AuthXOAUTH2, Username: "u", Token: func(context.Context) (string, error) { return "", boom }}, "h:1")
	if !errors.Is(err, boom) {
		t.Fatalf("token error: %v", err)
	}
	_, err = saslClient(ctx, &Auth{Mechanism: AuthXOAUTH2, Username: "u", Token: func(context.Context) (string, error) { return "a\r\nQUIT", nil }}, "h:1")
	if err == nil {
		t.Fatal("token with CRLF accepted")
	}
}

// TestOAuthRefusedTokenEndToEnd plays a provider that refuses a token the
// way XOAUTH2 and OAUTHBEARER (RFC 7628 §3.2.2) do: a 334 JSON error
// challenge, the client's dummy answer, then 535. The relay is given up for
// this message without counting against it, the next relay delivers, and
// the token never reaches the transcript.
func TestOAuthRefusedTokenEndToEnd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mech   AuthMechanism
		ir     string // the initial response the provider must see
		answer string // the client's answer to the error challenge, as sent
	}{
		{AuthXOAUTH2, "user=app@example.org\x01auth=Bearer ya29.expired-token\x01\x01", ""},
		{AuthOAuthBearer, "n,a=app@example.org,\x01host=127.0.0.1\x01port=PORT\x01auth=Bearer ya29.expired-token\x01\x01", "AQ=="},
	}
	for _, tc := range tests {
		t.Run(string(tc.mech), func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			got := make(chan []string, 1)
			go func() {
				nc, err := ln.Accept()
				ln.Close()
				if err != nil {
					got <- nil
					return
				}
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(30 * time.Second))
				r := bufio.NewReader(nc)
				var lines []string
				read := func() {
					l, _ := r.ReadString('\n')
					lines = append(lines, strings.TrimRight(l, "\r\n"))
				}
				io.WriteString(nc, "220 smtp.provider.example ESMTP\r\n")
				read() // EHLO
				io.WriteString(nc, "250-smtp.provider.example\r\n250-AUTH XOAUTH2 OAUTHBEARER\r\n250 8BITMIME\r\n")
				read() // AUTH <mechanism> <initial response>
				io.WriteString(nc, "334 "+base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token","schemes":"bearer","scope":"https://mail.example/"}`))+"\r\n")
				read() // the dummy answer
				io.WriteString(nc, "535 5.7.8 Username and Password not accepted\r\n")
				read() // QUIT
				io.WriteString(nc, "221 bye\r\n")
				got <- lines
			}()
			b := server(t, nil)
			var tr syncbuf.Buffer
			c := newTestClient(t, &Options{
				Relays: []Relay{
					{Name: "provider", Addr: ln.Addr().String(), Priority: 1, TLS: TLSNone, AllowInsecureAuth: true,
						Auth: &Auth{Mechanism: tc.mech, Username: "app@example.org", Token: func(context.Context) (string, error) { return "ya29.expired-token", nil }}},
					{Name: "backup", Addr: b.Addr(), Priority: 2},
				},
				Breaker:    BreakerOptions{Failures: 1},
				Transcript: &tr,
				Hooks: &Hooks{AttemptDone: func(a Attempt) {
					var e *Error
					if a.Host.Name == "provider" && (!errors.As(a.Err, &e) || e.Reply == nil || e.Reply.Code != 535) {
						t.Errorf("provider attempt ended with %v, want the server's 535", a.Err)
					}
				}},
			})
			rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
			if rr.Outcome != Delivered || rr.Host != "backup" {
				t.Fatalf("%+v", rr)
			}
			var lines []string
			select {
			case lines = <-got:
			case <-time.After(30 * time.Second):
				t.Fatal("the provider's session did not end")
			}
			if len(lines) < 3 {
				t.Fatalf("provider saw %q", lines)
			}
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			ir := strings.TrimPrefix(lines[1], "AUTH "+string(tc.mech)+" ")
			dec, err := base64.StdEncoding.DecodeString(ir)
			if err != nil || string(dec) != strings.Replace(tc.ir, "PORT", port, 1) || lines[2] != tc.answer {
				t.Fatalf("provider saw %q (initial response %q)", lines, dec)
			}
			if st := c.br.state("provider"); st != gobreaker.StateClosed {
				t.Fatalf("refused credentials counted against the relay: %v", st)
			}
			if l := tr.String(); strings.Contains(l, "ya29") || strings.Contains(l, ir) {
				t.Fatalf("transcript shows the token:\n%s", l)
			}
		})
	}
}

// TestOAuthExchangeCancelled: a provider that sends a second challenge
// after the client's answer to its error challenge leaves the mechanism
// nothing to say; the client cancels the exchange with "*" (RFC 4954 §4),
// the relay is given up for this message without counting against it, and
// the next relay delivers.
func TestOAuthExchangeCancelled(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan []string, 1)
	go func() {
		nc, err := ln.Accept()
		ln.Close()
		if err != nil {
			got <- nil
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReader(nc)
		var lines []string
		read := func() {
			l, _ := r.ReadString('\n')
			lines = append(lines, strings.TrimRight(l, "\r\n"))
		}
		challenge := "334 " + base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`)) + "\r\n"
		io.WriteString(nc, "220 smtp.provider.example ESMTP\r\n")
		read() // EHLO
		io.WriteString(nc, "250-smtp.provider.example\r\n250 AUTH OAUTHBEARER\r\n")
		read() // AUTH OAUTHBEARER <initial response>
		io.WriteString(nc, challenge)
		read() // the %x01 answer
		io.WriteString(nc, challenge)
		read() // the client's "*"
		io.WriteString(nc, "501 5.7.0 Authentication cancelled\r\n")
		read() // QUIT
		io.WriteString(nc, "221 bye\r\n")
		got <- lines
	}()
	b := server(t, nil)
	var mu sync.Mutex
	var providerErr error
	c := newTestClient(t, &Options{
		Relays: []Relay{
			{Name: "provider", Addr: ln.Addr().String(), Priority: 1, TLS: TLSNone, AllowInsecureAuth: true,
				Auth: &Auth{Mechanism: AuthOAuthBearer, Username: "app@example.org", Token: func(context.Context) (string, error) { return "ya29.token", nil }}},
			{Name: "backup", Addr: b.Addr(), Priority: 2},
		},
		Breaker: BreakerOptions{Failures: 1},
		Hooks: &Hooks{AttemptDone: func(a Attempt) {
			if a.Host.Name == "provider" {
				mu.Lock()
				providerErr = a.Err
				mu.Unlock()
			}
		}},
	})
	rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
	if rr.Outcome != Delivered || rr.Host != "backup" || rr.Attempts != 2 {
		t.Fatalf("%+v", rr)
	}
	mu.Lock()
	var e *Error
	if !errors.As(providerErr, &e) || e.Stage != StageAuth || !errors.Is(providerErr, errAuthExchange) {
		t.Errorf("provider attempt ended with %v, want a failed SASL exchange at AUTH", providerErr)
	}
	mu.Unlock()
	var lines []string
	select {
	case lines = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("the provider's session did not end")
	}
	if len(lines) < 4 || lines[2] != "AQ==" || lines[3] != "*" {
		t.Fatalf("provider saw %q, want the %%x01 answer then \"*\"", lines)
	}
	if st := c.br.state("provider"); st != gobreaker.StateClosed {
		t.Fatalf("a failed SASL exchange counted against the relay: %v", st)
	}
}
