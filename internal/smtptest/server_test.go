package smtptest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/internal/loopback"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, s *Server) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.CommandTimeout = 10 * time.Second
	c.SubmissionTimeout = 10 * time.Second
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.example.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c
}

func send(c *smtp.Client, from string, to []string, body string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return err
		}
	}
	return data(c, body)
}

// data sends body with DATA once the envelope is given.
func data(c *smtp.Client, body string) error {
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, body); err != nil {
		return err
	}
	return w.Close()
}

func wantCode(t *testing.T, err error, code int, ec smtp.EnhancedCode) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want SMTP error %d", err, code)
	}
	if se.Code != code || se.EnhancedCode != ec {
		t.Fatalf("got %d %v, want %d %v", se.Code, se.EnhancedCode, code, ec)
	}
}

func TestRecordsMessage(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	c := dial(t, s)
	if err := c.Mail("sender@example.org", &smtp.MailOptions{Body: smtp.Body8BitMIME, EnvelopeID: "env-1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("rcpt@example.net", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure}}); err != nil {
		t.Fatal(err)
	}
	if err := data(c, "Subject: hi\r\n\r\n.leading dot\r\n"); err != nil {
		t.Fatal(err)
	}
	msgs, err := s.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if m.From != "sender@example.org" || m.MailOpts.Body != smtp.Body8BitMIME || m.MailOpts.EnvelopeID != "env-1" {
		t.Errorf("envelope: %+v", m)
	}
	if len(m.Rcpts) != 1 || m.Rcpts[0].Addr != "rcpt@example.net" || len(m.Rcpts[0].Opts.Notify) != 1 {
		t.Errorf("recipients: %+v", m.Rcpts)
	}
	if string(m.Body) != "Subject: hi\r\n\r\n.leading dot\r\n" || m.Size != int64(len(m.Body)) {
		t.Errorf("body %q size %d", m.Body, m.Size)
	}
	if m.Helo != "client.example.test" || m.TLS != nil || m.AuthUser != "" || m.Unanswered || m.Reply.Code != 250 {
		t.Errorf("message: %+v", m)
	}
	conns := s.Conns()
	if len(conns) != 1 || conns[0].ID != m.ConnID || !conns[0].Open {
		t.Errorf("conns: %+v", conns)
	}
}

func TestRcptFaults(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	s.SetRcptFault("Busy@example.net", Reply(451, smtp.EnhancedCode{4, 3, 0}, "try later"))
	s.SetRcptIndexFault(2, Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
	c := dial(t, s)
	if err := c.Mail("sender@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("ok@example.net", nil); err != nil {
		t.Fatal(err)
	}
	wantCode(t, c.Rcpt("busy@example.net", nil), 451, smtp.EnhancedCode{4, 3, 0})
	wantCode(t, c.Rcpt("third@example.net", nil), 550, smtp.EnhancedCode{5, 1, 1})
	if err := data(c, "x\r\n"); err != nil {
		t.Fatal(err)
	}
	msgs, err := s.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[0].Rcpts; len(got) != 1 || got[0].Addr != "ok@example.net" {
		t.Errorf("accepted recipients %+v", got)
	}
}

func TestDropAfterDotRecordsUnanswered(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	s.SetFault(StageDataEnd, Fault{Drop: true})
	c := dial(t, s)
	err := send(c, "a@example.org", []string{"b@example.net"}, "body\r\n")
	if err == nil {
		t.Fatal("client saw no error though the server dropped the connection")
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		t.Fatalf("got a reply %v, want a connection error", se)
	}
	msgs, err := s.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !msgs[0].Unanswered || string(msgs[0].Body) != "body\r\n" {
		t.Errorf("message %+v", msgs[0])
	}
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestStageReplies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		stage Stage
		code  int
		ec    smtp.EnhancedCode
	}{
		{StageMail, 451, smtp.EnhancedCode{4, 3, 0}},
		{StageData, 554, smtp.EnhancedCode{5, 5, 1}},
		{StageDataEnd, 552, smtp.EnhancedCode{5, 3, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.stage.String(), func(t *testing.T) {
			t.Parallel()
			s := NewServer(t, nil)
			s.SetFault(tt.stage, Fault{Reply: &smtp.SMTPError{Code: tt.code, EnhancedCode: tt.ec, Message: "injected"}, Times: 1})
			c := dial(t, s)
			wantCode(t, send(c, "a@example.org", []string{"b@example.net"}, "x\r\n"), tt.code, tt.ec)
			// The connection stays usable and the fault was used up.
			if err := c.Reset(); err != nil {
				t.Fatalf("RSET after the fault: %v", err)
			}
			if err := send(c, "a@example.org", []string{"b@example.net"}, "second\r\n"); err != nil {
				t.Fatalf("second transaction: %v", err)
			}
			msgs, err := s.WaitMessages(testCtx(t), 1)
			if err != nil {
				t.Fatal(err)
			}
			last := msgs[len(msgs)-1]
			if string(last.Body) != "second\r\n" || last.Reply.Code != 250 {
				t.Errorf("last message %+v", last)
			}
		})
	}
}

func TestGreetingFault(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	s.SetFault(StageGreeting, Reply(421, smtp.EnhancedCode{4, 3, 2}, "shutting down"))
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// go-smtp's client reads the greeting with the first command.
	wantCode(t, c.Hello("client.example.test"), 421, smtp.EnhancedCode{4, 3, 2})
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatalf("server kept the connection after a 421 greeting: %v", err)
	}
}

func TestHangupAfterReply(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	s.SetFault(StageMail, Fault{Reply: &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "bye"}, Hangup: true})
	c := dial(t, s)
	wantCode(t, c.Mail("a@example.org", nil), 421, smtp.EnhancedCode{4, 4, 2})
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Noop(); err == nil {
		t.Fatal("NOOP succeeded on a hung-up connection")
	}
}

