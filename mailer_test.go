package hamail

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/dnstest"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/metrics"
	"github.com/hamail/hamail/mxresolve"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
	"github.com/hamail/hamail/queue/memqueue"
	"github.com/hamail/hamail/smtpclient"
)

// waitTimeout bounds every wait of these tests; generous, for a loaded
// machine.
const waitTimeout = 30 * time.Second

func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// testRunner retries quickly, so that a test sees several attempts.
func testRunner() *queue.RunnerOptions {
	return &queue.RunnerOptions{
		Concurrency:    4,
		AttemptTimeout: 20 * time.Second,
		Schedule:       queue.Retry{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Jitter: -1},
		PollInterval:   50 * time.Millisecond,
		NoticeRetry:    100 * time.Millisecond,
		ReportingMTA:   "mta.example.org",
	}
}

// testSMTP keeps breakers from holding a restarted relay closed for long.
func testSMTP() *smtpclient.Options {
	return &smtpclient.Options{
		LocalName: "app.example.org",
		Breaker:   smtpclient.BreakerOptions{OpenTimeout: 100 * time.Millisecond},
		Timeouts:  smtpclient.Timeouts{Connect: 5 * time.Second},
	}
}

func relayOf(s interface{ Addr() string }) []smtpclient.Relay {
	return []smtpclient.Relay{{Name: "relay", Addr: s.Addr()}}
}

// open opens a Mailer and shuts it down when the test ends.
func open(t *testing.T, o *Options) *Mailer {
	t.Helper()
	m, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

const body = "From: app@example.org\nTo: bob@example.com\nSubject: hello\n\nHello Bob.\n"

func send(t *testing.T, m *Mailer, to ...string) string {
	t.Helper()
	id, err := m.Send(waitCtx(t), &Message{From: "app@example.org", To: to, Body: strings.NewReader(body)})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// waitEmpty waits until the queue holds nothing.
func waitEmpty(t *testing.T, s queue.Store) {
	t.Helper()
	ctx := waitCtx(t)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := s.Stats(ctx)
		if err == nil && st.Items == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("queue not empty: %+v, %v", st, err)
		case <-tick.C:
		}
	}
}

