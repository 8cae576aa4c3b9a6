package smtpclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/internal/syncbuf"
	"github.com/sony/gobreaker/v2"
)

func TestEightBitMIME(t *testing.T) {
	t.Parallel()
	offered := server(t, nil)
	caps := smtptest.DefaultCapabilities()
	caps.EightBitMIME = false
	// This server refuses BODY=8BITMIME with 555 5.5.4 because it does not
	// advertise the extension (RFC 5321 §4.1.1.11).
	notOffered := server(t, &caps)
	for _, s := range []*smtptest.Server{offered, notOffered} {
		c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: s.Addr()}}})
		m := testMessage("bob@example.com")
		m.EightBit = true
		if rr := mustSend(t, c, m).Recipients[0]; rr.Outcome != Delivered {
			t.Fatalf("%+v", rr)
		}
	}
	if got := offered.Messages()[0].MailOpts.Body; got != smtp.Body8BitMIME {
		t.Errorf("BODY=%q where 8BITMIME is offered", got)
	}
	if got := notOffered.Messages()[0].MailOpts.Body; got != "" {
		t.Errorf("BODY=%q where 8BITMIME is not offered", got)
	}
}

// openCounter is a Message.Open that counts the readers it opens and
// closes.
type openCounter struct {
	body           string
	opened, closed atomic.Int32
	fail           error
}

func (o *openCounter) open() (io.ReadCloser, error) {
	if o.fail != nil {
		return nil, o.fail
	}
	o.opened.Add(1)
	return readCloser{strings.NewReader(o.body), &o.closed}, nil
}

type readCloser struct {
	io.Reader
	closed *atomic.Int32
}

func (r readCloser) Close() error { r.closed.Add(1); return nil }

func TestOpenedBodyIsReadAgainOnTheNextHost(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	// The primary takes the whole body, then defers it: the secondary must
	// get the whole body again from a fresh reader.
	a.SetFault(smtptest.StageDataEnd, smtptest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "try later"))
	oc := &openCounter{body: "Subject: reopened\r\n\r\n" + strings.Repeat("line of the body\r\n", 1000)}
	c := newTestClient(t, &Options{Relays: twoRelays(a.Addr(), b.Addr())})
	m := &Message{From: "sender@example.org", To: []Recipient{{Addr: "bob@example.com"}}, Open: oc.open, Size: int64(len(oc.body))}
	if rr := mustSend(t, c, m).Recipients[0]; rr.Outcome != Delivered || rr.Host != "secondary" {
		t.Fatalf("%+v", rr)
	}
	if oc.opened.Load() != 2 || oc.closed.Load() != 2 {
		t.Fatalf("opened %d, closed %d readers; want one per attempt, each closed", oc.opened.Load(), oc.closed.Load())
	}
	if got := b.Messages()[0].Body; string(got) != oc.body {
		t.Fatalf("secondary got %d bytes, want %d", len(got), len(oc.body))
	}

	t.Run("open fails", func(t *testing.T) {
		t.Parallel()
		s := server(t, nil)
		errGone := errors.New("spool file gone")
		c := newTestClient(t, &Options{Relays: []Relay{{Name: "s", Addr: s.Addr()}}})
		m := &Message{From: "sender@example.org", To: []Recipient{{Addr: "bob@example.com"}}, Open: (&openCounter{fail: errGone}).open}
		rr := mustSend(t, c, m).Recipients[0]
		if rr.Outcome != Temporary || !errors.Is(rr.Err, errGone) {
			t.Fatalf("%+v", rr)
		}
		if st := s.Stats(); st.Mail != 0 {
			t.Fatalf("a transaction was started without a body: %+v", st)
		}
		if st := c.br.state("s"); st != gobreaker.StateClosed {
			t.Fatalf("a local failure counted against the host: %v", st)
		}
	})
}

