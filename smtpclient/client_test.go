package smtpclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/internal/faultproxy"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/internal/syncbuf"
	"github.com/sony/gobreaker/v2"
)

// testTimeouts keep failing tests short; the servers are on loopback.
// The greeting timeout is short so that a black-holed relay is given up
// quickly; the others are generous because the race detector and parallel
// tests slow the in-process servers down.
var testTimeouts = Timeouts{
	Connect: 5 * time.Second, Greeting: time.Second, Hello: 10 * time.Second,
	StartTLS: 10 * time.Second, Auth: 10 * time.Second, Mail: 10 * time.Second, Rcpt: 10 * time.Second,
	DataInit: 10 * time.Second, DataBlock: 10 * time.Second, DataEnd: 15 * time.Second,
	Reset: 10 * time.Second, Quit: time.Second,
}

func newTestClient(t testing.TB, o *Options) *Client {
	t.Helper()
	if o.Timeouts == (Timeouts{}) {
		o.Timeouts = testTimeouts
	}
	if o.LocalName == "" {
		o.LocalName = "client.example.org"
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func server(t testing.TB, caps *smtptest.Capabilities) *smtptest.Server {
	return smtptest.NewServer(t, &smtptest.Options{Capabilities: caps, Users: map[string]string{"alice": "s3cret-pa55"}})
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustSend(t *testing.T, c *Client, m *Message) *Result {
	t.Helper()
	res, err := c.Send(testCtx(t), m)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	return res
}

func TestSendThroughRelay(t *testing.T) {
	t.Parallel()
	srv := server(t, nil)
	var transcript syncbuf.Buffer
	var mu sync.Mutex // guards tlsSeen
	var tlsSeen int
	c := newTestClient(t, &Options{
		Relays:     []Relay{{Name: "relay1", Addr: srv.Addr(), TLS: TLSVerify, TLSConfig: srv.ClientTLSConfig("")}},
		Transcript: &transcript,
		Hooks:      &Hooks{TLS: func(HostInfo, tls.ConnectionState) { mu.Lock(); tlsSeen++; mu.Unlock() }},
	})
	m := testMessage("bob@example.com", "carol@example.net")
	m.EnvelopeID = "env-1"
	m.Return = smtp.DSNReturnHeaders
	m.To[0].Notify = []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed}
	m.To[0].OriginalRecipient = "bob@example.com"
	res := mustSend(t, c, m)
	for _, rr := range res.Recipients {
		if rr.Outcome != Delivered || rr.Host != "relay1" || rr.Reply == nil || rr.Reply.Code != 250 || rr.Err != nil || rr.Attempts != 1 {
			t.Fatalf("%+v", rr)
		}
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	got := msgs[0]
	if got.From != "sender@example.org" || len(got.Rcpts) != 2 || got.TLS == nil || !got.Pipelined {
		t.Fatalf("message %+v", got)
	}
	if got.MailOpts.EnvelopeID != "env-1" || got.MailOpts.Return != smtp.DSNReturnHeaders || got.MailOpts.Size != m.Size {
		t.Fatalf("MAIL options %+v", got.MailOpts)
	}
	if n := got.Rcpts[0].Opts.Notify; len(n) != 2 || got.Rcpts[0].Opts.OriginalRecipient != "bob@example.com" {
		t.Fatalf("RCPT options %+v", got.Rcpts[0].Opts)
	}
	if string(got.Body) != "Subject: test\r\n\r\nhello\r\n" {
		t.Fatalf("body %q", got.Body)
	}
	mu.Lock()
	defer mu.Unlock()
	if tlsSeen != 1 || !strings.Contains(transcript.String(), "relay1 C: RCPT TO:<carol@example.net>") {
		t.Fatalf("tls hooks %d, transcript:\n%s", tlsSeen, transcript.String())
	}
}

func twoRelays(a, b string) []Relay {
	return []Relay{{Name: "primary", Addr: a, Priority: 1}, {Name: "secondary", Addr: b, Priority: 2}}
}

func TestPrimaryRelayDownUsesSecondaryTier(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	c := newTestClient(t, &Options{Relays: twoRelays(a.Addr(), b.Addr())})
	rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
	if rr.Host != "primary" {
		t.Fatalf("healthy primary not used: %+v", rr)
	}
	a.Stop()
	rr = mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
	if rr.Outcome != Delivered || rr.Host != "secondary" || rr.Attempts != 2 {
		t.Fatalf("%+v", rr)
	}
	if len(b.Messages()) != 1 {
		t.Fatalf("secondary got %d messages", len(b.Messages()))
	}
}

func TestBlackHoledRelay(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	p := faultproxy.Start(t, a.Addr())
	if err := p.SetMode(faultproxy.BlackHole); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var opened bool
	c := newTestClient(t, &Options{
		Relays:  twoRelays(p.Addr(), b.Addr()),
		Breaker: BreakerOptions{Failures: 2, OpenTimeout: time.Hour},
		Hooks: &Hooks{BreakerStateChange: func(e BreakerEvent) {
			mu.Lock()
			opened = opened || (e.Host == "primary" && e.To == gobreaker.StateOpen)
			mu.Unlock()
		}},
	})
	for i := range 2 {
		res := mustSend(t, c, testMessage("bob@example.com"))
		rr := res.Recipients[0]
		if rr.Outcome != Delivered || rr.Host != "secondary" || rr.Attempts != 2 {
			t.Fatalf("send %d: %+v", i, rr)
		}
	}
	mu.Lock()
	if !opened {
		t.Fatal("breaker did not open after 2 greeting timeouts")
	}
	mu.Unlock()
	// Open breaker: the black hole is not even connected to any more.
	before := p.Accepted()
	for range 5 {
		rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
		if rr.Host != "secondary" || rr.Attempts != 1 {
			t.Fatalf("%+v", rr)
		}
	}
	if p.Accepted() != before {
		t.Fatalf("connected to a host with an open breaker (%d -> %d)", before, p.Accepted())
	}
	if len(a.Messages()) != 0 || len(b.Messages()) != 7 {
		t.Fatalf("primary %d, secondary %d messages", len(a.Messages()), len(b.Messages()))
	}
}

func TestRelayKilledMidData(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	a.SetFault(smtptest.StageBody, smtptest.Fault{Drop: true})
	c := newTestClient(t, &Options{Relays: twoRelays(a.Addr(), b.Addr())})
	m := testMessage("bob@example.com", "carol@example.com")
	// Larger than the socket buffers, so that the drop is seen while the
	// body is still being written, before the final dot.
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"), 1<<18)
	m.Body, m.Size = bytes.NewReader(body), int64(len(body))
	res := mustSend(t, c, m)
	for _, rr := range res.Recipients {
		if rr.Outcome != Delivered || rr.Host != "secondary" || rr.Attempts != 2 {
			t.Fatalf("%+v", rr)
		}
	}
	if len(a.Messages()) != 0 {
		t.Fatal("primary completed a message it was killed in")
	}
	if msgs := b.Messages(); len(msgs) != 1 || len(msgs[0].Rcpts) != 2 {
		t.Fatalf("secondary: %+v", msgs)
	}
}

func TestRelayKilledAfterFinalDot(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	a.SetFault(smtptest.StageDataEnd, smtptest.Fault{Drop: true})
	c := newTestClient(t, &Options{Relays: twoRelays(a.Addr(), b.Addr())})
	res := mustSend(t, c, testMessage("bob@example.com"))
	rr := res.Recipients[0]
	if rr.Outcome != Unknown || rr.Host != "primary" || rr.Attempts != 1 {
		t.Fatalf("%+v", rr)
	}
	var e *Error
	if !errors.As(rr.Err, &e) || e.Stage != StageDataEnd || !e.Temporary() {
		t.Fatalf("error %#v", rr.Err)
	}
	if msgs := a.Messages(); len(msgs) != 1 || !msgs[0].Unanswered {
		t.Fatalf("primary: %+v", msgs)
	}
	if len(b.Messages()) != 0 {
		t.Fatal("a possibly delivered message was sent again in the same call")
	}
}

func TestPartialRecipientRejection(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	a.SetRcptFault("nobody@example.com", smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
	a.SetRcptFault("grey@example.com", smtptest.Reply(451, smtp.EnhancedCode{4, 7, 1}, "try later"))
	c := newTestClient(t, &Options{Relays: twoRelays(a.Addr(), b.Addr()), Breaker: BreakerOptions{Failures: 1}})
	res := mustSend(t, c, testMessage("bob@example.com", "nobody@example.com", "grey@example.com"))
	r := res.Recipients
	if r[0].Outcome != Delivered || r[0].Host != "primary" {
		t.Fatalf("bob: %+v", r[0])
	}
	if r[1].Outcome != Permanent || r[1].Reply == nil || r[1].Reply.Code != 550 || r[1].Reply.Enhanced != (smtp.EnhancedCode{5, 1, 1}) || r[1].Attempts != 1 {
		t.Fatalf("nobody: %+v", r[1])
	}
	if r[2].Outcome != Delivered || r[2].Host != "secondary" || r[2].Attempts != 2 {
		t.Fatalf("grey: %+v", r[2])
	}
	if msgs := b.Messages(); len(msgs) != 1 || len(msgs[0].Rcpts) != 1 || msgs[0].Rcpts[0].Addr != "grey@example.com" {
		t.Fatalf("secondary got %+v", msgs)
	}
	if s := c.br.state("primary"); s != gobreaker.StateClosed {
		t.Fatalf("recipient rejections moved the breaker to %v", s)
	}
}

func Test421OnPooledConnection(t *testing.T) {
	for _, stage := range []smtptest.Stage{smtptest.StageRset, smtptest.StageMail} {
		t.Run(stage.String(), func(t *testing.T) {
			t.Parallel()
			a := server(t, nil)
			c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}, Pool: PoolOptions{IdleTimeout: time.Minute}})
			mustSend(t, c, testMessage("bob@example.com"))
			f := smtptest.Reply(421, smtp.EnhancedCode{4, 4, 2}, "idle too long")
			f.Hangup, f.Times = true, 1
			a.SetFault(stage, f)
			rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
			if rr.Outcome != Delivered || rr.Attempts != 1 {
				t.Fatalf("%+v", rr)
			}
			if n := a.Stats().Connections; n != 2 {
				t.Fatalf("%d connections, want 2 (one transparent reconnect)", n)
			}
			if len(a.Messages()) != 2 {
				t.Fatalf("%d messages", len(a.Messages()))
			}
			if s := c.Stats().Hosts["a"]; s.Dials != 2 || s.Reuses != 1 {
				t.Fatalf("pool %+v", s)
			}
		})
	}
}

func TestPoolReusesConnections(t *testing.T) {
	t.Parallel()
	a := server(t, nil)
	c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}, Pool: PoolOptions{IdleTimeout: time.Minute}})
	for range 5 {
		mustSend(t, c, testMessage("bob@example.com"))
	}
	if st := a.Stats(); st.Connections != 1 || st.Messages != 5 || st.Rset != 4 {
		t.Fatalf("server %+v", st)
	}
	c.Close()
	ctx := testCtx(t)
	if _, err := a.Wait(ctx, func(s smtptest.Stats) bool { return s.Quit == 1 && s.Open == 0 }); err != nil {
		t.Fatalf("Close did not QUIT the pooled connection: %v", err)
	}
	if _, err := c.Send(ctx, testMessage("bob@example.com")); err == nil {
		t.Fatal("Send after Close succeeded")
	}
}