func TestSendDelivers(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: t.TempDir(), Runner: testRunner()})
	id := send(t, m, "bob@example.com", "carol@example.com")
	if id == "" {
		t.Fatal("empty id")
	}
	msgs, err := relay.WaitMessages(waitCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	got := msgs[0]
	if got.From != "app@example.org" || len(got.Rcpts) != 2 || got.Rcpts[0].Addr != "bob@example.com" || got.Rcpts[1].Addr != "carol@example.com" {
		t.Fatalf("envelope: from %q rcpts %+v", got.From, got.Rcpts)
	}
	want := strings.ReplaceAll(body, "\n", "\r\n")
	if string(got.Body) != want {
		t.Fatalf("body %q, want %q", got.Body, want)
	}
	waitEmpty(t, m.Store())
	if err := m.Shutdown(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	if len(relay.Messages()) != 1 {
		t.Fatalf("%d messages, want 1", len(relay.Messages()))
	}
}

// TestSendIsDurable: once Send returns, the message is in the store on
// disk, whatever happens to the process; a later Mailer on the same
// directory delivers it.
func TestSendIsDurable(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	relay.Stop() // nothing can be delivered yet
	dir := t.TempDir()
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
	id, err := m.Send(waitCtx(t), &Message{From: "app@example.org", To: []string{"bob@example.com"}, Body: strings.NewReader(body),
		EnvID: "env-1", Ret: queue.RetHeaders, Notify: queue.NotifyFailure | queue.NotifyDelay,
		Recipients: []queue.Recipient{{Address: "carol@example.com", Notify: queue.NotifySuccess, ORcpt: "rfc822;carol@old.example"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := bbolt.Open(filepath.Join(dir, "queue.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	it, err := s.Inspect(waitCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if it.Envelope.From != "app@example.org" || it.Envelope.EnvID != "env-1" || it.Envelope.Ret != queue.RetHeaders ||
		len(it.Recipients) != 2 || it.Recipients[0].Notify != queue.NotifyFailure|queue.NotifyDelay || it.Recipients[0].Status != queue.StatusPending ||
		it.Recipients[1].Address != "carol@example.com" || it.Recipients[1].ORcpt != "rfc822;carol@old.example" {
		t.Fatalf("stored item: %+v", it)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	m2 := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
	msgs, err := relay.WaitMessages(waitCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if msgs[0].MailOpts.EnvelopeID != "env-1" || msgs[0].MailOpts.Return != smtp.DSNReturnHeaders {
		t.Fatalf("DSN parameters lost: %+v", msgs[0].MailOpts)
	}
	if r := msgs[0].Rcpts; len(r) != 2 || !reflect.DeepEqual(r[0].Opts.Notify, []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed}) ||
		!reflect.DeepEqual(r[1].Opts.Notify, []smtp.DSNNotify{smtp.DSNNotifySuccess}) || r[1].Opts.OriginalRecipient != "carol@old.example" {
		t.Fatalf("RCPT parameters lost: %+v", r)
	}
	waitEmpty(t, m2.Store())
}

// TestTemporaryFailureRetried: a 451 defers the message; the next attempt
// delivers it.
func TestTemporaryFailureRetried(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	relay.SetFault(smtptest.StageRcpt, smtptest.Fault{Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}, Times: 1})
	var mu sync.Mutex
	var attempts []*queue.Attempt
	ro := testRunner()
	ro.OnAttempt = func(a *queue.Attempt) {
		mu.Lock()
		attempts = append(attempts, a)
		mu.Unlock()
	}
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: t.TempDir(), Runner: ro})
	send(t, m, "bob@example.com")
	if _, err := relay.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, m.Store())
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 2 {
		t.Fatalf("%d attempts, want 2", len(attempts))
	}
	first, second := attempts[0].Results[0], attempts[1].Results[0]
	if first.Outcome != queue.OutcomeTemporary || first.Reply.Code != 451 || first.Reply.Enhanced != "4.3.0" || first.Host != "relay" {
		t.Fatalf("first attempt: %+v", first)
	}
	if second.Outcome != queue.OutcomeDelivered || second.Reply.Code != 250 {
		t.Fatalf("second attempt: %+v", second)
	}
}

// TestPermanentFailureBounces: a 550 to one recipient sends a delivery
// status notification to the sender, through the same route, with a null
// reverse path; the other recipient is delivered.
func TestPermanentFailureBounces(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	relay.SetRcptFault("nobody@example.com", smtptest.Fault{Reply: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}})
	notices := make(chan *queue.Notice, 4)
	ro := testRunner()
	ro.OnNotice = func(_ context.Context, n *queue.Notice) error {
		notices <- n
		return nil
	}
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: t.TempDir(), Runner: ro})
	id := send(t, m, "bob@example.com", "nobody@example.com")
	msgs, err := relay.WaitMessages(waitCtx(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	var dsn *smtptest.Message
	for i := range msgs {
		if msgs[i].From == "" {
			dsn = &msgs[i]
		}
	}
	if dsn == nil || len(dsn.Rcpts) != 1 || dsn.Rcpts[0].Addr != "app@example.org" {
		t.Fatalf("no bounce to the sender among %+v", msgs)
	}
	for _, want := range []string{"multipart/report", "Action: failed", "Final-Recipient: rfc822; nobody@example.com", "5.1.1", "no such user"} {
		if !bytes.Contains(dsn.Body, []byte(want)) {
			t.Errorf("bounce lacks %q:\n%s", want, dsn.Body)
		}
	}
	select {
	case n := <-notices:
		if n.Kind != queue.NoticeFailure || n.ID != id || len(n.Recipients) != 1 || n.Recipients[0].Address != "nobody@example.com" ||
			n.Recipients[0].Reply.Code != 550 || n.Recipients[0].Host != "relay" {
			t.Fatalf("notice: %+v", n)
		}
	case <-waitCtx(t).Done():
		t.Fatal("no notice")
	}
	waitEmpty(t, m.Store())
}

func TestSendRefusesBadInput(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: t.TempDir(), Runner: testRunner()})
	cases := []struct {
		name  string
		msg   *Message
		field string
		addr  bool // the cause is an *smtpclient.AddressError
	}{
		{"nil", nil, "Message", false},
		{"no recipient", &Message{From: "a@example.org", Body: strings.NewReader("x")}, "To", false},
		{"bad recipient", &Message{From: "a@example.org", To: []string{"ok@example.com", "bad address@example.com"}, Body: strings.NewReader("x")}, "To[1]", true},
		{"injection", &Message{From: "a@example.org", To: []string{"x@example.com>\r\nRCPT TO:<y@example.com"}, Body: strings.NewReader("x")}, "To[0]", true},
		{"bad sender", &Message{From: "no-at-sign", To: []string{"b@example.com"}, Body: strings.NewReader("x")}, "From", true},
		{"no body", &Message{From: "a@example.org", To: []string{"b@example.com"}}, "Body", false},
		{"bad DSN recipient", &Message{From: "a@example.org", To: []string{"b@example.com"}, Recipients: []queue.Recipient{{Address: "c@example.com"}, {Address: "@"}},
			Body: strings.NewReader("x")}, "Recipients[1]", true},
		{"bad ORCPT", &Message{From: "a@example.org", Recipients: []queue.Recipient{{Address: "c@example.com", ORcpt: "rfc822;x\r\nQUIT"}},
			Body: strings.NewReader("x")}, "Envelope", false},
	}
	for _, c := range cases {
		_, err := m.Send(waitCtx(t), c.msg)
		var me *MessageError
		if !errors.As(err, &me) || !errors.Is(err, ErrInvalidMessage) || me.Field != c.field {
			t.Errorf("%s: %v (%#v), want a MessageError on %s", c.name, err, me, c.field)
			continue
		}
		var ae *smtpclient.AddressError
		if errors.As(err, &ae) != c.addr {
			t.Errorf("%s: AddressError found = %v", c.name, !c.addr)
		}
	}
	st, err := m.Stats(waitCtx(t))
	if err != nil || st.Items != 0 {
		t.Fatalf("stats %+v %v: something was stored", st, err)
	}
	if n := relay.Stats().Connections; n != 0 {
		t.Fatalf("%d connections", n)
	}
}

// TestUTF8AddressNeedsSMTPUTF8: a non-ASCII address makes the message
// SMTPUTF8 without the caller saying so (RFC 6531 §3.4).
func TestUTF8AddressNeedsSMTPUTF8(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: t.TempDir(), Runner: testRunner()})
	send(t, m, "jürgen@example.com")
	msgs, err := relay.WaitMessages(waitCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !msgs[0].MailOpts.UTF8 || msgs[0].Rcpts[0].Addr != "jürgen@example.com" {
		t.Fatalf("%+v", msgs[0])
	}
}