// TestConnectTimeout: a relay whose connect never completes (a firewall
// dropping SYNs) is given up after Timeouts.Connect, the next relay takes
// the message, and the failure counts against the relay.
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	b := server(t, nil)
	var deadline atomic.Value
	d := dialFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr != "192.0.2.1:25" {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
		dl, _ := ctx.Deadline()
		deadline.Store(time.Until(dl))
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	})
	var logs syncbuf.Buffer
	tm := testTimeouts
	tm.Connect = time.Second
	c := newTestClient(t, &Options{
		Relays:   twoRelays("192.0.2.1:25", b.Addr()),
		Dialer:   d,
		Timeouts: tm,
		Breaker:  BreakerOptions{Failures: 1, OpenTimeout: time.Hour},
		Logger:   slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
	if rr.Outcome != Delivered || rr.Host != "secondary" || rr.Attempts != 2 {
		t.Fatalf("%+v", rr)
	}
	if got, _ := deadline.Load().(time.Duration); got <= 0 || got > tm.Connect {
		t.Fatalf("dial context deadline in %v, want at most the connect timeout %v", got, tm.Connect)
	}
	if st := c.br.state("primary"); st != gobreaker.StateOpen {
		t.Fatalf("connect timeout left the breaker %v", st)
	}
	if l := logs.String(); !strings.Contains(l, "attempt failed") || !strings.Contains(l, "host=primary") {
		t.Fatalf("no warning logged for the failed attempt:\n%s", l)
	}
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

// TestStalledRelayDataBlockTimeout: a relay that stops reading the body
// (its buffers full) is given up after Timeouts.DataBlock, before the final
// dot, so the outcome is known and the next relay delivers it once.
func TestStalledRelayDataBlockTimeout(t *testing.T) {
	t.Parallel()
	a := smtptest.NewServer(t, &smtptest.Options{DiscardBodies: true})
	b := smtptest.NewServer(t, &smtptest.Options{DiscardBodies: true})
	a.SetFault(smtptest.StageBody, smtptest.Fault{Delay: time.Hour})
	tm := testTimeouts
	// Long enough for the healthy relay, whose reading the race detector
	// and a loaded machine slow down; the stalled one costs this much.
	tm.DataBlock = 3 * time.Second
	c := newTestClient(t, &Options{Relays: twoRelays(a.Addr(), b.Addr()), Timeouts: tm, Breaker: BreakerOptions{Failures: 1}})
	// More than the loopback socket buffers hold, so the writer blocks.
	line := strings.Repeat("z", 78) + "\r\n"
	const size = 80 * 150_000 // whole lines, so the size arrives unchanged; three times the usual Linux maximum send buffer
	m := &Message{From: "sender@example.org", To: []Recipient{{Addr: "bob@example.com"}}, Size: size,
		Open: func() (io.ReadCloser, error) {
			return io.NopCloser(smtptest.RepeatedBody(line, size)), nil
		}}
	rr := mustSend(t, c, m).Recipients[0]
	if rr.Outcome != Delivered || rr.Host != "secondary" || rr.Attempts != 2 {
		t.Fatalf("%+v", rr)
	}
	if msgs := b.Messages(); len(msgs) != 1 || msgs[0].Size != size {
		t.Fatalf("secondary: %d messages, want one of %d octets", len(msgs), size)
	}
	if len(a.Messages()) != 0 {
		t.Fatal("the stalled relay completed the message")
	}
	if st := c.br.state("primary"); st != gobreaker.StateOpen {
		t.Fatalf("a stalled relay left the breaker %v", st)
	}
}

func TestSTARTTLSStrippedUnderVerify(t *testing.T) {
	t.Parallel()
	caps := smtptest.DefaultCapabilities()
	caps.StartTLS = false
	a, b := server(t, &caps), server(t, nil)
	relays := twoRelays(a.Addr(), b.Addr())
	relays[0].TLS, relays[0].TLSConfig = TLSVerify, a.ClientTLSConfig("")
	relays[1].TLS, relays[1].TLSConfig = TLSVerify, b.ClientTLSConfig("")
	c := newTestClient(t, &Options{Relays: relays})
	rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
	if rr.Outcome != Delivered || rr.Host != "secondary" || b.Messages()[0].TLS == nil {
		t.Fatalf("%+v", rr)
	}
	if st := a.Stats(); st.Mail != 0 {
		t.Fatalf("sent to a server without STARTTLS under verify: %+v", st)
	}
	if n := c.Stats().Hosts["primary"].Open; n != 0 {
		t.Fatalf("%d connections kept to a host that failed the TLS policy", n)
	}
}

// TestPooledConnectionClosedWhileIdle: the server closed a pooled
// connection while it sat idle (a server's own idle timeout). The next Send
// finds out at RSET, pipelined with the transaction or not, and reconnects
// once without the caller noticing; nothing is delivered twice.
func TestPooledConnectionClosedWhileIdle(t *testing.T) {
	t.Parallel()
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			t.Parallel()
			caps := smtptest.DefaultCapabilities()
			caps.Pipelining = pipelining
			a := server(t, &caps)
			c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}, Pool: PoolOptions{IdleTimeout: time.Minute}})
			mustSend(t, c, testMessage("bob@example.com"))
			a.CloseConnections()
			if err := a.WaitIdle(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			rr := mustSend(t, c, testMessage("carol@example.com")).Recipients[0]
			if rr.Outcome != Delivered || rr.Attempts != 1 {
				t.Fatalf("%+v", rr)
			}
			if s := c.Stats().Hosts["a"]; s.Dials != 2 || s.Reuses != 1 {
				t.Fatalf("pool %+v, want a reuse that failed and one new connection", s)
			}
			if msgs := a.Messages(); len(msgs) != 2 || msgs[1].Rcpts[0].Addr != "carol@example.com" {
				t.Fatalf("%d messages", len(msgs))
			}
		})
	}
}

