package health_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hamail/hamail/health"
)

// pipeDialer is an injected Dialer whose connections are in-memory pipes
// to serve, run on a goroutine of the caller's synctest bubble.
type pipeDialer struct {
	serve func(net.Conn)
	hang  bool // block until the dial's context ends
	mu    sync.Mutex
	dials []string
	wg    sync.WaitGroup
}

func (d *pipeDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dials = append(d.dials, network+" "+addr)
	d.mu.Unlock()
	if d.hang {
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	}
	client, server := net.Pipe()
	d.wg.Go(func() {
		defer server.Close()
		d.serve(server)
	})
	return client, nil
}

// TestProbeTimingWithInjectedDialer: with a dialer injected, probe timing
// is exact under synctest. A server that accepts and never speaks fails
// the probe exactly at Timeout; a dial that never completes fails at
// ConnectTimeout.
func TestProbeTimingWithInjectedDialer(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		silent := &pipeDialer{serve: func(c net.Conn) { io.Copy(io.Discard, c) }}
		opts := &health.Options{Dialer: silent, Timeout: 4 * time.Second, Fall: 1, Jitter: -1}
		c := health.New(opts)
		mustAdd(t, c, health.Target{Name: "relay1", Address: "relay1.example.org:25", Kind: health.ProbeSMTP})
		mustAdd(t, c, health.Target{Name: "imap1", Address: "imap1.example.org:143", Kind: health.ProbeIMAP})
		stop := run(t, c)
		start := time.Now()
		sleepUntil(start, 4*time.Second-time.Millisecond)
		wantState(t, c, "relay1", health.Unknown)
		wantState(t, c, "imap1", health.Unknown)
		sleepUntil(start, 4*time.Second)
		for _, name := range []string{"relay1", "imap1"} {
			st, _ := c.Status(name)
			var pe *health.ProbeError
			if st.State != health.Down || st.LastLatency != 4*time.Second || !errors.As(st.LastError, &pe) ||
				!pe.Timeout() || pe.Step != "greeting" {
				t.Errorf("%s: %+v", name, st)
			}
		}
		stop()
		silent.wg.Wait()
		if len(silent.dials) != 2 || silent.dials[0][:4] != "tcp " {
			t.Errorf("dials %q", silent.dials)
		}

		hung := &pipeDialer{hang: true}
		c = health.New(&health.Options{Dialer: hung, Timeout: 4 * time.Second, ConnectTimeout: time.Second, Fall: 1, Jitter: -1})
		mustAdd(t, c, health.Target{Name: "mx1", Address: "mx1.example.org:25", Kind: health.ProbeSMTP})
		stop = run(t, c)
		start = time.Now()
		sleepUntil(start, time.Second)
		st, _ := c.Status("mx1")
		var pe *health.ProbeError
		if st.State != health.Down || st.LastLatency != time.Second || !errors.As(st.LastError, &pe) || pe.Step != "connect" {
			t.Errorf("mx1: %+v", st)
		}
		stop()
	})
}

// TestSMTPProbeOverPipe: the whole SMTP conversation, deterministic under
// synctest, including a server that answers EHLO only after the timeout.
func TestSMTPProbeOverPipe(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var seen []string
		ehloDelay := time.Duration(0)
		d := &pipeDialer{serve: func(c net.Conn) {
			r := bufio.NewReader(c)
			io.WriteString(c, "220 mx.example.test ESMTP\r\n")
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				mu.Lock()
				seen = append(seen, line)
				delay := ehloDelay
				mu.Unlock()
				switch line[:4] {
				case "EHLO":
					time.Sleep(delay)
					io.WriteString(c, "250-mx.example.test\r\n250 8BITMIME\r\n")
				case "QUIT":
					io.WriteString(c, "221 2.0.0 bye\r\n")
					return
				default:
					io.WriteString(c, "500 what\r\n")
				}
			}
		}}
		p := &health.NetProber{Dialer: d}
		tg := health.Target{Name: "mx1", Address: "mx1.example.org:25", Kind: health.ProbeSMTP, EHLOName: "probe.example.org"}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := p.Probe(ctx, tg); err != nil {
			t.Fatalf("probe: %v", err)
		}
		cancel()
		d.wg.Wait()
		mu.Lock()
		if len(seen) != 2 || seen[0] != "EHLO probe.example.org\r\n" || seen[1] != "QUIT\r\n" {
			t.Errorf("server saw %q", seen)
		}
		ehloDelay = 3 * time.Second
		mu.Unlock()

		start := time.Now()
		ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err := p.Probe(ctx, tg)
		if took := time.Since(start); took != 2*time.Second {
			t.Errorf("probe took %v, want the 2s timeout", took)
		}
		wantProbeError(t, err, "ehlo", context.DeadlineExceeded)
		d.wg.Wait()
	})
}
