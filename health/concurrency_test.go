package health_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/health"
)

// TestConcurrentUse exercises every entry point at once while the checker
// runs, for the race detector: probes, reports, adds, removes, snapshots,
// subscriptions and the handler. Every loop is bounded.
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	var flip sync.Mutex
	n := 0
	prober := health.ProberFunc(func(ctx context.Context, tg health.Target) error {
		flip.Lock()
		n++
		bad := n%3 == 0
		flip.Unlock()
		if bad {
			return errRefused
		}
		return nil
	})
	c := health.New(&health.Options{
		Prober: prober, Interval: time.Millisecond, FastInterval: time.Millisecond, DownInterval: time.Millisecond,
		Rise: 1, Fall: 1, SubscriptionBuffer: 8,
		Hooks: health.Hooks{Changed: func(health.Change) {}, Probed: func(health.ProbeResult) {}},
	})
	names := make([]string, 8)
	for i := range names {
		names[i] = fmt.Sprintf("relay%d", i)
		mustAdd(t, c, health.Target{Name: names[i], Address: "192.0.2.1:25"})
	}
	stop := runReal(t, c)
	h := c.Handler(nil)

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				name := names[(i+w)%len(names)]
				switch i % 5 {
				case 0:
					c.ReportFailure(name, errRefused)
				case 1:
					c.ReportSuccess(name)
				case 2:
					c.State(name)
				case 3:
					if c.RemoveTarget(name) {
						_ = c.AddTarget(health.Target{Name: name, Address: "192.0.2.2:25"})
					}
				case 4:
					c.Snapshot()
				}
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		}
	})
	wg.Go(func() {
		for range 20 {
			sub := c.Subscribe()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := sub.Next(ctx)
			cancel()
			if err != nil {
				t.Errorf("Next: %v", err)
			}
			sub.Close()
		}
	})
	wg.Wait()
	stop()
	for _, name := range names {
		if _, ok := c.Status(name); !ok {
			t.Errorf("%s lost", name)
		}
	}
}
