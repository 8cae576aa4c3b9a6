package smtpwire

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/internal/syncbuf"
)

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t testing.TB, addr string, opts *Options) *Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if opts == nil {
		opts = &Options{}
	}
	if opts.LocalName == "" {
		opts.LocalName = "client.example.org"
	}
	c, err := NewConn(testCtx(t), nc, opts)
	if err != nil {
		t.Fatalf("NewConn: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func rcpts(addrs ...string) []Recipient {
	out := make([]Recipient, len(addrs))
	for i, a := range addrs {
		out[i] = Recipient{Addr: a}
	}
	return out
}

func capsWith(pipelining bool) *smtptest.Capabilities {
	caps := smtptest.DefaultCapabilities()
	caps.Pipelining = pipelining
	return &caps
}

func wantReplyErr(t *testing.T, err error, code int) *smtp.SMTPError {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != code {
		t.Fatalf("got %v, want an SMTP reply %d", err, code)
	}
	return se
}

func wantConnErr(t *testing.T, err error, stage Stage) *ConnError {
	t.Helper()
	var ce *ConnError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v (%T), want *ConnError at %s", err, err, stage)
	}
	if ce.Stage != stage {
		t.Fatalf("ConnError at %s, want %s: %v", ce.Stage, stage, err)
	}
	return ce
}

func TestSendPipelinedAndLockstep(t *testing.T) {
	t.Parallel()
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			t.Parallel()
			s := smtptest.NewServer(t, &smtptest.Options{Capabilities: capsWith(pipelining)})
			var tr syncbuf.Buffer
			c := connect(t, s.Addr(), &Options{Transcript: &tr})
			body := "Subject: test\n\n.hidden dot\nlast line without newline"
			res, err := c.Send(testCtx(t), "sender@example.org",
				&smtp.MailOptions{Body: smtp.Body8BitMIME, Size: int64(len(body)), EnvelopeID: "id+1"},
				[]Recipient{{Addr: "a@example.net", Opts: &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure}}}, {Addr: "b@example.net"}},
				strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if res.Pipelined != pipelining || res.Accepted() != 2 || res.Final.Code != 250 || res.Data.Code != 354 {
				t.Fatalf("result %+v", res)
			}
			msgs, err := s.WaitMessages(testCtx(t), 1)
			if err != nil {
				t.Fatal(err)
			}
			m := msgs[0]
			if m.Pipelined != pipelining {
				t.Errorf("server saw pipelined=%v", m.Pipelined)
			}
			want := "Subject: test\r\n\r\n.hidden dot\r\nlast line without newline\r\n"
			if string(m.Body) != want {
				t.Errorf("body %q, want %q", m.Body, want)
			}
			if m.From != "sender@example.org" || m.MailOpts.EnvelopeID != "id+1" || m.MailOpts.Body != smtp.Body8BitMIME || m.MailOpts.Size != int64(len(body)) {
				t.Errorf("MAIL %+v", m)
			}
			if len(m.Rcpts) != 2 || len(m.Rcpts[0].Opts.Notify) != 1 {
				t.Errorf("RCPT %+v", m.Rcpts)
			}
			// The transcript shows whether the commands went in one write:
			// pipelined, the MAIL reply comes after DATA was sent.
			log := tr.String()
			dataSent := strings.Index(log, "C: DATA")
			mailReply := strings.Index(log, "S: 250 2.0.0 Roger")
			if (dataSent < mailReply) != pipelining {
				t.Errorf("transcript order does not match pipelining=%v:\n%s", pipelining, log)
			}
			// The connection is reusable.
			if err := c.Reset(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Send(testCtx(t), "", nil, rcpts("a@example.net"), strings.NewReader("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := s.WaitMessages(testCtx(t), 2); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPartialRecipientRejection(t *testing.T) {
	t.Parallel()
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			t.Parallel()
			s := smtptest.NewServer(t, &smtptest.Options{Capabilities: capsWith(pipelining)})
			s.SetRcptFault("unknown@example.net", smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
			s.SetRcptFault("busy@example.net", smtptest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "try later"))
			c := connect(t, s.Addr(), nil)
			res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("unknown@example.net", "ok@example.net", "busy@example.net"), strings.NewReader("hi\r\n"))
			if err != nil {
				t.Fatal(err)
			}
			se := wantReplyErr(t, res.Rcpt[0].Err, 550)
			if se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) || se.Message != "no such user" {
				t.Errorf("first recipient %+v", se)
			}
			if res.Rcpt[1].Err != nil {
				t.Errorf("second recipient %v", res.Rcpt[1].Err)
			}
			if se := wantReplyErr(t, res.Rcpt[2].Err, 451); !se.Temporary() || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
				t.Errorf("third recipient %+v", se)
			}
			msgs, err := s.WaitMessages(testCtx(t), 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs[0].Rcpts) != 1 || msgs[0].Rcpts[0].Addr != "ok@example.net" {
				t.Errorf("delivered to %+v", msgs[0].Rcpts)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	type check func(t *testing.T, res *TxResult, err error)
	tests := []struct {
		name  string
		setup func(s *smtptest.Server)
		check check
	}{
		{"MAIL refused", func(s *smtptest.Server) {
			s.SetFault(smtptest.StageMail, smtptest.Fault{Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"}, Times: 1})
		}, func(t *testing.T, res *TxResult, err error) {
			wantReplyErr(t, err, 451)
			for _, r := range res.Rcpt {
				wantReplyErr(t, r.Err, 451)
			}
			if res.Final != nil {
				t.Error("body sent after MAIL was refused")
			}
		}},
		{"every RCPT refused", func(s *smtptest.Server) {
			s.SetFault(smtptest.StageRcpt, smtptest.Fault{Reply: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "unknown"}, Times: 2})
		}, func(t *testing.T, res *TxResult, err error) {
			if !errors.Is(err, ErrNoRecipients) {
				t.Fatalf("got %v, want ErrNoRecipients", err)
			}
			if res.Final != nil {
				t.Error("body sent without recipients")
			}
		}},
		{"DATA refused", func(s *smtptest.Server) {
			s.SetFault(smtptest.StageData, smtptest.Fault{Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "no"}, Times: 1})
		}, func(t *testing.T, res *TxResult, err error) {
			wantReplyErr(t, err, 451)
			if res.Data == nil || res.Data.Code != 451 || res.Final != nil {
				t.Errorf("result %+v", res)
			}
		}},
		{"end of data refused", func(s *smtptest.Server) {
			s.SetFault(smtptest.StageDataEnd, smtptest.Fault{Reply: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "spam"}, Times: 1})
		}, func(t *testing.T, res *TxResult, err error) {
			se := wantReplyErr(t, err, 554)
			if se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) || res.Final == nil || res.Final.Code != 554 {
				t.Errorf("result %+v", res)
			}
		}},
	}
	for _, pipelining := range []bool{true, false} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/pipelining=%v", tt.name, pipelining), func(t *testing.T) {
				t.Parallel()
				s := smtptest.NewServer(t, &smtptest.Options{Capabilities: capsWith(pipelining)})
				tt.setup(s)
				c := connect(t, s.Addr(), nil)
				res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net", "b@example.net"), strings.NewReader("x\r\n"))
				tt.check(t, res, err)
				// The connection is left ready for the next transaction.
				if _, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("again\r\n")); err != nil {
					t.Fatalf("next transaction: %v", err)
				}
				msgs, err := s.WaitMessages(testCtx(t), 1)
				if err != nil {
					t.Fatal(err)
				}
				if got := string(msgs[len(msgs)-1].Body); got != "again\r\n" {
					t.Errorf("last body %q", got)
				}
			})
		}
	}
}

