package smtpclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/sony/gobreaker/v2"
)

func TestHooksAndHealthReports(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	a.Stop()
	b.SetRcptFault("nobody@example.com", smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
	h := &fakeHealth{down: map[string]bool{}}
	var mu sync.Mutex
	var log []string
	add := func(format string, args ...any) {
		mu.Lock()
		log = append(log, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	c := newTestClient(t, &Options{
		Relays:  twoRelays(a.Addr(), b.Addr()),
		Health:  h,
		Breaker: BreakerOptions{Failures: 1, OpenTimeout: time.Hour},
		Hooks: &Hooks{
			HostChosen:         func(h HostInfo, rcpts []string) { add("chosen %s %v", h.Name, rcpts) },
			HostSkipped:        func(h HostInfo, err error) { add("skipped %s", h.Name) },
			Connected:          func(h HostInfo, err error) { add("connected %s %v", h.Name, err == nil) },
			TLS:                func(h HostInfo, st tls.ConnectionState) { add("tls %s", h.Name) },
			Reply:              func(h HostInfo, s Stage, rcpt string, r Reply) { add("reply %s %s %s %d", h.Name, s, rcpt, r.Code) },
			BreakerStateChange: func(e BreakerEvent) { add("breaker %s %s->%s", e.Host, e.From, e.To) },
			AttemptDone:        func(at Attempt) { add("done %s %v", at.Host.Name, at.Err == nil) },
		},
	})
	mustSend(t, c, testMessage("bob@example.com", "nobody@example.com"))
	mustSend(t, c, testMessage("bob@example.com"))
	mu.Lock()
	got := strings.Join(log, "\n")
	mu.Unlock()
	want := strings.Join([]string{
		"chosen primary [bob@example.com nobody@example.com]",
		"connected primary false",
		"breaker primary closed->open",
		"done primary false",
		"chosen secondary [bob@example.com nobody@example.com]",
		"tls secondary",
		"connected secondary true",
		"reply secondary mail  250",
		"reply secondary rcpt bob@example.com 250",
		"reply secondary rcpt nobody@example.com 550",
		"reply secondary data-end  250",
		"done secondary true",
		"skipped primary",
		"chosen secondary [bob@example.com]",
		"reply secondary mail  250",
		"reply secondary rcpt bob@example.com 250",
		"reply secondary data-end  250",
		"done secondary true",
	}, "\n")
	if got != want {
		t.Fatalf("hooks:\n%s\nwant:\n%s", got, want)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// One failed connect plus the trip; a 550 for one recipient is no
	// failure of the host.
	if h.failures["primary"] != 2 || h.failures["secondary"] != 0 || h.success["secondary"] != 2 {
		t.Fatalf("health reports: failures %v, successes %v", h.failures, h.success)
	}
}

func TestHalfOpenProbe(t *testing.T) {
	t.Parallel()
	a, b := server(t, nil), server(t, nil)
	a.Stop()
	c := newTestClient(t, &Options{Relays: twoRelays(a.Addr(), b.Addr()), Breaker: BreakerOptions{Failures: 1, OpenTimeout: 50 * time.Millisecond}})
	if rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]; rr.Host != "secondary" {
		t.Fatalf("%+v", rr)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.br.state("primary") != gobreaker.StateHalfOpen {
		if time.Now().After(deadline) {
			t.Fatal("breaker never half-open")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The probe goes to the primary and closes its breaker.
	if rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]; rr.Host != "primary" {
		t.Fatalf("probe: %+v", rr)
	}
	if s := c.br.state("primary"); s != gobreaker.StateClosed {
		t.Fatalf("after a good probe: %v", s)
	}
}

func TestBalanceInsideTier(t *testing.T) {
	t.Parallel()
	st := newScript()
	c := newScriptClient(t, st, &Options{Relays: []Relay{
		{Name: "a", Addr: "a.example.net:25", Weight: 3},
		{Name: "b", Addr: "b.example.net:25", Weight: 1},
		{Name: "backup", Addr: "c.example.net:25", Priority: 5},
	}})
	count := map[string]int{}
	for range 40 {
		res, err := c.Send(context.Background(), testMessage("bob@example.com"))
		if err != nil {
			t.Fatal(err)
		}
		count[res.Recipients[0].Host]++
	}
	if count["a"] != 30 || count["b"] != 10 || count["backup"] != 0 {
		t.Fatalf("weighted round robin: %v", count)
	}

	// Least in flight: a relay busy with sessions is passed over.
	rs, err := newRelaySet([]Relay{{Name: "x", Addr: "x:25"}, {Name: "y", Addr: "y:25"}}, LeastInFlight, time.Second, nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	rs.tiers[0][0].t.inflight.Add(3)
	for range 5 {
		if got := rs.order()[0].key(); got != "y" {
			t.Fatalf("least in flight chose %s", got)
		}
	}
	rs.tiers[0][1].t.inflight.Add(5)
	if got := rs.order()[0].key(); got != "x" {
		t.Fatalf("least in flight chose %s", got)
	}
}

func TestConcurrentSendsRespectHostCap(t *testing.T) {
	t.Parallel()
	a := server(t, nil)
	a.SetFault(smtptest.StageDataEnd, smtptest.Fault{Delay: 20 * time.Millisecond})
	c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr()}}, Pool: PoolOptions{MaxPerHost: 2, IdleTimeout: time.Minute}})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for g := range 8 {
		wg.Go(func() {
			for i := range 5 {
				res, err := c.Send(testCtx(t), testMessage(fmt.Sprintf("r%d-%d@example.com", g, i)))
				if err == nil && res.Recipients[0].Outcome != Delivered {
					err = fmt.Errorf("%+v", res.Recipients[0])
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if st := a.Stats(); st.Connections > 2 || st.Messages != 40 {
		t.Fatalf("server saw %+v, want at most 2 connections", st)
	}
}

func TestTLSPolicies(t *testing.T) {
	t.Parallel()
	a := server(t, nil)
	t.Run("verify fails on an unknown certificate", func(t *testing.T) {
		t.Parallel()
		c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr(), TLS: TLSVerify}}})
		rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
		var e *Error
		if rr.Outcome != Temporary || !errors.As(rr.Err, &e) || e.Stage != StageStartTLS {
			t.Fatalf("%+v", rr)
		}
	})
	t.Run("may accepts it", func(t *testing.T) {
		t.Parallel()
		c := newTestClient(t, &Options{Relays: []Relay{{Name: "a", Addr: a.Addr(), TLS: TLSMay}}})
		rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
		if rr.Outcome != Delivered {
			t.Fatalf("%+v", rr)
		}
	})
	t.Run("none stays in clear", func(t *testing.T) {
		t.Parallel()
		b := server(t, nil)
		c := newTestClient(t, &Options{Relays: []Relay{{Name: "b", Addr: b.Addr(), TLS: TLSNone}}})
		mustSend(t, c, testMessage("bob@example.com"))
		if m := b.Messages(); len(m) != 1 || m[0].TLS != nil || b.Stats().StartTLS != 0 {
			t.Fatalf("%+v", m)
		}
	})
	t.Run("implicit TLS", func(t *testing.T) {
		t.Parallel()
		s := smtptest.NewServer(t, &smtptest.Options{ImplicitTLS: true})
		c := newTestClient(t, &Options{Relays: []Relay{{Name: "s", Addr: s.Addr(), ImplicitTLS: true, TLS: TLSVerify, TLSConfig: s.ClientTLSConfig("")}}})
		rr := mustSend(t, c, testMessage("bob@example.com")).Recipients[0]
		if rr.Outcome != Delivered || s.Messages()[0].TLS == nil {
			t.Fatalf("%+v", rr)
		}
	})
}

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	bad := []Options{
		{Relays: []Relay{{Addr: "no-port"}}},
		{Relays: []Relay{{Name: "a", Addr: "a:25"}, {Name: "a", Addr: "b:25"}}},
		{Relays: []Relay{{Name: "a", Addr: "a:25"}}, FallbackRelays: []Relay{{Name: "a", Addr: "b:25"}}},
		{Relays: []Relay{{Addr: "a:25", Weight: -1}}},
		{Relays: []Relay{{Addr: "a:25", ImplicitTLS: true, TLS: TLSNone}}},
		{Relays: []Relay{{Addr: "a:25", Auth: &Auth{Mechanism: "CRAM-MD5"}}}},
		{Relays: []Relay{{Addr: "a:25", Auth: &Auth{Mechanism: AuthXOAUTH2}}}},
		{MXPort: 70000},
	}
	for i, o := range bad {
		if _, err := New(&o); err == nil {
			t.Errorf("options %d accepted", i)
		}
	}
	c, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(context.Background(), testMessage("bob@example.com")); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("no route: %v", err)
	}
}

// TestDefaults pins the documented defaults: RFC 5321 §4.5.3.2 timeouts,
// Postfix's connect timeout, MX address limit and connection reuse limits.
func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := New(&Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := Timeouts{
		Connect: 30 * time.Second, Greeting: 5 * time.Minute, Hello: 5 * time.Minute,
		StartTLS: 5 * time.Minute, Auth: 5 * time.Minute, Mail: 5 * time.Minute, Rcpt: 5 * time.Minute,
		DataInit: 2 * time.Minute, DataBlock: 3 * time.Minute, DataEnd: 10 * time.Minute,
		Reset: 20 * time.Second, Quit: 10 * time.Second,
	}
	if c.opts.Timeouts != want {
		t.Errorf("timeouts %+v, want %+v", c.opts.Timeouts, want)
	}
	if c.opts.MXPort != 25 || c.opts.MaxMXAddresses != 5 || c.opts.MaxRecipients != 100 || c.opts.LocalName != "localhost" {
		t.Errorf("options %+v", c.opts)
	}
	if p := c.pool; p.maxPerHost != 8 || p.maxIdle != 8 || p.idleTimeout != 2*time.Second || p.maxAge != 300*time.Second {
		t.Errorf("pool defaults: cap %d, idle %d, idle timeout %v, max age %v", p.maxPerHost, p.maxIdle, p.idleTimeout, p.maxAge)
	}
	if b := c.br.settings; b.Failures != 5 || b.OpenTimeout != time.Minute || b.HalfOpenProbes != 1 {
		t.Errorf("breaker defaults %+v", b)
	}
	// Zero fields keep their defaults next to set ones.
	c, err = New(&Options{Timeouts: Timeouts{Mail: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if c.opts.Timeouts.Mail != time.Second || c.opts.Timeouts.Rcpt != 5*time.Minute {
		t.Errorf("timeouts %+v", c.opts.Timeouts)
	}
}