func TestSTARTTLSStrippedUnderEncrypt(t *testing.T) {
	t.Parallel()
	caps := smtptest.DefaultCapabilities()
	caps.StartTLS = false
	a := server(t, &caps)
	c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr(), TLS: TLSEncrypt}}})
	res, err := c.Send(testCtx(t), testMessage("bob@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	rr := res.Recipients[0]
	if rr.Outcome != Temporary || !errors.Is(rr.Err, ErrTLSRequired) {
		t.Fatalf("%+v", rr)
	}
	if st := a.Stats(); st.Mail != 0 || st.Messages != 0 {
		t.Fatalf("sent in clear under encrypt: %+v", st)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	auth := &Auth{Mechanism: AuthPlain, Username: "alice", Password: "s3cret-pa55"}
	t.Run("refused in clear", func(t *testing.T) {
		t.Parallel()
		caps := smtptest.DefaultCapabilities()
		caps.StartTLS = false
		caps.Auth = []string{"PLAIN", "LOGIN"}
		a := server(t, &caps)
		c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr(), Auth: auth}}})
		rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
		if rr.Outcome != Temporary || !errors.Is(rr.Err, ErrAuthInClear) {
			t.Fatalf("%+v", rr)
		}
		if st := a.Stats(); st.Auth != 0 || st.Mail != 0 {
			t.Fatalf("server %+v", st)
		}
	})
	t.Run("allowed in clear", func(t *testing.T) {
		t.Parallel()
		caps := smtptest.DefaultCapabilities()
		caps.StartTLS = false
		caps.Auth = []string{"PLAIN"}
		a := server(t, &caps)
		c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr(), Auth: auth, AllowInsecureAuth: true}}})
		rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
		if rr.Outcome != Delivered || a.Messages()[0].AuthUser != "alice" {
			t.Fatalf("%+v", rr)
		}
	})
	for _, mech := range []AuthMechanism{AuthPlain, AuthLogin} {
		t.Run(string(mech)+" over STARTTLS", func(t *testing.T) {
			t.Parallel()
			caps := smtptest.DefaultCapabilities()
			caps.Auth = []string{"PLAIN", "LOGIN"}
			caps.AuthTLSOnly = true
			a := server(t, &caps)
			var buf syncbuf.Buffer
			au := *auth
			au.Mechanism = mech
			c := newTestClient(t, &Options{
				Relays:     []Relay{{Name: "a", Addr: a.Addr(), Auth: &au, TLS: TLSVerify, TLSConfig: a.ClientTLSConfig("")}},
				Transcript: &buf,
			})
			rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
			if rr.Outcome != Delivered || a.Messages()[0].AuthUser != "alice" || a.Messages()[0].TLS == nil {
				t.Fatalf("%+v", rr)
			}
			tr := buf.String()
			if !strings.Contains(tr, "AUTH") || strings.Contains(tr, "s3cret") || strings.Contains(tr, "czNjcmV0") {
				t.Fatalf("transcript shows credentials or no AUTH:\n%s", tr)
			}
		})
	}
	t.Run("wrong password tries the next relay", func(t *testing.T) {
		t.Parallel()
		caps := smtptest.DefaultCapabilities()
		caps.Auth = []string{"PLAIN"}
		a, b := server(t, &caps), server(t, nil)
		bad := *auth
		bad.Password = "wrong"
		relays := twoRelays(a.Addr(), b.Addr())
		relays[0].Auth = &bad
		c := newTestClient(t, &Options{Relays: relays})
		rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
		if rr.Outcome != Delivered || rr.Host != "secondary" {
			t.Fatalf("%+v", rr)
		}
	})
}