func TestSendAfterShutdown(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: t.TempDir(), Runner: testRunner()})
	if err := m.Shutdown(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Send(waitCtx(t), &Message{From: "a@example.org", To: []string{"b@example.com"}, Body: strings.NewReader("x")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Shutdown: %v", err)
	}
	if err := m.Shutdown(waitCtx(t)); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close after Shutdown: %v", err)
	}
}

// TestShutdownWaitsForAttempts: an attempt in flight when Shutdown starts
// finishes, and its result is recorded, before Shutdown returns.
func TestShutdownWaitsForAttempts(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	// Hold the reply to the final dot long enough for Shutdown to begin.
	relay.SetFault(smtptest.StageDataEnd, smtptest.Fault{Delay: 500 * time.Millisecond})
	dir := t.TempDir()
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
	send(t, m, "bob@example.com")
	if _, err := relay.Wait(waitCtx(t), func(s smtptest.Stats) bool { return s.Data >= 1 }); err != nil {
		t.Fatal(err)
	}
	if err := m.Shutdown(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	msgs := relay.Messages()
	if len(msgs) != 1 || msgs[0].Unanswered || msgs[0].Reply.Code != 250 {
		t.Fatalf("messages %+v", msgs)
	}
	s, err := bbolt.Open(filepath.Join(dir, "queue.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st, err := s.Stats(waitCtx(t)); err != nil || st.Items != 0 {
		t.Fatalf("after Shutdown the queue holds %+v (%v): the delivery was not recorded", st, err)
	}
}

// TestShutdownCutsAttempts: when the grace period ends, attempts in flight
// are cut and their messages stay queued; the next Mailer on the same
// directory delivers them. Nothing is lost.
func TestShutdownCutsAttempts(t *testing.T) {
	t.Parallel()
	for _, stage := range []smtptest.Stage{smtptest.StageRcpt, smtptest.StageDataEnd} {
		t.Run(stage.String(), func(t *testing.T) {
			t.Parallel()
			relay := smtptest.NewServer(t, nil)
			relay.SetFault(stage, smtptest.Fault{Delay: time.Minute, Times: 1})
			dir := t.TempDir()
			m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
			id := send(t, m, "bob@example.com")
			if _, err := relay.Wait(waitCtx(t), func(s smtptest.Stats) bool {
				if stage == smtptest.StageRcpt {
					return s.Rcpt >= 1
				}
				return s.Data >= 1
			}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
			defer cancel()
			if err := m.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Shutdown: %v, want the grace period's end", err)
			}
			s, err := bbolt.Open(filepath.Join(dir, "queue.db"), nil)
			if err != nil {
				t.Fatal(err)
			}
			it, err := s.Inspect(waitCtx(t), id)
			s.Close()
			if err != nil {
				t.Fatalf("the cut message is not queued: %v", err)
			}
			if stage == smtptest.StageDataEnd && !it.Recipients[0].PossibleDuplicate {
				t.Errorf("cut after the final dot, not flagged as a possible duplicate: %+v", it.Recipients[0])
			}
			before := len(relay.Messages())
			m2 := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
			if _, err := relay.WaitMessages(waitCtx(t), before+1); err != nil {
				t.Fatal(err)
			}
			waitEmpty(t, m2.Store())
		})
	}
}

// TestCrashLikeStop: the store is closed under a running Mailer, as a crash
// would leave it; a new Mailer on the same directory still delivers.
func TestCrashLikeStop(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	relay.Stop()
	dir := t.TempDir()
	// A message leased when the process died waits for its lease to
	// expire: keep leases short here.
	ro := testRunner()
	ro.AttemptTimeout, ro.LeaseDuration = time.Second, 2*time.Second
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: ro})
	send(t, m, "bob@example.com")
	send(t, m, "carol@example.com")
	if err := m.Store().Close(); err != nil {
		t.Fatal(err)
	}
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	m2 := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
	if _, err := relay.WaitMessages(waitCtx(t), 2); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, m2.Store())
	if err := m.Shutdown(waitCtx(t)); err != nil {
		t.Fatalf("Shutdown of the crashed Mailer: %v", err)
	}
}

