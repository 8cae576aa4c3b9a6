package smtpclient

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/sony/gobreaker/v2"
)

// TestClassificationEndToEnd runs every row of the design's classification
// table that a server can cause against two real in-process relays: the
// primary misbehaves, the secondary is healthy. Each row checks what the
// user depends on: the outcome per recipient, which host decided it, that
// recipients failing temporarily reach the secondary exactly once and
// that others never do, and whether the primary's breaker counted it.
// (The DNS rows are in TestRoutingDirectMX and TestDirectMXEndToEnd.)
func TestClassificationEndToEnd(t *testing.T) {
	t.Parallel()
	const (
		bob   = "bob@example.com"
		carol = "carol@example.com"
	)
	type row struct {
		name string
		// setup breaks the primary; it returns the address to use for it
		// (the server's own unless it is replaced).
		setup    func(t *testing.T, s *smtptest.Server) string
		timeouts func(*Timeouts)
		relay    func(*Relay)
		// want: outcome per recipient (bob, carol); a Delivered recipient
		// must have reached the secondary unless onPrimary is set.
		want      [2]Outcome
		onPrimary bool
		stage     Stage // of the failure, for the recipients not delivered
		code      int   // the reply code that decided a failure, 0 for none
		trips     bool  // a site failure: the primary's breaker opens
	}
	fault := func(st smtptest.Stage, f smtptest.Fault) func(*testing.T, *smtptest.Server) string {
		return func(_ *testing.T, s *smtptest.Server) string { s.SetFault(st, f); return s.Addr() }
	}
	reply := func(st smtptest.Stage, code int, ec smtp.EnhancedCode) func(*testing.T, *smtptest.Server) string {
		return fault(st, smtptest.Reply(code, ec, "as the test says"))
	}
	moved := [2]Outcome{Delivered, Delivered}
	rows := []row{
		{name: "connect refused", setup: func(_ *testing.T, s *smtptest.Server) string {
			s.Stop()
			return s.Addr()
		}, want: moved, stage: StageConnect, trips: true},
		{name: "greeting timeout", setup: fault(smtptest.StageGreeting, smtptest.Fault{Delay: time.Hour}),
			want: moved, stage: StageGreeting, trips: true},
		{name: "greeting 554", setup: reply(smtptest.StageGreeting, 554, smtp.EnhancedCode{5, 3, 2}),
			want: moved, stage: StageGreeting, code: 554, trips: true},
		{name: "greeting 421", setup: reply(smtptest.StageGreeting, 421, smtp.EnhancedCode{4, 3, 2}),
			want: moved, stage: StageGreeting, code: 421, trips: true},
		{name: "TLS handshake failure", setup: func(_ *testing.T, s *smtptest.Server) string { return s.Addr() },
			relay: func(r *Relay) { r.TLS = TLSVerify }, // the test CA is unknown to the client
			want:  moved, stage: StageStartTLS, trips: true},
		{name: "421 at RCPT", setup: fault(smtptest.StageRcpt, smtptest.Fault{
			Reply: &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "bye"}, Hangup: true}),
			want: moved, stage: StageRcpt, code: 421, trips: true},
		{name: "421 after the final dot", setup: fault(smtptest.StageDataEnd, smtptest.Fault{
			Reply: &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "bye"}, Hangup: true}),
			want: moved, stage: StageDataEnd, code: 421, trips: true},
		{name: "connection lost at MAIL", setup: fault(smtptest.StageMail, smtptest.Fault{Drop: true}),
			want: moved, stage: StageMail, trips: true},
		{name: "connection lost at DATA", setup: fault(smtptest.StageData, smtptest.Fault{Drop: true}),
			want: moved, stage: StageData, trips: true},
		{name: "MAIL timeout", setup: fault(smtptest.StageMail, smtptest.Fault{Delay: time.Hour}),
			timeouts: func(tm *Timeouts) { tm.Mail = 2 * time.Second },
			want:     moved, stage: StageMail, trips: true},
		{name: "megabyte reply line", setup: func(t *testing.T, _ *smtptest.Server) string {
			return longLineServer(t)
		}, want: moved, stage: StageHello, trips: true},
		{name: "450 to MAIL", setup: reply(smtptest.StageMail, 450, smtp.EnhancedCode{4, 7, 1}),
			want: moved, stage: StageMail, code: 450},
		{name: "452 to RCPT", setup: reply(smtptest.StageRcpt, 452, smtp.EnhancedCode{4, 2, 2}),
			want: moved, stage: StageRcpt, code: 452},
		{name: "451 to DATA", setup: reply(smtptest.StageData, 451, smtp.EnhancedCode{4, 7, 1}),
			want: moved, stage: StageData, code: 451},
		{name: "451 4.7.1 after the dot", setup: reply(smtptest.StageDataEnd, 451, smtp.EnhancedCode{4, 7, 1}),
			want: moved, stage: StageDataEnd, code: 451},
		{name: "451 4.3.0 after the dot", setup: reply(smtptest.StageDataEnd, 451, smtp.EnhancedCode{4, 3, 0}),
			want: moved, stage: StageDataEnd, code: 451, trips: true},
		{name: "451 4.3.2 to MAIL", setup: reply(smtptest.StageMail, 451, smtp.EnhancedCode{4, 3, 2}),
			want: moved, stage: StageMail, code: 451, trips: true},
		{name: "550 to RCPT", setup: reply(smtptest.StageRcpt, 550, smtp.EnhancedCode{5, 1, 1}),
			want: [2]Outcome{Permanent, Permanent}, stage: StageRcpt, code: 550},
		{name: "553 to RCPT", setup: reply(smtptest.StageRcpt, 553, smtp.EnhancedCode{5, 1, 3}),
			want: [2]Outcome{Permanent, Permanent}, stage: StageRcpt, code: 553},
		{name: "552 to RCPT (too many recipients)", setup: reply(smtptest.StageRcpt, 552, smtp.EnhancedCode{5, 5, 3}),
			want: moved, stage: StageRcpt, code: 552},
		{name: "550 to MAIL", setup: reply(smtptest.StageMail, 550, smtp.EnhancedCode{5, 7, 1}),
			want: [2]Outcome{Permanent, Permanent}, stage: StageMail, code: 550},
		{name: "554 to DATA", setup: reply(smtptest.StageData, 554, smtp.EnhancedCode{5, 5, 1}),
			want: [2]Outcome{Permanent, Permanent}, stage: StageData, code: 554},
		{name: "552 after the dot (message too big)", setup: reply(smtptest.StageDataEnd, 552, smtp.EnhancedCode{5, 3, 4}),
			want: [2]Outcome{Permanent, Permanent}, stage: StageDataEnd, code: 552},
		{name: "connection lost after the final dot", setup: fault(smtptest.StageDataEnd, smtptest.Fault{Drop: true}),
			want: [2]Outcome{Unknown, Unknown}, stage: StageDataEnd, trips: true},
		{name: "timeout after the final dot", setup: fault(smtptest.StageDataEnd, smtptest.Fault{Delay: time.Hour}),
			timeouts: func(tm *Timeouts) { tm.DataEnd = 2 * time.Second },
			want:     [2]Outcome{Unknown, Unknown}, stage: StageDataEnd, trips: true},
		{name: "one recipient refused, one greylisted", setup: func(_ *testing.T, s *smtptest.Server) string {
			s.SetRcptFault(bob, smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
			s.SetRcptFault(carol, smtptest.Reply(450, smtp.EnhancedCode{4, 2, 1}, "mailbox busy"))
			return s.Addr()
		}, want: [2]Outcome{Permanent, Delivered}, stage: StageRcpt, code: 550},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			t.Parallel()
			a, b := server(t, nil), server(t, nil)
			primary := Relay{Name: "primary", Addr: r.setup(t, a), Priority: 1}
			if r.relay != nil {
				r.relay(&primary)
			}
			tm := testTimeouts
			if r.timeouts != nil {
				r.timeouts(&tm)
			}
			h := &fakeHealth{down: map[string]bool{}}
			c := newTestClient(t, &Options{
				Relays:   []Relay{primary, {Name: "secondary", Addr: b.Addr(), Priority: 2}},
				Breaker:  BreakerOptions{Failures: 1, OpenTimeout: time.Hour},
				Health:   h,
				Timeouts: tm,
			})
			res := mustSend(t, c, testMessage(bob, carol))
			secondaryGot := map[string]int{}
			for _, m := range b.Messages() {
				for _, rc := range m.Rcpts {
					secondaryGot[rc.Addr]++
				}
			}
			for i, rr := range res.Recipients {
				want := r.want[i]
				if rr.Outcome != want {
					t.Errorf("%s: outcome %v, want %v (%+v)", rr.Recipient, rr.Outcome, want, rr)
					continue
				}
				switch {
				case want == Delivered && !r.onPrimary:
					if rr.Host != "secondary" || rr.Attempts != 2 || secondaryGot[rr.Recipient] != 1 {
						t.Errorf("%s: %+v, secondary got it %d times", rr.Recipient, rr, secondaryGot[rr.Recipient])
					}
				case want != Delivered:
					if rr.Host != "primary" || rr.Attempts != 1 || secondaryGot[rr.Recipient] != 0 {
						t.Errorf("%s: %+v, secondary got it %d times", rr.Recipient, rr, secondaryGot[rr.Recipient])
					}
					var e *Error
					if !errors.As(rr.Err, &e) || e.Stage != r.stage || e.Outcome != want {
						t.Errorf("%s: error %v, want stage %v", rr.Recipient, rr.Err, r.stage)
					}
					{
						code := 0
						if rr.Reply != nil {
							code = rr.Reply.Code
						}
						if code != r.code {
							t.Errorf("%s: reply %+v, want code %d", rr.Recipient, rr.Reply, r.code)
						}
					}
				}
			}
			st := c.br.state("primary")
			if r.trips && st != gobreaker.StateOpen {
				t.Errorf("site failure left the breaker %v", st)
			}
			if !r.trips && st != gobreaker.StateClosed {
				t.Errorf("a failure that is not the host's moved the breaker to %v", st)
			}
			h.mu.Lock()
			failed, ok := h.failures["primary"], h.success["primary"]
			h.mu.Unlock()
			if r.trips && failed == 0 || !r.trips && (failed != 0 || ok != 1) {
				t.Errorf("health told: %d failures, %d successes", failed, ok)
			}
		})
	}
}

// longLineServer accepts connections and answers EHLO with a reply line of
// a megabyte that never ends in CRLF within the client's limit: the client
// must give up with bounded memory, not wait for the line to end.
func longLineServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	t.Cleanup(func() {
		close(done)
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				go func() {
					<-done
					nc.Close()
				}()
				nc.SetDeadline(time.Now().Add(time.Minute))
				io.WriteString(nc, "220 long.example.net ESMTP\r\n")
				br := bufio.NewReader(nc)
				if _, err := br.ReadString('\n'); err != nil {
					return
				}
				io.WriteString(nc, "250-"+strings.Repeat("x", 1<<20)+"\r\n250 OK\r\n")
				io.Copy(io.Discard, br)
			})
		}
	})
	return ln.Addr().String()
}