func TestDropAfterDotIsUnknown(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	s.SetFault(smtptest.StageDataEnd, smtptest.Fault{Drop: true})
	c := connect(t, s.Addr(), nil)
	res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("body\r\n"))
	if !errors.Is(err, ErrUnknownAfterDot) {
		t.Fatalf("got %v, want ErrUnknownAfterDot", err)
	}
	wantConnErr(t, err, StageDataEnd)
	if res.Final != nil || res.Rcpt[0].Err != nil {
		t.Errorf("result %+v", res)
	}
	msgs, err := s.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !msgs[0].Unanswered {
		t.Error("server did not record the message as unanswered")
	}
	if _, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Send on a failed Conn: %v", err)
	}
}

func TestDropBeforeDotIsNotUnknown(t *testing.T) {
	t.Parallel()
	for _, stage := range []smtptest.Stage{smtptest.StageMail, smtptest.StageRcpt, smtptest.StageData} {
		t.Run(stage.String(), func(t *testing.T) {
			t.Parallel()
			s := smtptest.NewServer(t, &smtptest.Options{Capabilities: capsWith(false)})
			s.SetFault(stage, smtptest.Fault{Drop: true})
			c := connect(t, s.Addr(), nil)
			res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x"))
			if errors.Is(err, ErrUnknownAfterDot) {
				t.Fatal("a drop before the body reported an unknown outcome")
			}
			want := map[smtptest.Stage]Stage{smtptest.StageMail: StageMail, smtptest.StageRcpt: StageRcpt, smtptest.StageData: StageData}[stage]
			ce := wantConnErr(t, err, want)
			var se *smtp.SMTPError
			if errors.As(err, &se) {
				t.Fatalf("connection loss looks like a reply: %v", ce)
			}
			if res.Final != nil {
				t.Errorf("final reply %v without a body", res.Final)
			}
		})
	}
}