func TestSizeAndSMTPUTF8Policy(t *testing.T) {
	t.Parallel()
	caps := smtptest.DefaultCapabilities()
	caps.MaxSize = 10
	caps.SMTPUTF8 = false
	a := server(t, &caps)
	c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}})
	rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
	if rr.Outcome != Permanent || rr.Reply == nil || rr.Reply.Code != 552 || rr.Reply.Enhanced != (smtp.EnhancedCode{5, 3, 4}) {
		t.Fatalf("too big: %+v", rr)
	}
	caps.MaxSize = 0
	a.SetCapabilities(caps)
	rr = mustSend(t, c, testMessage("josé@example.com")).Recipients[0]
	if rr.Outcome != Permanent || !errors.Is(rr.Err, ErrSMTPUTF8Required) {
		t.Fatalf("utf8: %+v", rr)
	}
	if st := a.Stats(); st.Mail != 0 {
		t.Fatalf("MAIL sent although the server could not take the message: %+v", st)
	}
}

func TestSendValidatesBeforeIO(t *testing.T) {
	t.Parallel()
	a := server(t, nil)
	c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}})
	bad := []*Message{
		testMessage(),
		testMessage("bob@example.com\r\nRSET"),
		{From: "x@example.org", To: []Recipient{{Addr: "bob@example.com"}}},
		testMessage("bob@example.com", "bob@EXAMPLE.com"),
		func() *Message { m := testMessage("bob@example.com"); m.From = "a b@example.org"; return m }(),
		func() *Message { m := testMessage("bob@example.com"); m.EnvelopeID = "x\r\ny"; return m }(),
		func() *Message {
			m := testMessage("bob@example.com")
			m.To[0].Notify = []smtp.DSNNotify{smtp.DSNNotifyNever, smtp.DSNNotifySuccess}
			return m
		}(),
	}
	for i, m := range bad {
		res, err := c.Send(testCtx(t), m)
		if err == nil || res != nil {
			t.Errorf("message %d accepted: %v", i, err)
		}
	}
	if st := a.Stats(); st.Connections != 0 {
		t.Fatalf("invalid input caused I/O: %+v", st)
	}
}