func TestDelayTimesOutAndStopInterrupts(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	s.SetFault(StageMail, Fault{Delay: time.Hour})
	c := dial(t, s)
	c.CommandTimeout = 100 * time.Millisecond
	err := c.Mail("a@example.org", nil)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("MAIL: %v, want a timeout", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Stop() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-testCtx(t).Done():
		t.Fatal("Stop waited for the delay")
	}
}

func TestCapabilities(t *testing.T) {
	t.Parallel()
	s := NewServer(t, &Options{Capabilities: &Capabilities{Size: true, MaxSize: 1000}})
	c := dial(t, s)
	for _, ext := range []string{"PIPELINING", "STARTTLS", "8BITMIME", "SMTPUTF8", "DSN", "AUTH", "CHUNKING"} {
		if ok, _ := c.Extension(ext); ok {
			t.Errorf("%s advertised", ext)
		}
	}
	if n, ok := c.MaxMessageSize(); !ok || n != 1000 {
		t.Errorf("SIZE %d %v", n, ok)
	}
	// Parameters of extensions not advertised are refused (go-smtp's
	// client would not send them, so speak raw).
	strict := dialRaw(t, s)
	strict.cmd(t, "EHLO raw.example.test")
	strict.reply(t)
	for _, cmd := range []string{"MAIL FROM:<a@example.org> BODY=8BITMIME", "MAIL FROM:<a@example.org> SMTPUTF8", "MAIL FROM:<a@example.org> RET=HDRS"} {
		strict.cmd(t, cmd)
		if got := strict.reply(t); !strings.HasPrefix(got, "555 5.5.4 ") {
			t.Errorf("%s: got %q, want 555 5.5.4", cmd, got)
		}
	}
	wantCode(t, c.Mail("a@example.org", &smtp.MailOptions{Size: 2000}), 552, smtp.EnhancedCode{5, 3, 4})

	// A change applies to the next EHLO of an open connection.
	s.SetCapabilities(DefaultCapabilities())
	strict.cmd(t, "EHLO raw.example.test")
	got := strict.reply(t)
	for _, ext := range []string{"PIPELINING", "STARTTLS", "8BITMIME", "SMTPUTF8", "DSN", "SIZE"} {
		if !strings.Contains(got, ext) {
			t.Errorf("%s not advertised in %q", ext, got)
		}
	}
}