func TestTimeouts(t *testing.T) {
	t.Parallel()
	t.Run("MAIL", func(t *testing.T) {
		t.Parallel()
		s := smtptest.NewServer(t, nil)
		s.SetFault(smtptest.StageMail, smtptest.Fault{Delay: time.Hour})
		c := connect(t, s.Addr(), &Options{Timeouts: Timeouts{Mail: 50 * time.Millisecond}})
		_, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x"))
		if ce := wantConnErr(t, err, StageMail); !ce.Timeout() {
			t.Errorf("not a timeout: %v", err)
		}
		if err := s.WaitIdle(testCtx(t)); err != nil {
			t.Fatalf("connection left open after a timeout: %v", err)
		}
	})
	t.Run("after dot", func(t *testing.T) {
		t.Parallel()
		s := smtptest.NewServer(t, nil)
		s.SetFault(smtptest.StageDataEnd, smtptest.Fault{Delay: time.Hour})
		c := connect(t, s.Addr(), &Options{Timeouts: Timeouts{DataEnd: 50 * time.Millisecond}})
		_, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x"))
		if ce := wantConnErr(t, err, StageDataEnd); !ce.Timeout() || !errors.Is(err, ErrUnknownAfterDot) {
			t.Errorf("got %v, want an unknown-outcome timeout", err)
		}
	})
	t.Run("greeting", func(t *testing.T) {
		t.Parallel()
		s := smtptest.NewServer(t, nil)
		s.SetFault(smtptest.StageGreeting, smtptest.Fault{Delay: time.Hour})
		nc, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_, err = NewConn(testCtx(t), nc, &Options{Timeouts: Timeouts{Greeting: 50 * time.Millisecond}})
		if ce := wantConnErr(t, err, StageGreeting); !ce.Timeout() {
			t.Errorf("not a timeout: %v", err)
		}
	})
	t.Run("trickled reply", func(t *testing.T) {
		t.Parallel()
		// A server that answers MAIL one byte at a time, never finishing
		// the line: the timeout bounds the whole reply, not each read.
		addr := scripted(t, func(r *bufio.Reader, w net.Conn) {
			io.WriteString(w, "220 mx.example.net\r\n")
			if !expect(r, "EHLO") {
				return
			}
			io.WriteString(w, "250 mx.example.net\r\n")
			if !expect(r, "MAIL") {
				return
			}
			io.WriteString(w, "250 ")
			pace := time.NewTicker(50 * time.Millisecond)
			defer pace.Stop()
			for range 400 { // at most 20 s; the client leaves long before
				<-pace.C
				if _, err := io.WriteString(w, "x"); err != nil {
					return
				}
			}
		})
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewConn(testCtx(t), nc, &Options{Timeouts: Timeouts{Mail: 500 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		_, err = c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x"))
		if ce := wantConnErr(t, err, StageMail); !ce.Timeout() {
			t.Errorf("not a timeout: %v", err)
		}
	})
	t.Run("context deadline", func(t *testing.T) {
		t.Parallel()
		s := smtptest.NewServer(t, nil)
		s.SetFault(smtptest.StageRcpt, smtptest.Fault{Delay: time.Hour})
		c := connect(t, s.Addr(), nil)
		if err := c.Hello(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := c.Send(ctx, "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x"))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want context.DeadlineExceeded", err)
		}
		if ce := wantConnErr(t, err, StageRcpt); !ce.Timeout() {
			t.Errorf("Timeout() false for %v", err)
		}
	})
}

func TestCancelClosesConnection(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	s.SetFault(smtptest.StageMail, smtptest.Fault{Delay: time.Hour})
	c := connect(t, s.Addr(), nil)
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() {
		// Cancel once the server holds the MAIL command.
		s.Wait(testCtx(t), func(st smtptest.Stats) bool { return st.Mail > 0 })
		cancel()
	}()
	_, err := c.Send(ctx, "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	wantConnErr(t, err, StageMail)
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatalf("server still sees the connection: %v", err)
	}
}

func Test421ClosesConn(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	s.SetFault(smtptest.StageMail, smtptest.Fault{Reply: &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "shutting down"}, Hangup: true})
	c := connect(t, s.Addr(), nil)
	res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net", "b@example.net"), strings.NewReader("x"))
	wantReplyErr(t, err, 421)
	for _, r := range res.Rcpt {
		wantReplyErr(t, r.Err, 421)
	}
	if err := c.Noop(testCtx(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("NOOP after 421: %v", err)
	}
}

func TestStartTLSAuthAndTranscript(t *testing.T) {
	t.Parallel()
	caps := smtptest.DefaultCapabilities()
	caps.Auth = []string{"PLAIN", "LOGIN"}
	caps.AuthTLSOnly = true
	s := smtptest.NewServer(t, &smtptest.Options{Capabilities: &caps, Users: map[string]string{"alice": "s3cret-pw"}})
	for _, mech := range []sasl.Client{sasl.NewPlainClient("", "alice", "s3cret-pw"), sasl.NewLoginClient("alice", "s3cret-pw")} {
		var tr syncbuf.Buffer
		c := connect(t, s.Addr(), &Options{Transcript: &tr})
		ctx := testCtx(t)
		if err := c.Hello(ctx); err != nil {
			t.Fatal(err)
		}
		if _, ok := c.Extension("AUTH"); ok {
			t.Fatal("AUTH offered in clear")
		}
		if err := c.StartTLS(ctx, s.ClientTLSConfig("localhost")); err != nil {
			t.Fatal(err)
		}
		if st, ok := c.TLSConnectionState(); !ok || !st.HandshakeComplete {
			t.Fatal("no TLS state after STARTTLS")
		}
		if _, ok := c.Extension("STARTTLS"); ok {
			t.Error("extensions not refreshed after STARTTLS")
		}
		if err := c.Auth(ctx, sasl.NewPlainClient("", "alice", "wrong")); err == nil {
			t.Fatal("wrong password accepted")
		} else {
			wantReplyErr(t, err, 535)
		}
		if err := c.Auth(ctx, mech); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Send(ctx, "alice@example.org", nil, rcpts("b@example.net"), strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
		if err := c.Quit(ctx); err != nil {
			t.Fatal(err)
		}
		log := tr.String()
		for _, secret := range []string{"s3cret-pw", base64.StdEncoding.EncodeToString([]byte("\x00alice\x00s3cret-pw")), base64.StdEncoding.EncodeToString([]byte("s3cret-pw")), "wrong"} {
			if strings.Contains(log, secret) {
				t.Errorf("transcript leaks %q:\n%s", secret, log)
			}
		}
		if !strings.Contains(log, "<redacted>") {
			t.Errorf("transcript has no AUTH line:\n%s", log)
		}
	}
	msgs, err := s.WaitMessages(testCtx(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.TLS == nil || m.AuthUser != "alice" {
			t.Errorf("message TLS=%v auth=%q", m.TLS != nil, m.AuthUser)
		}
	}
}

func TestStartTLSNotOffered(t *testing.T) {
	t.Parallel()
	caps := smtptest.DefaultCapabilities()
	caps.StartTLS = false
	s := smtptest.NewServer(t, &smtptest.Options{Capabilities: &caps})
	c := connect(t, s.Addr(), nil)
	if err := c.StartTLS(testCtx(t), s.ClientTLSConfig("localhost")); !errors.Is(err, ErrNotAdvertised) {
		t.Fatalf("got %v, want ErrNotAdvertised", err)
	}
	if st := s.Stats(); st.StartTLS != 0 {
		t.Errorf("STARTTLS sent anyway")
	}
}

func TestStartTLSBadCertificate(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	c := connect(t, s.Addr(), nil)
	err := c.StartTLS(testCtx(t), s.ClientTLSConfig("other.example.com"))
	wantConnErr(t, err, StageStartTLS)
}

func TestHeloFallback(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	s.SetFault(smtptest.StageEHLO, smtptest.Reply(502, smtp.EnhancedCode{5, 5, 1}, "EHLO not implemented"))
	c := connect(t, s.Addr(), &Options{})
	if err := c.Hello(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Extension("PIPELINING"); ok {
		t.Error("extensions after HELO")
	}
	res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x"))
	if err != nil || res.Pipelined {
		t.Fatalf("send after HELO: %v %+v", err, res)
	}
	if st := s.Stats(); st.HELO != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestGreetingRefused(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	s.SetFault(smtptest.StageGreeting, smtptest.Reply(554, smtp.EnhancedCode{5, 3, 2}, "no service"))
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewConn(testCtx(t), nc, nil)
	wantReplyErr(t, err, 554)
}

func TestInvalidInputBeforeIO(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	c := connect(t, s.Addr(), nil)
	ctx := testCtx(t)
	tests := []struct {
		from  string
		mopts *smtp.MailOptions
		rcpts []Recipient
	}{
		{"a@example.org\r\nRCPT TO:<x@evil>", nil, rcpts("b@example.net")},
		{"a@example.org", nil, rcpts("b@example.net\nDATA")},
		{"a@example.org", nil, rcpts("b\x00@example.net")},
		{"a@example.org>", nil, rcpts("b@example.net")},
		{"a@example.org", nil, nil},
		{"a@example.org", nil, rcpts("")},
		{"a@example.org", &smtp.MailOptions{EnvelopeID: "x\r\ny"}, rcpts("b@example.net")},
		{"a@example.org", nil, []Recipient{{Addr: "b@example.net", Opts: &smtp.RcptOptions{OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "x\ry"}}}},
		{strings.Repeat("a", 300) + "@example.org", nil, rcpts("b@example.net")},
	}
	for i, tt := range tests {
		if _, err := c.Send(ctx, tt.from, tt.mopts, tt.rcpts, strings.NewReader("x")); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("%d: got %v, want ErrInvalidInput", i, err)
		}
	}
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewConn(ctx, nc, &Options{LocalName: "evil\r\nMAIL FROM:<>"}); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("local name: %v", err)
	}
	if st := s.Stats(); st.Mail != 0 || st.EHLO != 0 {
		t.Errorf("server saw commands: %+v", st)
	}
}

func TestSMTPUTF8Required(t *testing.T) {
	t.Parallel()
	caps := smtptest.DefaultCapabilities()
	caps.SMTPUTF8 = false
	s := smtptest.NewServer(t, &smtptest.Options{Capabilities: &caps})
	c := connect(t, s.Addr(), nil)
	_, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("pelé@example.net"), strings.NewReader("x"))
	if !errors.Is(err, ErrNotAdvertised) {
		t.Fatalf("got %v, want ErrNotAdvertised", err)
	}
	s.SetCapabilities(smtptest.DefaultCapabilities())
	c = connect(t, s.Addr(), nil)
	// A non-ASCII recipient alone is enough to need SMTPUTF8 on MAIL.
	if _, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("pelé@example.net"), strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	msgs, err := s.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !msgs[0].MailOpts.UTF8 || msgs[0].Rcpts[0].Addr != "pelé@example.net" {
		t.Errorf("message %+v", msgs[0])
	}
}

// failingReader fails after some bytes.
type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	n := min(len(p), f.n)
	for i := range p[:n] {
		p[i] = 'x'
		if i%70 == 69 {
			p[i] = '\n'
		}
	}
	f.n -= n
	return n, nil
}

func TestBodyReadErrorAbortsWithoutDelivery(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	c := connect(t, s.Addr(), nil)
	_, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), &failingReader{n: 100000})
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("got %v", err)
	}
	var ce *ConnError
	if errors.As(err, &ce) {
		t.Errorf("a local read error is reported as a connection failure: %v", err)
	}
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Messages()); n != 0 {
		t.Errorf("server recorded %d messages from an aborted body", n)
	}
}