// TestDSNLeftOutWithoutExtension: DSN parameters are advisory (RFC 3461
// §4): a server without DSN gets the message without them (it would refuse
// them with 555), rather than no message.
func TestDSNLeftOutWithoutExtension(t *testing.T) {
	t.Parallel()
	caps := smtptest.DefaultCapabilities()
	caps.DSN = false
	a := server(t, &caps)
	c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}})
	m := testMessage("bob@example.com")
	m.EnvelopeID, m.Return = "env-2", smtp.DSNReturnFull
	m.To[0].Notify = []smtp.DSNNotify{smtp.DSNNotifyFailure}
	m.To[0].OriginalRecipient = "bob@example.com"
	if rr := mustSend(t, c, m).Recipients[0]; rr.Outcome != Delivered {
		t.Fatalf("%+v", rr)
	}
	got := a.Messages()[0]
	if got.MailOpts.EnvelopeID != "" || got.MailOpts.Return != "" || len(got.Rcpts[0].Opts.Notify) != 0 || got.Rcpts[0].Opts.OriginalRecipient != "" {
		t.Fatalf("DSN parameters sent to a server without DSN: %+v %+v", got.MailOpts, got.Rcpts[0].Opts)
	}
}

// TestConnectionLostBetweenBatches: with more recipients than
// MaxRecipients, the first transaction is delivered, then the connection
// dies in the second. The second batch goes to the next relay; the first
// is never sent again.
func TestConnectionLostBetweenBatches(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	a.SetRcptFault("r3@example.com", smtptest.Fault{Drop: true})
	c := newTestClient(t, &Options{Relays: twoRelays(a.Addr(), b.Addr()), MaxRecipients: 2})
	res := mustSend(t, c, testMessage("r1@example.com", "r2@example.com", "r3@example.com", "r4@example.com"))
	for i, rr := range res.Recipients {
		want := "primary"
		if i >= 2 {
			want = "secondary"
		}
		if rr.Outcome != Delivered || rr.Host != want {
			t.Errorf("%s: %+v", rr.Recipient, rr)
		}
	}
	if msgs := a.Messages(); len(msgs) != 1 || len(msgs[0].Rcpts) != 2 {
		t.Fatalf("primary: %+v", msgs)
	}
	if msgs := b.Messages(); len(msgs) != 1 || len(msgs[0].Rcpts) != 2 || msgs[0].Rcpts[0].Addr != "r3@example.com" || msgs[0].Rcpts[1].Addr != "r4@example.com" {
		t.Fatalf("secondary: %+v", msgs)
	}
}

