package smtpclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/health"
	"github.com/sony/gobreaker/v2"
)

// scriptHost is how one scripted host behaves. These tests check routing,
// pooling and breakers in isolation and fast; the same behaviours are
// checked end to end against a real SMTP server in client_test.go.
type scriptHost struct {
	dialErr   error
	dialStage Stage
	mailErr   error
	rcptErr   map[string]error
	dataErr   error
	dataStage Stage
	// brokenAfter: the connection dies after this transaction.
	brokenAfter bool
	ext         map[string]string
	maxSize     int
	resetErr    error
	// staleOnce: the first transaction on a reused connection gets a 421
	// at MAIL.
	staleOnce bool
}

type scriptTransport struct {
	mu     sync.Mutex
	hosts  map[string]*scriptHost
	dials  map[string]int
	tx     map[string][]string // host -> recipients sent per transaction, joined
	bodies map[string]int      // host -> bodies fully read
	closed int
}

func newScript() *scriptTransport {
	return &scriptTransport{hosts: map[string]*scriptHost{}, dials: map[string]int{}, tx: map[string][]string{}, bodies: map[string]int{}}
}

type scriptWire struct {
	st   *scriptTransport
	h    *scriptHost
	used bool
}

func (w *scriptWire) Extension(name string) (string, bool) {
	v, ok := w.h.ext[name]
	return v, ok
}
func (w *scriptWire) MaxMessageSize() (int64, bool) { return int64(w.h.maxSize), w.h.maxSize > 0 }
func (w *scriptWire) TLSConnectionState() (tls.ConnectionState, bool) {
	return tls.ConnectionState{}, false
}
func (w *scriptWire) Close() error {
	w.st.mu.Lock()
	w.st.closed++
	w.st.mu.Unlock()
	return nil
}

func (st *scriptTransport) set(name string, h *scriptHost) { st.hosts[name] = h }

func (st *scriptTransport) dial(ctx context.Context, t *target) (*conn, Stage, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.dials[t.key()]++
	h := st.hosts[t.key()]
	if h == nil {
		h = &scriptHost{}
		st.hosts[t.key()] = h
	}
	if h.dialErr != nil {
		return nil, h.dialStage, h.dialErr
	}
	w := &scriptWire{st: st, h: h}
	return &conn{w: w, quit: w.Close}, StageNone, nil
}

func (st *scriptTransport) reset(ctx context.Context, cn *conn) error {
	return cn.w.(*scriptWire).h.resetErr
}

func (st *scriptTransport) transact(ctx context.Context, cn *conn, t *target, env *envelope, rcpts []parsedRecipient) *txReport {
	w := cn.w.(*scriptWire)
	h := w.h
	reused := w.used
	w.used = true
	rep := &txReport{}
	if reused && h.staleOnce {
		h.staleOnce = false
		rep.mailErr = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "idle timeout"}
		rep.mailReply = replyOf(rep.mailErr)
		rep.broken = true
		return rep
	}
	if h.mailErr != nil {
		rep.mailErr = h.mailErr
		rep.mailReply = replyOf(h.mailErr)
		rep.broken = replyOf(h.mailErr) == nil
		return rep
	}
	var names []string
	accepted := 0
	for _, p := range rcpts {
		names = append(names, p.rcpt.Addr)
		err := h.rcptErr[p.rcpt.Addr]
		rep.rcpts = append(rep.rcpts, rcptReport{err: err, reply: replyOf(err)})
		if err == nil {
			accepted++
		}
	}
	st.mu.Lock()
	st.tx[t.key()] = append(st.tx[t.key()], strings.Join(names, ","))
	st.mu.Unlock()
	if accepted == 0 {
		return rep
	}
	body, err := env.msg.openBody()
	if err != nil {
		rep.dataStage, rep.dataErr = StageBody, err
		return rep
	}
	io.Copy(io.Discard, body)
	body.Close()
	st.mu.Lock()
	st.bodies[t.key()]++
	st.mu.Unlock()
	if h.dataErr != nil {
		rep.dataStage, rep.dataErr = h.dataStage, h.dataErr
		rep.broken = replyOf(h.dataErr) == nil
		return rep
	}
	rep.final = &Reply{Code: 250, Enhanced: smtp.EnhancedCode{2, 0, 0}, Message: "queued as " + t.key()}
	rep.broken = h.brokenAfter
	return rep
}