func TestLargeBodyStreams(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, &smtptest.Options{DiscardBodies: true})
	c := connect(t, s.Addr(), nil)
	const size = 80 * 100000
	line := strings.Repeat("y", 78) + "\r\n"
	body := smtptest.RepeatedBody(line, size)
	res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), body)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := s.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if msgs[0].Size != size || res.BodyBytes != size+3 {
		t.Errorf("server got %d bytes, client wrote %d", msgs[0].Size, res.BodyBytes)
	}
}

// scripted runs handler on one connection to a loopback listener.
func scripted(t *testing.T, handler func(r *bufio.Reader, w net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(20 * time.Second))
		handler(bufio.NewReader(nc), nc)
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

func expect(r *bufio.Reader, prefix string) bool {
	line, err := r.ReadString('\n')
	return err == nil && strings.HasPrefix(line, prefix)
}

func TestLoneDotAfter354WithoutRecipients(t *testing.T) {
	t.Parallel()
	gotDot := make(chan bool, 1)
	addr := scripted(t, func(r *bufio.Reader, w net.Conn) {
		io.WriteString(w, "220 test ESMTP\r\n")
		expect(r, "EHLO")
		io.WriteString(w, "250-test\r\n250 PIPELINING\r\n")
		for _, cmd := range []string{"MAIL", "RCPT", "DATA"} {
			if !expect(r, cmd) {
				return
			}
		}
		// A server that answers DATA with 354 although the RCPT failed.
		io.WriteString(w, "250 2.1.0 ok\r\n550 5.1.1 unknown\r\n354 go ahead\r\n")
		line, _ := r.ReadString('\n')
		gotDot <- line == ".\r\n"
		io.WriteString(w, "554 5.5.1 no valid recipients\r\n")
		expect(r, "QUIT")
		io.WriteString(w, "221 bye\r\n")
	})
	c := connect(t, addr, nil)
	res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("must not be sent"))
	if !errors.Is(err, ErrNoRecipients) {
		t.Fatalf("got %v, want ErrNoRecipients", err)
	}
	if !<-gotDot {
		t.Error("client did not send the lone dot")
	}
	if res.Final == nil || res.Final.Code != 554 || res.BodyBytes != 0 {
		t.Errorf("result %+v", res)
	}
	if err := c.Quit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// TestPositiveNonAcceptanceToRcpt: a 3xx reply to RCPT is no acceptance
// (RFC 5321 §4.2.1): the recipient is not counted as accepted, the session
// ends with ErrProtocol, and no body is sent.
func TestPositiveNonAcceptanceToRcpt(t *testing.T) {
	t.Parallel()
	sawData := make(chan bool, 1)
	addr := scripted(t, func(r *bufio.Reader, w net.Conn) {
		io.WriteString(w, "220 test ESMTP\r\n")
		expect(r, "EHLO")
		io.WriteString(w, "250 test\r\n")
		if !expect(r, "MAIL") {
			sawData <- false
			return
		}
		io.WriteString(w, "250 2.1.0 ok\r\n")
		if !expect(r, "RCPT") {
			sawData <- false
			return
		}
		io.WriteString(w, "250 2.1.5 ok\r\n")
		if !expect(r, "RCPT") {
			sawData <- false
			return
		}
		io.WriteString(w, "354 not a RCPT reply\r\n")
		// The client must not go on to DATA: it closes instead.
		line, err := r.ReadString('\n')
		sawData <- err == nil && strings.HasPrefix(line, "DATA")
	})
	c := connect(t, addr, nil)
	res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net", "b@example.net"), strings.NewReader("must not be sent"))
	wantConnErr(t, err, StageRcpt)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol", err)
	}
	if res == nil || len(res.Rcpt) != 2 {
		t.Fatalf("result %+v", res)
	}
	if r := res.Rcpt[1]; r.Err == nil || r.Reply == nil || r.Reply.Code != 354 {
		t.Errorf("second recipient %+v, want its 354 kept and an error", r)
	}
	if n := res.Accepted(); n != 1 {
		t.Errorf("%d recipients accepted, want 1", n)
	}
	if res.BodyBytes != 0 || res.Final != nil {
		t.Errorf("body went out: %+v", res)
	}
	if <-sawData {
		t.Error("DATA sent after a 354 to RCPT")
	}
}