// failingBody is a ReaderAt whose reads fail past a point, like a spool
// file on a failing disk.
type failingBody struct {
	data   []byte
	failAt int64
}

var errDisk = errors.New("read error on the spool disk")

func (f failingBody) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.failAt {
		return 0, errDisk
	}
	n := copy(p, f.data[off:min(int64(len(f.data)), f.failAt)])
	return n, nil
}

// TestBodyReadErrorDeliversNothing: when the body cannot be read to its
// end, the final dot is never sent (a truncated message must not be
// delivered), the failure is not the host's, and the recipients stay
// temporary for a later retry rather than being tried on other hosts with
// the same broken body.
func TestBodyReadErrorDeliversNothing(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	data := bytes.Repeat([]byte("line of a body that will not be read to its end\r\n"), 2000)
	c := newTestClient(t, &Options{Relays: twoRelays(a.Addr(), b.Addr()), Breaker: BreakerOptions{Failures: 1}})
	m := testMessage("bob@example.com")
	m.Body, m.Size = failingBody{data: data, failAt: int64(len(data) / 2)}, int64(len(data))
	rr := mustSend(t, c, m).Recipients[0]
	var e *Error
	if rr.Outcome != Temporary || !errors.Is(rr.Err, errDisk) || !errors.As(rr.Err, &e) || e.Stage != StageBody || rr.Attempts != 1 {
		t.Fatalf("%+v", rr)
	}
	if _, err := a.Wait(testCtx(t), func(s smtptest.Stats) bool { return s.Open == 0 }); err != nil {
		t.Fatal(err)
	}
	if n := len(a.Messages()) + len(b.Messages()); n != 0 {
		t.Fatalf("%d truncated messages delivered", n)
	}
	if st := c.br.state("primary"); st != gobreaker.StateClosed {
		t.Fatalf("a local read error counted against the host: %v", st)
	}
}

func TestAuthMechanismNotOffered(t *testing.T) {
	t.Parallel()
	caps := smtptest.DefaultCapabilities()
	caps.Auth = []string{"LOGIN"}
	a, b := server(t, &caps), server(t, nil)
	relays := twoRelays(a.Addr(), b.Addr())
	relays[0].Auth = &Auth{Mechanism: AuthPlain, Username: "alice", Password: "s3cret-pa55"}
	relays[0].TLS = TLSEncrypt
	c := newTestClient(t, &Options{Relays: relays})
	res := mustSend(t, c, testMessage("bob@example.com"))
	rr := res.Recipients[0]
	if rr.Outcome != Delivered || rr.Host != "secondary" {
		t.Fatalf("%+v", rr)
	}
	if st := a.Stats(); st.Auth != 0 || st.Mail != 0 {
		t.Fatalf("primary: %+v", st)
	}
	// Alone, the relay's refusal is what the caller sees.
	c = newTestClient(t, &Options{Relays: relays[:1]})
	rr = mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
	if rr.Outcome != Temporary || !errors.Is(rr.Err, ErrAuthUnsupported) {
		t.Fatalf("%+v", rr)
	}
}