func TestSendContextCancelled(t *testing.T) {
	t.Parallel()
	a := server(t, nil)
	a.SetFault(smtptest.StageDataEnd, smtptest.Fault{Delay: time.Minute})
	c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}, Breaker: BreakerOptions{Failures: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	var res *Result
	var err error
	go func() {
		defer close(done)
		res, err = c.Send(ctx, testMessage("bob@example.com"))
	}()
	wctx := testCtx(t)
	if _, werr := a.Wait(wctx, func(s smtptest.Stats) bool { return s.Messages == 1 }); werr != nil {
		t.Fatal(werr)
	}
	cancel()
	select {
	case <-done:
	case <-wctx.Done():
		t.Fatal("Send did not return after cancel")
	}
	if !errors.Is(err, context.Canceled) || res == nil || res.Recipients[0].Outcome != Unknown {
		t.Fatalf("%+v %v", res, err)
	}
	if s := c.br.state("a"); s != gobreaker.StateClosed {
		t.Fatalf("cancellation counted against the host: %v", s)
	}
	// Cancelling closed the connection: the server sees it go.
	if werr := a.WaitIdle(wctx); werr != nil {
		t.Fatalf("connection left open after cancel: %v", werr)
	}
	if st := c.Stats().Hosts["a"]; st.Open != 0 || st.Idle != 0 {
		t.Fatalf("pool keeps the cancelled connection: %+v", st)
	}
}