func TestMalformedReplies(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"megabyte line":   "220 " + strings.Repeat("x", 1<<20) + "\r\n",
		"code 199":        "199 hello\r\n",
		"code 600":        "600 hello\r\n",
		"letters":         "abc hello\r\n",
		"bad separator":   "220xhello\r\n",
		"codes differ":    "220-a\r\n221 b\r\n",
		"endless reply":   strings.Repeat("220-more\r\n", 1000),
		"short":           "22\r\n",
		"eof mid reply":   "220-a\r\n",
		"nothing at all":  "",
		"just whitespace": "   \r\n",
	}
	for name, greeting := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			addr := scripted(t, func(r *bufio.Reader, w net.Conn) {
				io.WriteString(w, greeting)
			})
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewConn(testCtx(t), nc, nil)
			wantConnErr(t, err, StageGreeting)
		})
	}
}

func TestReplyParsing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Reply
	}{
		{"250 ok\r\n", Reply{250, smtp.EnhancedCodeNotSet, "ok"}},
		{"250\r\n", Reply{250, smtp.EnhancedCodeNotSet, ""}},
		{"451 4.3.0 try later\r\n", Reply{451, smtp.EnhancedCode{4, 3, 0}, "try later"}},
		{"550-5.1.1 no such\r\n550 5.1.1 user\r\n", Reply{550, smtp.EnhancedCode{5, 1, 1}, "no such\nuser"}},
		{"550-first\r\n550 5.7.1 second\r\n", Reply{550, smtp.EnhancedCode{5, 7, 1}, "first\nsecond"}},
		{"552 5.3.4\r\n", Reply{552, smtp.EnhancedCode{5, 3, 4}, ""}},
		{"250 4.0.0 class mismatch kept\r\n", Reply{250, smtp.EnhancedCodeNotSet, "4.0.0 class mismatch kept"}},
		{"250 2.1000.0 too many digits\r\n", Reply{250, smtp.EnhancedCodeNotSet, "2.1000.0 too many digits"}},
		{"354 2.0.0 not parsed in 3xx\r\n", Reply{354, smtp.EnhancedCodeNotSet, "2.0.0 not parsed in 3xx"}},
		{"220 bare LF accepted\n", Reply{220, smtp.EnhancedCodeNotSet, "bare LF accepted"}},
		{"250 2.0.999 max digits\r\n", Reply{250, smtp.EnhancedCode{2, 0, 999}, "max digits"}},
	}
	for _, tt := range tests {
		rr := replyReader{r: bufio.NewReaderSize(strings.NewReader(tt.in), 4096), maxLine: 2048, maxLines: 10}
		got, err := rr.readReply(nil)
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if *got != tt.want {
			t.Errorf("%q: got %+v, want %+v", tt.in, *got, tt.want)
		}
	}
}