// TestConcurrentSendsSurviveARelayDying: many Sends share two relays of one
// tier; one relay dies in the middle of the run, cutting whatever sessions
// it had. Every message ends delivered exactly once, except those cut
// after their final dot, which are reported Unknown and exist at most once.
func TestConcurrentSendsSurviveARelayDying(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	c := newTestClient(t, &Options{
		Relays:  []Relay{{Name: "a", Addr: a.Addr()}, {Name: "b", Addr: b.Addr()}},
		Pool:    PoolOptions{MaxPerHost: 4, IdleTimeout: time.Minute},
		Breaker: BreakerOptions{Failures: 2, OpenTimeout: time.Hour},
	})
	const senders, each = 6, 15
	outcomes := make([][]RecipientResult, senders)
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for i := range each {
				res, err := c.Send(testCtx(t), testMessage(fmt.Sprintf("r%d-%d@example.com", g, i)))
				if err != nil {
					t.Errorf("send %d-%d: %v", g, i, err)
					return
				}
				outcomes[g] = append(outcomes[g], res.Recipients[0])
			}
		})
	}
	if _, err := a.Wait(testCtx(t), func(s smtptest.Stats) bool { return s.Messages >= 10 }); err != nil {
		t.Fatal(err)
	}
	a.Stop()
	wg.Wait()

	copies := map[string]int{}
	for _, s := range []*smtptest.Server{a, b} {
		for _, m := range s.Messages() {
			for _, r := range m.Rcpts {
				copies[r.Addr]++
			}
		}
	}
	var unknown int
	for _, rs := range outcomes {
		for _, rr := range rs {
			switch rr.Outcome {
			case Delivered:
				if copies[rr.Recipient] != 1 {
					t.Errorf("%s delivered by %s, %d copies exist", rr.Recipient, rr.Host, copies[rr.Recipient])
				}
			case Unknown:
				unknown++
				if copies[rr.Recipient] > 1 {
					t.Errorf("%s unknown, %d copies exist", rr.Recipient, copies[rr.Recipient])
				}
			default:
				t.Errorf("%s: %+v", rr.Recipient, rr)
			}
		}
	}
	n := 0
	for _, rs := range outcomes {
		n += len(rs)
	}
	if n != senders*each {
		t.Fatalf("%d results for %d messages", n, senders*each)
	}
	t.Logf("%d messages, %d unknown after the relay died", senders*each, unknown)
}

// TestCloseWhileSendsWait: Close during Sends makes those waiting for a
// connection fail temporarily with ErrClosed, without blaming the host,
// while the session in progress finishes its delivery.
func TestCloseWhileSendsWait(t *testing.T) {
	t.Parallel()
	a := server(t, nil)
	h := &fakeHealth{down: map[string]bool{}}
	c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}, Pool: PoolOptions{MaxPerHost: 1}, Health: h})
	// The first session holds the only connection until Close is done:
	// its body is not read before then, however slow the machine.
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	results := make(chan RecipientResult, 2)
	for _, rcpt := range []string{"first@example.com", "second@example.com"} {
		m := testMessage(rcpt)
		if rcpt == "first@example.com" {
			m.Body = gatedBody{r: m.Body, gate: release}
		}
		go func() {
			res, err := c.Send(testCtx(t), m)
			if err != nil {
				t.Errorf("%s: %v", rcpt, err)
				results <- RecipientResult{Recipient: rcpt}
				return
			}
			results <- res.Recipients[0]
		}()
		if rcpt == "first@example.com" {
			if _, err := a.Wait(testCtx(t), func(s smtptest.Stats) bool { return s.Mail == 1 }); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for c.Stats().Hosts["a"].Waiting != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the second Send never waited for the connection")
		}
		time.Sleep(time.Millisecond)
	}
	c.Close()
	releaseOnce.Do(func() { close(release) })
	got := map[string]RecipientResult{}
	for range 2 {
		rr := <-results
		got[rr.Recipient] = rr
	}
	if rr := got["first@example.com"]; rr.Outcome != Delivered {
		t.Errorf("session in progress: %+v", rr)
	}
	if rr := got["second@example.com"]; rr.Outcome != Temporary || !errors.Is(rr.Err, ErrClosed) {
		t.Errorf("waiting Send: %+v", rr)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failures["a"] != 0 {
		t.Errorf("closing the client was reported as %d host failures", h.failures["a"])
	}
}

// gatedBody is a body whose reads wait until gate is closed.
type gatedBody struct {
	r    io.ReaderAt
	gate <-chan struct{}
}

func (g gatedBody) ReadAt(p []byte, off int64) (int, error) {
	<-g.gate
	return g.r.ReadAt(p, off)
}