func (st *scriptTransport) txs(host string) []string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return append([]string(nil), st.tx[host]...)
}

func newScriptClient(t *testing.T, st *scriptTransport, o *Options) *Client {
	t.Helper()
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	c.tr = st
	t.Cleanup(func() { c.Close() })
	return c
}

func testMessage(to ...string) *Message {
	body := "Subject: test\r\n\r\nhello\r\n"
	m := &Message{From: "sender@example.org", Body: strings.NewReader(body), Size: int64(len(body))}
	for _, a := range to {
		m.To = append(m.To, Recipient{Addr: a})
	}
	return m
}

var (
	errRefused = errors.New("connect: connection refused")
	reply550   = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	reply451   = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted"}
)

func TestRoutingTiers(t *testing.T) {
	t.Parallel()
	st := newScript()
	st.set("primary", &scriptHost{dialErr: errRefused, dialStage: StageConnect})
	c := newScriptClient(t, st, &Options{Relays: []Relay{
		{Name: "backup", Addr: "backup.example.net:25", Priority: 20},
		{Name: "primary", Addr: "primary.example.net:25", Priority: 10},
	}})
	res, err := c.Send(context.Background(), testMessage("bob@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	rr := res.Recipients[0]
	if rr.Outcome != Delivered || rr.Host != "backup" || rr.Attempts != 2 {
		t.Fatalf("got %+v, want delivered by backup after 2 attempts", rr)
	}
	if st.dials["primary"] != 1 {
		t.Fatalf("primary dialed %d times", st.dials["primary"])
	}
	// With the primary healthy again, the next message goes to it.
	st.set("primary", &scriptHost{})
	res, err = c.Send(context.Background(), testMessage("bob@example.com"))
	if err != nil || res.Recipients[0].Host != "primary" {
		t.Fatalf("after recovery: %+v, %v", res.Recipients[0], err)
	}
}

func TestRoutingBreakerOpensAndSkips(t *testing.T) {
	t.Parallel()
	st := newScript()
	st.set("a", &scriptHost{dialErr: errRefused, dialStage: StageConnect})
	var mu sync.Mutex
	var events []BreakerEvent
	var skipped int
	c := newScriptClient(t, st, &Options{
		Relays:  []Relay{{Name: "a", Addr: "a.example.net:25"}, {Name: "b", Addr: "b.example.net:25", Priority: 1}},
		Breaker: BreakerOptions{Failures: 3},
		Hooks: &Hooks{
			BreakerStateChange: func(e BreakerEvent) { mu.Lock(); events = append(events, e); mu.Unlock() },
			HostSkipped: func(h HostInfo, err error) {
				if !errors.Is(err, ErrBreakerOpen) {
					t.Errorf("skip reason %v", err)
				}
				mu.Lock()
				skipped++
				mu.Unlock()
			},
		},
	})
	for i := range 5 {
		res, err := c.Send(context.Background(), testMessage("bob@example.com"))
		if err != nil || res.Recipients[0].Host != "b" {
			t.Fatalf("send %d: %+v %v", i, res.Recipients[0], err)
		}
	}
	if st.dials["a"] != 3 {
		t.Fatalf("a dialed %d times, want 3 (then the breaker is open)", st.dials["a"])
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0].Host != "a" || events[0].To != gobreaker.StateOpen {
		t.Fatalf("breaker events %+v", events)
	}
	if skipped != 2 {
		t.Fatalf("skipped %d, want 2", skipped)
	}
}

func TestRoutingRecipientRejectionDoesNotTripBreaker(t *testing.T) {
	t.Parallel()
	st := newScript()
	st.set("a", &scriptHost{rcptErr: map[string]error{"nobody@example.com": reply550}})
	c := newScriptClient(t, st, &Options{Relays: []Relay{{Name: "a", Addr: "a.example.net:25"}}, Breaker: BreakerOptions{Failures: 1}})
	for range 3 {
		res, err := c.Send(context.Background(), testMessage("bob@example.com", "nobody@example.com"))
		if err != nil {
			t.Fatal(err)
		}
		if res.Recipients[0].Outcome != Delivered || res.Recipients[1].Outcome != Permanent {
			t.Fatalf("%+v", res.Recipients)
		}
		if r := res.Recipients[1].Reply; r == nil || r.Code != 550 {
			t.Fatalf("reply %+v", r)
		}
	}
	if s := c.br.state("a"); s != gobreaker.StateClosed {
		t.Fatalf("breaker %v", s)
	}
}

func TestRoutingTemporaryRecipientsMoveOn(t *testing.T) {
	t.Parallel()
	st := newScript()
	st.set("a", &scriptHost{rcptErr: map[string]error{"grey@example.com": reply451}})
	c := newScriptClient(t, st, &Options{Relays: []Relay{{Name: "a", Addr: "a.example.net:25"}, {Name: "b", Addr: "b.example.net:25", Priority: 1}}})
	res, err := c.Send(context.Background(), testMessage("bob@example.com", "grey@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Recipients[0].Host != "a" || res.Recipients[1].Host != "b" || res.Count(Delivered) != 2 {
		t.Fatalf("%+v", res.Recipients)
	}
	// bob was accepted by a and must never be offered to b.
	if got := st.txs("b"); len(got) != 1 || got[0] != "grey@example.com" {
		t.Fatalf("b saw %q", got)
	}
}

func TestRoutingUnknownNotRetried(t *testing.T) {
	t.Parallel()
	st := newScript()
	st.set("a", &scriptHost{dataErr: io.EOF, dataStage: StageDataEnd})
	c := newScriptClient(t, st, &Options{Relays: []Relay{{Name: "a", Addr: "a.example.net:25"}, {Name: "b", Addr: "b.example.net:25", Priority: 1}}})
	res, err := c.Send(context.Background(), testMessage("bob@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if rr := res.Recipients[0]; rr.Outcome != Unknown || rr.Host != "a" {
		t.Fatalf("%+v", rr)
	}
	if len(st.txs("b")) != 0 {
		t.Fatal("an unknown recipient was sent again in the same call")
	}
}

func TestRoutingNothingAvailable(t *testing.T) {
	t.Parallel()
	st := newScript()
	h := &fakeHealth{down: map[string]bool{"a": true}}
	c := newScriptClient(t, st, &Options{Relays: []Relay{{Name: "a", Addr: "a.example.net:25"}}, Health: h})
	res, err := c.Send(context.Background(), testMessage("bob@example.com"))
	if !errors.Is(err, ErrNoHostAvailable) {
		t.Fatalf("err %v", err)
	}
	if res == nil || res.Recipients[0].Outcome != Temporary {
		t.Fatalf("%+v", res)
	}
	if st.dials["a"] != 0 {
		t.Fatal("dialed a host health reports down")
	}
}

func TestRoutingPoolReuseAndStale421(t *testing.T) {
	t.Parallel()
	st := newScript()
	st.set("a", &scriptHost{})
	c := newScriptClient(t, st, &Options{Relays: []Relay{{Name: "a", Addr: "a.example.net:25"}}, Pool: PoolOptions{IdleTimeout: 1 << 40}})
	for range 3 {
		if _, err := c.Send(context.Background(), testMessage("bob@example.com")); err != nil {
			t.Fatal(err)
		}
	}
	if st.dials["a"] != 1 {
		t.Fatalf("dials %d, want 1 (reuse)", st.dials["a"])
	}
	s := c.Stats().Hosts["a"]
	if s.Reuses != 2 || s.Idle != 1 || s.Open != 1 {
		t.Fatalf("stats %+v", s)
	}
	st.hosts["a"].staleOnce = true
	res, err := c.Send(context.Background(), testMessage("bob@example.com"))
	if err != nil || res.Recipients[0].Outcome != Delivered {
		t.Fatalf("%+v %v", res.Recipients, err)
	}
	if st.dials["a"] != 2 {
		t.Fatalf("dials %d, want 2 (one transparent reconnect)", st.dials["a"])
	}
	if res.Recipients[0].Attempts != 1 {
		t.Fatalf("attempts %d", res.Recipients[0].Attempts)
	}
}

func TestRoutingBatchesRecipients(t *testing.T) {
	t.Parallel()
	st := newScript()
	c := newScriptClient(t, st, &Options{Relays: []Relay{{Name: "a", Addr: "a.example.net:25"}}, MaxRecipients: 2})
	var to []string
	for i := range 5 {
		to = append(to, fmt.Sprintf("r%d@example.com", i))
	}
	res, err := c.Send(context.Background(), testMessage(to...))
	if err != nil || res.Count(Delivered) != 5 {
		t.Fatalf("%+v %v", res, err)
	}
	if got := st.txs("a"); len(got) != 3 {
		t.Fatalf("transactions %q", got)
	}
}

func TestRoutingPolicySizeAndUTF8(t *testing.T) {
	t.Parallel()
	st := newScript()
	st.set("small", &scriptHost{maxSize: 10, ext: map[string]string{"SMTPUTF8": ""}})
	st.set("ascii", &scriptHost{})
	c := newScriptClient(t, st, &Options{Relays: []Relay{{Name: "small", Addr: "small.example.net:25"}}})
	res, err := c.Send(context.Background(), testMessage("bob@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	rr := res.Recipients[0]
	if rr.Outcome != Permanent || rr.Reply == nil || rr.Reply.Code != 552 || !errors.Is(rr.Err, ErrMessageTooBig) {
		t.Fatalf("%+v", rr)
	}
	if len(st.txs("small")) != 0 {
		t.Fatal("a message too big was sent")
	}
	c2 := newScriptClient(t, st, &Options{Relays: []Relay{{Name: "ascii", Addr: "ascii.example.net:25"}}})
	res, _ = c2.Send(context.Background(), testMessage("josé@example.com"))
	if rr := res.Recipients[0]; rr.Outcome != Permanent || !errors.Is(rr.Err, ErrSMTPUTF8Required) {
		t.Fatalf("%+v", rr)
	}
}

func TestRoutingFailbackHysteresis(t *testing.T) {
	t.Parallel()
	st := newScript()
	h := &fakeHealth{down: map[string]bool{"primary": true}}
	now := fakeNow()
	c := newScriptClient(t, st, &Options{
		Relays:        []Relay{{Name: "primary", Addr: "p.example.net:25"}, {Name: "backup", Addr: "b.example.net:25", Priority: 1}},
		Health:        h,
		FailbackDelay: 30e9,
		Now:           now.Now,
	})
	send := func() string {
		res, err := c.Send(context.Background(), testMessage("bob@example.com"))
		if err != nil {
			t.Fatal(err)
		}
		return res.Recipients[0].Host
	}
	if got := send(); got != "backup" {
		t.Fatalf("while down: %s", got)
	}
	h.set("primary", false)
	now.Add(10e9)
	if got := send(); got != "backup" {
		t.Fatalf("10 s after recovery: %s (no hysteresis)", got)
	}
	now.Add(25e9)
	if got := send(); got != "backup" {
		t.Fatalf("25 s after it was first seen up: %s", got)
	}
	now.Add(10e9)
	if got := send(); got != "primary" {
		t.Fatalf("35 s after it was first seen up: %s", got)
	}
}

type fakeHealth struct {
	mu       sync.Mutex
	down     map[string]bool
	failures map[string]int
	success  map[string]int
}

var _ health.View = (*fakeHealth)(nil)

func (f *fakeHealth) set(name string, down bool) {
	f.mu.Lock()
	f.down[name] = down
	f.mu.Unlock()
}

func (f *fakeHealth) State(name string) health.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[name] {
		return health.Down
	}
	return health.Up
}
func (f *fakeHealth) ReportSuccess(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.success == nil {
		f.success = map[string]int{}
	}
	f.success[name]++
}
func (f *fakeHealth) ReportFailure(name string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failures == nil {
		f.failures = map[string]int{}
	}
	f.failures[name]++
}