func ExampleConn_Send() {
	s, err := smtptest.New(nil)
	if err != nil {
		panic(err)
	}
	if err := s.Start(); err != nil {
		panic(err)
	}
	defer s.Stop()
	s.SetRcptFault("gone@example.net", smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", s.Addr())
	if err != nil {
		panic(err)
	}
	c, err := NewConn(ctx, nc, &Options{LocalName: "client.example.org"})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	res, err := c.Send(ctx, "sender@example.org", nil,
		[]Recipient{{Addr: "gone@example.net"}, {Addr: "here@example.net"}},
		strings.NewReader("Subject: hello\r\n\r\nHi.\r\n"))
	if err != nil {
		panic(err)
	}
	for _, r := range res.Rcpt {
		fmt.Println(r.Addr, r.Err)
	}
	fmt.Println("pipelined:", res.Pipelined, "final:", res.Final.Code)
	c.Quit(ctx)
	// Output:
	// gone@example.net SMTP error 550: no such user
	// here@example.net <nil>
	// pipelined: true final: 250
}

func TestManyRecipientsPipelinedInGroups(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	var addrs []string
	for i := range 250 {
		addrs = append(addrs, fmt.Sprintf("r%d@example.net", i))
		if i%7 == 3 {
			s.SetRcptFault(addrs[i], smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "unknown"))
		}
	}
	c := connect(t, s.Addr(), nil)
	res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts(addrs...), strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for i, r := range res.Rcpt {
		if (r.Err != nil) != (i%7 == 3) {
			t.Fatalf("recipient %d: %v", i, r.Err)
		}
		if r.Err != nil {
			refused++
		}
	}
	msgs, err := s.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs[0].Rcpts) != 250-refused || res.Accepted() != 250-refused {
		t.Errorf("server got %d recipients, client counts %d accepted, want %d", len(msgs[0].Rcpts), res.Accepted(), 250-refused)
	}
}

