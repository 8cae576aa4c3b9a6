package health_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/smtptest"
)

// A checker watching one SMTP relay: it comes up after Rise good probes,
// and failures that clients report take it down at once.
func Example() {
	relay, err := smtptest.New(nil) // an SMTP server on 127.0.0.1
	if err != nil {
		panic(err)
	}
	if err := relay.Start(); err != nil {
		panic(err)
	}
	defer relay.Stop()

	c := health.New(&health.Options{
		FastInterval: 200 * time.Millisecond, // while unknown or changing state
		Rise:         2,
		Fall:         3,
	})
	if err := c.AddTarget(health.Target{
		Name:     "relay1",
		Address:  relay.Addr(),
		Kind:     health.ProbeSMTP,
		EHLOName: "client.example.org",
	}); err != nil {
		panic(err)
	}
	sub := c.Subscribe()
	defer sub.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	wait, cancelWait := context.WithTimeout(ctx, 10*time.Second)
	defer cancelWait()
	ch, err := sub.Next(wait)
	if err != nil {
		panic(err)
	}
	fmt.Println(ch.Target, ch.From, "->", ch.To)

	// smtpclient reports what it sees on real connections.
	for range 3 {
		c.ReportFailure("relay1", errors.New("connection reset during DATA"))
	}
	fmt.Println(c.State("relay1"))

	cancel()
	<-done
	// Output:
	// relay1 unknown -> up
	// down
}

// Subscribers learn state changes in order; the Seq of a change tells
// whether a snapshot read after subscribing already reflects it.
func ExampleChecker_Subscribe() {
	c := health.New(&health.Options{Rise: 1, Fall: 1})
	_ = c.AddTarget(health.Target{Name: "imap1", Address: "imap1.example.org:993", Kind: health.ProbeIMAP})
	sub := c.Subscribe()
	defer sub.Close()

	c.ReportSuccess("imap1")
	c.ReportFailure("imap1", errors.New("IDLE heartbeat timed out"))

	for ch, ok := sub.TryNext(); ok; ch, ok = sub.TryNext() {
		fmt.Println(ch.Seq, ch.Target, ch.From, "->", ch.To, ch.Err)
	}
	// Output:
	// 1 imap1 unknown -> up <nil>
	// 2 imap1 up -> down IDLE heartbeat timed out
}

// The handler answers 503 until enough targets are up.
func ExampleChecker_Handler() {
	c := health.New(&health.Options{Rise: 1, Fall: 1})
	_ = c.AddTarget(health.Target{Name: "relay1", Address: "relay1.example.org:587", Kind: health.ProbeSMTP})
	_ = c.AddTarget(health.Target{Name: "relay2", Address: "relay2.example.org:587", Kind: health.ProbeSMTP})
	h := c.Handler(&health.HandlerOptions{MinUp: 1})

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	fmt.Println(rec.Code)

	c.ReportSuccess("relay2")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	fmt.Println(rec.Code)
	// Output:
	// 503
	// 200
}

// Hooks are where metrics attach: here, counters of probes, failures and
// changes such as a Prometheus adapter would keep.
func ExampleHooks() {
	var probes, failures, changes int
	c := health.New(&health.Options{
		Rise: 1,
		Fall: 1,
		Hooks: health.Hooks{
			Probed: func(r health.ProbeResult) { probes++ },
			Reported: func(r health.Report) {
				if r.Err != nil {
					failures++
				}
			},
			Changed: func(ch health.Change) { changes++ },
		},
	})
	_ = c.AddTarget(health.Target{Name: "mx1", Address: "mx1.example.org:25", Kind: health.ProbeSMTP})
	c.ReportSuccess("mx1")
	c.ReportFailure("mx1", errors.New("421 4.3.2 service shutting down"))
	c.ReportFailure("mx1", errors.New("connection refused"))
	fmt.Println(probes, failures, changes)
	// Output:
	// 0 2 2
}