func TestStartTLSAndAuth(t *testing.T) {
	t.Parallel()
	caps := DefaultCapabilities()
	caps.Auth = []string{"PLAIN", "LOGIN"}
	caps.AuthTLSOnly = true
	s := NewServer(t, &Options{Capabilities: &caps, Users: map[string]string{"user": "secret"}})

	plain := dial(t, s)
	if ok, _ := plain.Extension("AUTH"); ok {
		t.Error("AUTH advertised in clear with AuthTLSOnly")
	}
	wantCode(t, plain.Auth(sasl.NewPlainClient("", "user", "secret")), 538, smtp.EnhancedCode{5, 7, 11})

	for _, mech := range []sasl.Client{sasl.NewPlainClient("", "user", "secret"), sasl.NewLoginClient("user", "secret")} {
		nc, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c, err := smtp.NewClientStartTLS(nc, s.ClientTLSConfig("localhost"))
		if err != nil {
			t.Fatalf("STARTTLS: %v", err)
		}
		if ok, _ := c.Extension("STARTTLS"); ok {
			t.Error("STARTTLS advertised again under TLS")
		}
		wantCode(t, c.Auth(sasl.NewPlainClient("", "user", "wrong")), 535, smtp.EnhancedCode{5, 7, 8})
		c.Close()

		nc, err = net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c, err = smtp.NewClientStartTLS(nc, s.ClientTLSConfig("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Auth(mech); err != nil {
			t.Fatalf("AUTH: %v", err)
		}
		if err := send(c, "a@example.org", []string{"b@example.net"}, "secret stuff\r\n"); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	msgs, err := s.WaitMessages(testCtx(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.TLS == nil || !m.TLS.HandshakeComplete || m.AuthUser != "user" {
			t.Errorf("message TLS %v auth %q", m.TLS, m.AuthUser)
		}
	}
}

func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	s := NewServer(t, &Options{ImplicitTLS: true})
	c, err := smtp.DialTLS(s.Addr(), s.ClientTLSConfig("localhost"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered on an implicit TLS connection")
	}
	if err := send(c, "a@example.org", []string{"b@example.net"}, "x\r\n"); err != nil {
		t.Fatal(err)
	}
	msgs, err := s.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if msgs[0].TLS == nil {
		t.Error("message not recorded as TLS")
	}
}

func TestRestartSameAddress(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	addr := s.Addr()
	c := dial(t, s)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Noop(); err == nil {
		t.Error("open connection survived Stop")
	}
	if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		nc.Close()
		t.Fatal("stopped server accepted a connection")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if s.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr(), addr)
	}
	c = dial(t, s)
	if err := send(c, "a@example.org", []string{"b@example.net"}, "after restart\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); !errors.Is(err, ErrRunning) {
		t.Errorf("second Start: %v", err)
	}
}

func TestPipelinedDetection(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	raw := dialRaw(t, s)
	raw.cmd(t, "EHLO raw.example.test")
	raw.reply(t)
	raw.cmd(t, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA")
	for range 3 {
		raw.reply(t)
	}
	raw.cmd(t, "x\r\n.")
	raw.reply(t)
	// Lockstep on another connection.
	c := dial(t, s)
	if err := send(c, "a@example.org", []string{"b@example.net"}, "y\r\n"); err != nil {
		t.Fatal(err)
	}
	msgs, err := s.WaitMessages(testCtx(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	if !msgs[0].Pipelined || msgs[1].Pipelined {
		t.Errorf("pipelined %v %v, want true false", msgs[0].Pipelined, msgs[1].Pipelined)
	}
}

func TestTimesAndWaitDeadline(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	s.SetFault(StageMail, Fault{Reply: &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "busy"}, Times: 2})
	c := dial(t, s)
	for range 2 {
		wantCode(t, c.Mail("a@example.org", nil), 450, smtp.EnhancedCode{4, 2, 0})
	}
	if err := c.Mail("a@example.org", nil); err != nil {
		t.Fatalf("third MAIL: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.WaitMessages(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitMessages: %v", err)
	}
	if st := s.Stats(); st.Mail != 3 || st.EHLO != 1 || st.Connections != 1 {
		t.Errorf("stats %+v", st)
	}
}

// rawConn speaks SMTP byte by byte, for what go-smtp's client cannot do.
type rawConn struct {
	nc net.Conn
	r  *bufio.Reader
}

func dialRaw(t *testing.T, s *Server) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { nc.Close() })
	rc := &rawConn{nc: nc, r: bufio.NewReader(nc)}
	rc.reply(t) // greeting
	return rc
}

func (rc *rawConn) cmd(t *testing.T, s string) {
	t.Helper()
	if _, err := rc.nc.Write([]byte(s + "\r\n")); err != nil {
		t.Fatal(err)
	}
}

func (rc *rawConn) reply(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading reply: %v", err)
		}
		b.WriteString(line)
		if len(line) >= 4 && line[3] == ' ' {
			return b.String()
		}
	}
}

func TestBodyDropLeavesNoMessage(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	s.SetFault(StageBody, Fault{Drop: true})
	c := dial(t, s)
	big := strings.Repeat(strings.Repeat("z", 78)+"\r\n", 200000) // 16 MB, more than the socket buffers
	if err := send(c, "a@example.org", []string{"b@example.net"}, big); err == nil {
		t.Fatal("client saw no error")
	}
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Messages()); n != 0 {
		t.Fatalf("%d messages recorded from a dropped body", n)
	}
}