func TestMailRefusedStopsPipelinedGroups(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	s.SetFault(smtptest.StageMail, smtptest.Reply(550, smtp.EnhancedCode{5, 7, 1}, "sender refused"))
	var tr syncbuf.Buffer
	c := connect(t, s.Addr(), &Options{Transcript: &tr})
	var addrs []string
	for i := range 250 {
		addrs = append(addrs, fmt.Sprintf("r%d@example.net", i))
	}
	res, err := c.Send(testCtx(t), "s@example.org", nil, rcpts(addrs...), strings.NewReader("x"))
	wantReplyErr(t, err, 550)
	for _, r := range res.Rcpt {
		wantReplyErr(t, r.Err, 550)
	}
	// Only the first group went out: MAIL and 99 RCPT.
	if n := strings.Count(tr.String(), "C: RCPT TO:"); n != maxPipelineGroup-1 || strings.Contains(tr.String(), "C: DATA") {
		t.Errorf("sent %d RCPT:\n%s", n, tr.String())
	}
	if err := c.Noop(testCtx(t)); err != nil {
		t.Fatalf("connection not usable after the refusal: %v", err)
	}
}

func TestStalledServerDataBlockTimeout(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, &smtptest.Options{DiscardBodies: true})
	s.SetFault(smtptest.StageBody, smtptest.Fault{Delay: time.Hour})
	c := connect(t, s.Addr(), &Options{Timeouts: Timeouts{DataBlock: 200 * time.Millisecond}})
	body := smtptest.RepeatedBody(strings.Repeat("w", 78)+"\r\n", 256<<20)
	_, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), body)
	ce := wantConnErr(t, err, StageBody)
	if !ce.Timeout() || errors.Is(err, ErrUnknownAfterDot) {
		t.Errorf("got %v, want a body timeout with a known outcome", err)
	}
}