// TestDirectMX delivers to the domain's exchangers found in DNS, moving to
// the backup MX when the primary is down.
func TestDirectMX(t *testing.T) {
	t.Parallel()
	mx1 := smtptest.NewServer(t, &smtptest.Options{Domain: "mx1.example.com"})
	mx2 := smtptest.NewServer(t, &smtptest.Options{Domain: "mx2.example.com"})
	_, port1, _ := net.SplitHostPort(mx1.Addr())
	// Both exchangers must listen on the MX port: put mx2 on 127.0.0.2.
	mx2.Stop()
	mx2b, err := smtptest.New(&smtptest.Options{Domain: "mx2.example.com", Addr: "127.0.0.2:" + port1})
	if err != nil {
		t.Fatal(err)
	}
	if err := mx2b.Start(); err != nil {
		t.Skipf("cannot listen on 127.0.0.2:%s: %v", port1, err)
	}
	t.Cleanup(func() { mx2b.Stop() })

	dns := dnstest.Start(t)
	dns.AddSOA("example.com", 60, 60)
	dns.AddMX("example.com", 60, 10, "mx1.example.com")
	dns.AddMX("example.com", 60, 20, "mx2.example.com")
	dns.AddA("mx1.example.com", 60, "127.0.0.1")
	dns.AddA("mx2.example.com", 60, "127.0.0.2")
	dns.AddSOA("nx.example", 60, 60)
	dns.SetFault("nx.example", 0, dnstest.NXDomain)
	dns.SetFault("broken.example", 0, dnstest.ServFail)
	fallback := smtptest.NewServer(t, nil)

	port, _ := strconv.Atoi(port1)
	so := testSMTP()
	so.MXPort = port
	resolver := mxresolve.New(&mxresolve.Options{Nameservers: []string{dns.Addr()}, Timeout: 2 * time.Second, AddressPolicy: mxresolve.IPv4Only})
	notices := make(chan *queue.Notice, 4)
	ro := testRunner()
	ro.NoDSN = true
	ro.OnNotice = func(_ context.Context, n *queue.Notice) error {
		notices <- n
		return nil
	}
	m := open(t, &Options{Resolver: resolver, FallbackRelays: relayOf(fallback), SMTP: so, Dir: t.TempDir(), Runner: ro})
	send(t, m, "bob@example.com")
	if _, err := mx1.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatal(err)
	}
	mx1.Stop()
	send(t, m, "carol@example.com", "dave@nx.example", "erin@broken.example")
	msgs, err := mx2b.WaitMessages(waitCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs[0].Rcpts) != 1 || msgs[0].Rcpts[0].Addr != "carol@example.com" {
		t.Fatalf("backup MX got %+v", msgs[0].Rcpts)
	}
	// A DNS failure is temporary: the fallback relay takes the recipient.
	fb, err := fallback.WaitMessages(waitCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if fb[0].Rcpts[0].Addr != "erin@broken.example" {
		t.Fatalf("fallback relay got %+v", fb[0].Rcpts)
	}
	select {
	case n := <-notices:
		r := n.Recipients[0]
		if r.Address != "dave@nx.example" || r.Status != queue.StatusFailed || r.Reply.Enhanced != "5.1.2" {
			t.Fatalf("NXDOMAIN notice: %+v", r)
		}
	case <-waitCtx(t).Done():
		t.Fatal("no notice for the non-existent domain")
	}
	waitEmpty(t, m.Store())
}