// TestAllPooledConnectionsClosedWhileIdle: the server dropped every idle
// session to it (a restart, or its idle timeout), and the pool holds two.
// With PIPELINING the stale session is found out inside the transaction;
// the one repeat goes on a new connection, not on the other stale one, so
// the message is delivered on the first attempt and the healthy host is
// not blamed.
func TestAllPooledConnectionsClosedWhileIdle(t *testing.T) {
	t.Parallel()
	a := server(t, nil) // PIPELINING by default
	h := &fakeHealth{down: map[string]bool{}}
	c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}, Pool: PoolOptions{IdleTimeout: time.Minute},
		Breaker: BreakerOptions{Failures: 1}, Health: h})
	// Two sessions at once leave two idle connections: the first holds
	// its connection (its body is not read) while the second opens one.
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	first := testMessage("bob@example.com")
	first.Body = gatedBody{r: first.Body, gate: release}
	done := make(chan RecipientResult, 1)
	go func() {
		res, err := c.Send(testCtx(t), first)
		if err != nil {
			t.Error(err)
			done <- RecipientResult{}
			return
		}
		done <- res.Recipients[0]
	}()
	if _, err := a.Wait(testCtx(t), func(s smtptest.Stats) bool { return s.Mail == 1 }); err != nil {
		t.Fatal(err)
	}
	mustSend(t, c, testMessage("carol@example.com"))
	releaseOnce.Do(func() { close(release) })
	if rr := <-done; rr.Outcome != Delivered {
		t.Fatalf("first: %+v", rr)
	}
	if s := c.Stats().Hosts["a"]; s.Idle != 2 {
		t.Fatalf("pool %+v, want two idle connections", s)
	}

	a.CloseConnections()
	if err := a.WaitIdle(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	rr := mustSend(t, c, testMessage("dave@example.com")).Recipients[0]
	if rr.Outcome != Delivered || rr.Attempts != 1 {
		t.Fatalf("%+v", rr)
	}
	if s := c.Stats().Hosts["a"]; s.Dials != 3 || s.Reuses != 1 {
		t.Fatalf("pool %+v, want one stale reuse and one new connection", s)
	}
	if st := c.br.state("a"); st != gobreaker.StateClosed {
		t.Fatalf("stale pooled sessions counted against the host: %v", st)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failures["a"] != 0 {
		t.Fatalf("stale pooled sessions reported as %d host failures", h.failures["a"])
	}
}

// TestContextEndsAfterLastTransaction: a context that ends once the last
// transaction has run leaves the delivery as it is and the attempt not
// failed (Attempt.Err is nil when the transaction ran); the connection,
// whose state the cancellation may have interrupted, is not kept.
func TestContextEndsAfterLastTransaction(t *testing.T) {
	t.Parallel()
	a := server(t, nil)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var mu sync.Mutex
	var attempts []Attempt
	c := newTestClient(t, &Options{
		Relays: []Relay{{Name: "a", Addr: a.Addr()}},
		Hooks: &Hooks{
			Reply: func(_ HostInfo, s Stage, _ string, _ Reply) {
				if s == StageDataEnd {
					cancel()
				}
			},
			AttemptDone: func(at Attempt) { mu.Lock(); attempts = append(attempts, at); mu.Unlock() },
		},
	})
	// Send says the context ended; the result still tells what happened.
	res, err := c.Send(ctx, testMessage("bob@example.com"))
	if !errors.Is(err, context.Canceled) || res == nil {
		t.Fatalf("Send: %v, %v", res, err)
	}
	if rr := res.Recipients[0]; rr.Outcome != Delivered || rr.Attempts != 1 {
		t.Fatalf("%+v", rr)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 1 || attempts[0].Err != nil {
		t.Fatalf("attempts %+v, want one that did not fail", attempts)
	}
	if st := c.Stats().Hosts["a"]; st.Open != 0 || st.Idle != 0 {
		t.Fatalf("pool keeps the connection: %+v", st)
	}
	if n := len(a.Messages()); n != 1 {
		t.Fatalf("%d messages", n)
	}
}