func TestResetNext(t *testing.T) {
	t.Parallel()
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			t.Parallel()
			s := smtptest.NewServer(t, &smtptest.Options{Capabilities: capsWith(pipelining)})
			var tr syncbuf.Buffer
			c := connect(t, s.Addr(), &Options{Transcript: &tr})
			ctx := testCtx(t)
			for range 3 {
				c.ResetNext()
				if _, err := c.Send(ctx, "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x")); err != nil {
					t.Fatal(err)
				}
			}
			if st := s.Stats(); st.Rset != 3 || st.Messages != 3 {
				t.Errorf("stats %+v", st)
			}
			// Pipelined, RSET goes in the same write as MAIL: MAIL is sent
			// before the RSET reply is read.
			log := tr.String()
			if (strings.Index(log, "C: MAIL") < strings.Index(log, "S: 250 2.0.0 Session reset")) != pipelining {
				t.Errorf("RSET pipelined=%v does not show in the transcript:\n%s", pipelining, log)
			}

			// A refused RSET ends the session before anything is delivered.
			s.SetFault(smtptest.StageRset, smtptest.Reply(554, smtp.EnhancedCode{5, 5, 0}, "no"))
			c.ResetNext()
			_, err := c.Send(ctx, "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x"))
			wantConnErr(t, err, StageReset)
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("got %v, want ErrProtocol", err)
			}
			if err := s.WaitIdle(ctx); err != nil {
				t.Fatal(err)
			}
			if n := len(s.Messages()); n != 3 {
				t.Errorf("%d messages, want 3", n)
			}
		})
	}
}

func ExampleConn_StartTLS() {
	caps := smtptest.DefaultCapabilities()
	caps.Auth = []string{"PLAIN"}
	caps.AuthTLSOnly = true
	s, err := smtptest.New(&smtptest.Options{Capabilities: &caps, Users: map[string]string{"alice": "secret"}})
	if err != nil {
		panic(err)
	}
	if err := s.Start(); err != nil {
		panic(err)
	}
	defer s.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", s.Addr())
	if err != nil {
		panic(err)
	}
	c, err := NewConn(ctx, nc, &Options{LocalName: "client.example.org"})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	if err := c.Hello(ctx); err != nil {
		panic(err)
	}
	_, authInClear := c.Extension("AUTH")
	if err := c.StartTLS(ctx, s.ClientTLSConfig("localhost")); err != nil {
		panic(err)
	}
	_, authInTLS := c.Extension("AUTH")
	fmt.Println("AUTH offered in clear:", authInClear, "under TLS:", authInTLS)
	fmt.Println(c.Auth(ctx, sasl.NewPlainClient("", "alice", "secret")))
	// Output:
	// AUTH offered in clear: false under TLS: true
	// <nil>
}

func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, &smtptest.Options{ImplicitTLS: true})
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConn(testCtx(t), tls.Client(nc, s.ClientTLSConfig("127.0.0.1")), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.TLSConnectionState(); !ok {
		t.Fatal("no TLS state")
	}
	if _, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	msgs, err := s.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if msgs[0].TLS == nil {
		t.Error("server saw no TLS")
	}
}

func TestImplicitTLSBadCertificate(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, &smtptest.Options{ImplicitTLS: true})
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewConn(testCtx(t), tls.Client(nc, &tls.Config{ServerName: "localhost"}), nil)
	wantConnErr(t, err, StageGreeting)
	var certErr *tls.CertificateVerificationError
	if !errors.As(err, &certErr) {
		t.Errorf("got %v, want a certificate verification error", err)
	}
}

func TestCancelDuringBody(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, &smtptest.Options{DiscardBodies: true})
	s.SetFault(smtptest.StageBody, smtptest.Fault{Delay: time.Hour})
	c := connect(t, s.Addr(), nil)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	// Cancel once the client is well into the body.
	body := &cancelReader{r: smtptest.RepeatedBody(strings.Repeat("v", 78)+"\r\n", 256<<20), after: 1 << 20, cancel: cancel}
	_, err := c.Send(ctx, "s@example.org", nil, rcpts("a@example.net"), body)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnknownAfterDot) {
		t.Fatalf("got %v, want a cancelled body", err)
	}
	wantConnErr(t, err, StageBody)
}

type cancelReader struct {
	r      io.Reader
	n      int
	after  int
	cancel func()
}

func (c *cancelReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	if c.n >= c.after {
		c.cancel()
	}
	return n, err
}

func TestCloseFromAnotherGoroutineAborts(t *testing.T) {
	t.Parallel()
	// Lockstep, so that the server holding RCPT means the client waits for
	// the RCPT reply.
	s := smtptest.NewServer(t, &smtptest.Options{Capabilities: capsWith(false)})
	s.SetFault(smtptest.StageRcpt, smtptest.Fault{Delay: time.Hour})
	c := connect(t, s.Addr(), nil)
	go func() {
		s.Wait(testCtx(t), func(st smtptest.Stats) bool { return st.Rcpt > 0 })
		c.Close()
	}()
	_, err := c.Send(testCtx(t), "s@example.org", nil, rcpts("a@example.net"), strings.NewReader("x"))
	wantConnErr(t, err, StageRcpt)
	if !errors.Is(err, ErrClosed) {
		t.Errorf("got %v, want ErrClosed", err)
	}
}
