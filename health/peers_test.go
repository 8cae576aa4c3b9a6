package health_test

import (
	"errors"
	"testing"
	"time"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/peers"
	"github.com/hamail/hamail/internal/smtptest"
)

// TestRealPostfix probes a real Postfix relay: its greeting and EHLO pass
// the SMTP probe; stopped, it goes down after Fall refused connections;
// started again, it comes back after Rise good probes.
func TestRealPostfix(t *testing.T) {
	t.Parallel()
	next := smtptest.NewServer(t, nil)
	pf := peers.StartPostfix(t, peers.PostfixOptions{RelayHost: next.Addr()})
	tg := health.Target{Name: "postfix", Kind: health.ProbeSMTP, Address: pf.Addr}
	if err := probe(t, tg, 10*time.Second); err != nil {
		t.Fatalf("probe of Postfix: %v", err)
	}

	var log eventLog
	c := health.New(fastOptions(&log))
	sub := c.Subscribe()
	defer sub.Close()
	mustAdd(t, c, tg)
	stop := runReal(t, c)
	waitChange(t, sub, "postfix", health.Unknown, health.Up)
	pf.Stop()
	down := waitChange(t, sub, "postfix", health.Up, health.Down)
	var pe *health.ProbeError
	if !errors.As(down.Err, &pe) || pe.Step != "connect" {
		t.Errorf("down because of %v", down.Err)
	}
	pf.Start()
	waitChange(t, sub, "postfix", health.Down, health.Up)
	stop()
	log.checkHysteresis(t, 2, 3)
}