func TestMoreStageFaults(t *testing.T) {
	t.Parallel()
	caps := DefaultCapabilities()
	caps.Auth = []string{"PLAIN"}
	s := NewServer(t, &Options{Capabilities: &caps, Users: map[string]string{"u": "p"}})

	s.SetFault(StageStartTLS, Reply(454, smtp.EnhancedCode{4, 7, 0}, "TLS not available").withTimes(1))
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := smtp.NewClientStartTLS(nc, s.ClientTLSConfig("localhost")); err == nil {
		t.Fatal("STARTTLS succeeded despite the fault")
	} else {
		wantCode(t, err, 454, smtp.EnhancedCode{4, 7, 0})
	}

	s.SetFault(StageAuth, Reply(454, smtp.EnhancedCode{4, 7, 0}, "auth backend down").withTimes(1))
	c := dial(t, s)
	wantCode(t, c.Auth(sasl.NewPlainClient("", "u", "p")), 454, smtp.EnhancedCode{4, 7, 0})
	if err := c.Auth(sasl.NewPlainClient("", "u", "p")); err != nil {
		t.Fatalf("AUTH after the fault was used up: %v", err)
	}

	s.SetFault(StageRset, Reply(421, smtp.EnhancedCode{4, 4, 2}, "idle too long"))
	wantCode(t, c.Reset(), 421, smtp.EnhancedCode{4, 4, 2})
	s.ClearFaults()

	s.SetFault(StageHELO, Reply(550, smtp.EnhancedCode{5, 7, 1}, "go away"))
	raw := dialRaw(t, s)
	raw.cmd(t, "HELO old.example.test")
	if got := raw.reply(t); !strings.HasPrefix(got, "550 5.7.1 go away") {
		t.Errorf("HELO reply %q", got)
	}

	st := s.Stats()
	if st.StartTLS != 1 || st.Auth != 2 || st.Rset != 1 || st.HELO != 1 {
		t.Errorf("stats %+v", st)
	}
	s.CloseConnections()
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	s.Reset()
	if st := s.Stats(); st != (Stats{}) || len(s.Conns()) != 0 {
		t.Errorf("after Reset: %+v %v", st, s.Conns())
	}
}

func TestEHLODelayAndDrop(t *testing.T) {
	t.Parallel()
	s := NewServer(t, nil)
	s.SetFault(StageEHLO, Fault{Delay: time.Hour})
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.CommandTimeout = 50 * time.Millisecond
	var ne net.Error
	if err := c.Hello("x.example.test"); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("EHLO: %v, want a timeout", err)
	}
	c.Close()
	// The server notices the client leaving during the delay.
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	s.SetFault(StageEHLO, Fault{Drop: true})
	c2, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	var se *smtp.SMTPError
	if err := c2.Hello("x.example.test"); err == nil || errors.As(err, &se) {
		t.Fatalf("EHLO on a dropped connection: %v", err)
	}
}

// withTimes returns f limited to n occurrences.
func (f Fault) withTimes(n int) Fault {
	f.Times = n
	return f
}

// TestAutomaticPortOutsideEphemeralRange: the default address gets a port
// that no outgoing connection can be handed while the server is stopped,
// so Restart keeps working on a busy machine; an explicit address is used
// as given.
func TestAutomaticPortOutsideEphemeralRange(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skipf("no ephemeral port range to compare with: %v", err)
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		t.Fatalf("ip_local_port_range %q: %v", b, err)
	}
	if low <= 10000+1024 && high >= 65535-1024 {
		t.Skipf("the ephemeral range %d-%d leaves no room outside it", low, high)
	}
	for _, addr := range []string{"", "127.0.0.1:0", "127.0.0.2:0"} {
		s := NewServer(t, &Options{Addr: addr})
		_, port, err := net.SplitHostPort(s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(port)
		if p >= low && p <= high {
			t.Errorf("Addr %q: port %d is in the ephemeral range %d-%d", addr, p, low, high)
		}
		if err := s.Restart(); err != nil {
			t.Fatalf("Addr %q: %v", addr, err)
		}
	}

	// An explicit address is used as given.
	ln, err := loopback.Listen("tcp", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	explicit := ln.Addr().String()
	ln.Close()
	s := NewServer(t, &Options{Addr: explicit})
	if s.Addr() != explicit {
		t.Errorf("Addr %q: listening on %s", explicit, s.Addr())
	}
}