// TestUserHooksChained: the caller's own smtpclient hooks and runner hooks
// still run when the Mailer adds its own.
func TestUserHooksChained(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	var sessions, attempts atomic.Int32
	so := testSMTP()
	so.Hooks = &smtpclient.Hooks{AttemptDone: func(smtpclient.Attempt) { sessions.Add(1) }}
	ro := testRunner()
	ro.OnAttempt = func(*queue.Attempt) { attempts.Add(1) }
	m := open(t, &Options{Relays: relayOf(relay), SMTP: so, Dir: t.TempDir(), Runner: ro, Metrics: newTestMetrics(t)})
	send(t, m, "bob@example.com")
	waitEmpty(t, m.Store())
	if err := m.Shutdown(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	if sessions.Load() != 1 || attempts.Load() != 1 {
		t.Fatalf("user hooks: %d sessions, %d attempts", sessions.Load(), attempts.Load())
	}
}

func TestOpenRefusesBadOptions(t *testing.T) {
	t.Parallel()
	if _, err := Open(&Options{Dir: t.TempDir()}); !errors.Is(err, smtpclient.ErrNoRoute) {
		t.Errorf("no route: %v", err)
	}
	if _, err := Open(&Options{Relays: []smtpclient.Relay{{Addr: "127.0.0.1:1"}}}); !errors.Is(err, ErrNoQueue) {
		t.Errorf("no Dir and no Store: %v, want ErrNoQueue", err)
	}
	if _, err := Open(nil); err == nil {
		t.Error("nil options: no error")
	}
}

func newTestMetrics(t *testing.T) *metrics.Metrics {
	t.Helper()
	mt, err := metrics.New(prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return mt
}

// TestConcurrentSendsAndShutdown: Sends race with Shutdown. Each either
// fails (ErrClosed, or the store closing under it) or returned an ID, and
// every message with an ID is delivered, by this Mailer or the next one on
// the same directory.
func TestConcurrentSendsAndShutdown(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	dir := t.TempDir()
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
	const senders, each = 6, 15
	var (
		mu       sync.Mutex
		accepted = map[string]bool{} // Message-IDs of the messages Send took
		wg       sync.WaitGroup
		started  = make(chan struct{}, senders*each)
	)
	for g := range senders {
		wg.Go(func() {
			for i := range each {
				mid := fmt.Sprintf("<%d.%d@example.org>", g, i)
				_, err := m.Send(t.Context(), &Message{From: "app@example.org", To: []string{"bob@example.com"},
					Body: strings.NewReader("Message-ID: " + mid + "\nSubject: x\n\nx\n")})
				started <- struct{}{}
				if err == nil {
					mu.Lock()
					accepted[mid] = true
					mu.Unlock()
				} else if !errors.Is(err, ErrClosed) && !errors.Is(err, queue.ErrClosed) {
					t.Errorf("Send: %v", err)
				}
			}
		})
	}
	for range senders * each / 3 {
		<-started
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	_ = m.Shutdown(ctx) // may cut attempts: they stay queued
	cancel()
	wg.Wait()

	m2 := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
	waitEmpty(t, m2.Store())
	got := map[string]bool{}
	for _, msg := range relay.Messages() {
		if msg.Unanswered || msg.Reply.Code != 250 {
			continue
		}
		for _, line := range strings.Split(string(msg.Body), "\r\n") {
			if v, ok := strings.CutPrefix(line, "Message-ID: "); ok {
				got[v] = true
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(accepted) == 0 {
		t.Fatal("no Send succeeded before Shutdown")
	}
	for mid := range accepted {
		if !got[mid] {
			t.Errorf("%s accepted by Send, never delivered", mid)
		}
	}
}

// TestRoutingOptions: the Mailer's routing fields override SMTP's, SMTP's
// are used when they are not set, and a health view that says a relay is
// down sends the mail to the next tier.
func TestRoutingOptions(t *testing.T) {
	t.Parallel()
	primary, backup := smtptest.NewServer(t, nil), smtptest.NewServer(t, nil)
	relays := []smtpclient.Relay{{Name: "primary", Addr: primary.Addr(), Priority: 1}, {Name: "backup", Addr: backup.Addr(), Priority: 2}}

	// Relays only in SMTP.
	so := testSMTP()
	so.Relays = relays[:1]
	m := open(t, &Options{SMTP: so, Dir: t.TempDir(), Runner: testRunner()})
	send(t, m, "bob@example.com")
	if _, err := primary.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatal(err)
	}

	// Options.Relays override SMTP.Relays; the checker says primary is down.
	checker := health.New(&health.Options{Fall: 1})
	if err := checker.AddTarget(health.Target{Name: "primary", Address: primary.Addr()}); err != nil {
		t.Fatal(err)
	}
	checker.ReportFailure("primary", errors.New("down for maintenance"))
	so2 := testSMTP()
	so2.Relays = []smtpclient.Relay{{Name: "elsewhere", Addr: "127.0.0.1:1"}}
	m2 := open(t, &Options{Relays: relays, SMTP: so2, Health: checker, Dir: t.TempDir(), Runner: testRunner()})
	send(t, m2, "carol@example.com")
	msgs, err := backup.WaitMessages(waitCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if msgs[0].Rcpts[0].Addr != "carol@example.com" || len(primary.Messages()) != 1 {
		t.Fatalf("backup got %+v; primary has %d", msgs[0].Rcpts, len(primary.Messages()))
	}
	if so2.Health != nil || so2.Relays[0].Name != "elsewhere" {
		t.Fatal("the caller's SMTP options were modified")
	}
}

// TestCallerStore: a store passed in Options.Store is used and left open.
func TestCallerStore(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	store := memqueue.New(nil)
	defer store.Close()
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Store: store, Dir: "/nonexistent/not/used", Runner: testRunner()})
	if m.Store() != store {
		t.Fatal("Store() is not the caller's store")
	}
	send(t, m, "bob@example.com")
	if _, err := relay.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, store)
	if err := m.Shutdown(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Stats(waitCtx(t)); err != nil {
		t.Fatalf("the caller's store was closed: %v", err)
	}
}

// blockingBody yields its first bytes, then waits for release before EOF.
type blockingBody struct {
	first   bool
	reading chan struct{}
	release chan struct{}
}

func (b *blockingBody) Read(p []byte) (int, error) {
	if !b.first {
		b.first = true
		close(b.reading)
		return copy(p, "Subject: slow\r\n\r\n"), nil
	}
	<-b.release
	return 0, io.EOF
}

// TestShutdownWaitsForSends: a Send still reading its body when Shutdown
// begins completes, and its message is stored, before the store closes;
// Close does not wait for it, and that Send then fails instead of
// claiming a message that was not stored.
func TestShutdownWaitsForSends(t *testing.T) {
	t.Parallel()
	for _, graceful := range []bool{true, false} {
		t.Run(fmt.Sprintf("graceful=%v", graceful), func(t *testing.T) {
			t.Parallel()
			relay := smtptest.NewServer(t, nil)
			relay.Stop()
			dir := t.TempDir()
			m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
			b := &blockingBody{reading: make(chan struct{}), release: make(chan struct{})}
			type result struct {
				id  string
				err error
			}
			sent := make(chan result, 1)
			go func() {
				id, err := m.Send(t.Context(), &Message{From: "app@example.org", To: []string{"bob@example.com"}, Body: b})
				sent <- result{id, err}
			}()
			<-b.reading
			shut := make(chan error, 1)
			go func() {
				if graceful {
					shut <- m.Shutdown(waitCtx(t))
				} else {
					shut <- m.Close()
				}
			}()
			var r result
			if graceful {
				select {
				case err := <-shut:
					t.Fatalf("Shutdown returned (%v) while a Send was in progress", err)
				case <-time.After(100 * time.Millisecond):
				}
				close(b.release)
				r = <-sent
				if err := <-shut; err != nil {
					t.Fatal(err)
				}
				if r.err != nil {
					t.Fatalf("Send during a graceful Shutdown: %v", r.err)
				}
			} else {
				if err := <-shut; err != nil {
					t.Fatal(err)
				}
				close(b.release)
				r = <-sent
				if r.err == nil {
					t.Fatalf("Send claimed %s after Close closed the store", r.id)
				}
			}
			s, err := bbolt.Open(filepath.Join(dir, "queue.db"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			st, err := s.Stats(waitCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1, false: 0}[graceful]; st.Items != want {
				t.Fatalf("%d items stored, want %d", st.Items, want)
			}
		})
	}
}

// TestLostReplyRetried: the connection drops after the final dot, before
// the reply. The outcome is unknown, so the message is sent again (a
// possible duplicate, never a loss).
func TestLostReplyRetried(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	relay.SetFault(smtptest.StageDataEnd, smtptest.Fault{Drop: true, Times: 1})
	outcomes := make(chan queue.Outcome, 4)
	ro := testRunner()
	ro.OnAttempt = func(a *queue.Attempt) { outcomes <- a.Results[0].Outcome }
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: t.TempDir(), Runner: ro})
	send(t, m, "bob@example.com")
	msgs, err := relay.WaitMessages(waitCtx(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	if !msgs[0].Unanswered || msgs[1].Unanswered || msgs[1].Reply.Code != 250 {
		t.Fatalf("first unanswered, second accepted? %+v / %+v", msgs[0].Reply, msgs[1].Reply)
	}
	waitEmpty(t, m.Store())
	if first, second := <-outcomes, <-outcomes; first != queue.OutcomeUnknown || second != queue.OutcomeDelivered {
		t.Fatalf("outcomes %v, %v", first, second)
	}
}
