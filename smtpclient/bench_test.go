package smtpclient

import (
	"context"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/faultproxy"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/sony/gobreaker/v2"
)

func benchSend(b *testing.B, c *Client) {
	b.Helper()
	ctx := context.Background()
	m := testMessage("bob@example.com")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res, err := c.Send(ctx, m)
		if err != nil || res.Recipients[0].Outcome != Delivered {
			b.Fatalf("%+v %v", res, err)
		}
	}
}

// BenchmarkSendPooled is the baseline: one message to one relay over a
// pooled connection.
func BenchmarkSendPooled(b *testing.B) {
	srv := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true})
	c := newTestClient(b, &Options{Relays: []Relay{{Name: "live", Addr: srv.Addr(), Priority: 2}}, Pool: PoolOptions{IdleTimeout: time.Minute}})
	benchSend(b, c)
}

// BenchmarkSendSkippingOpenBreaker is the same send with a better-tier
// relay whose breaker is open in front: the difference to
// BenchmarkSendPooled is the cost of skipping it.
func BenchmarkSendSkippingOpenBreaker(b *testing.B) {
	srv := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true})
	dead := faultproxy.Start(b, srv.Addr())
	dead.SetMode(faultproxy.Refuse)
	c := newTestClient(b, &Options{
		Relays:  []Relay{{Name: "dead", Addr: dead.Addr(), Priority: 1}, {Name: "live", Addr: srv.Addr(), Priority: 2}},
		Pool:    PoolOptions{IdleTimeout: time.Minute},
		Breaker: BreakerOptions{Failures: 1, OpenTimeout: time.Hour},
	})
	res, err := c.Send(context.Background(), testMessage("bob@example.com"))
	if err != nil || res.Recipients[0].Host != "live" {
		b.Fatalf("%+v %v", res, err)
	}
	if s := c.br.state("dead"); s != gobreaker.StateOpen {
		b.Fatalf("breaker %v", s)
	}
	benchSend(b, c)
}

// BenchmarkBreakerSkip measures the skip alone: asking an open breaker.
func BenchmarkBreakerSkip(b *testing.B) {
	br := newBreakers(BreakerOptions{Failures: 1, OpenTimeout: time.Hour}, nil, &Hooks{}, nil)
	done, _ := br.allow("dead")
	done(errSite)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := br.allow("dead"); err == nil {
			b.Fatal("open breaker admitted a request")
		}
	}
}

// patternBody generates a message of n bytes without holding it.
type patternBody struct{ n, off int64 }

const patternLine = "The quick brown fox jumps over the lazy dog 0123456789 ABCDEFG\r\n" // 64 bytes

func (p *patternBody) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if rem := p.n - p.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	for i := range b {
		b[i] = patternLine[(p.off+int64(i))%int64(len(patternLine))]
	}
	p.off += int64(len(b))
	return len(b), nil
}

func (p *patternBody) Close() error { return nil }

// sendLarge sends a generated message of size bytes and returns the peak
// heap in use seen while it was sent, above the heap in use before.
func sendLarge(tb testing.TB, size int64) (peak uint64, elapsed time.Duration) {
	srv := smtptest.NewServer(tb, &smtptest.Options{DiscardBodies: true})
	c := newTestClient(tb, &Options{Relays: []Relay{{Name: "r", Addr: srv.Addr()}}})
	c.opts.Timeouts.DataEnd = time.Minute
	m := testMessage("bob@example.com")
	m.Body, m.Size = nil, size
	m.Open = func() (io.ReadCloser, error) { return &patternBody{n: size}, nil }

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var max atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				var s runtime.MemStats
				runtime.ReadMemStats(&s)
				if s.HeapInuse > base && s.HeapInuse-base > max.Load() {
					max.Store(s.HeapInuse - base)
				}
			}
		}
	})
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := c.Send(ctx, m)
	elapsed = time.Since(start)
	close(stop)
	wg.Wait()
	if err != nil || res.Recipients[0].Outcome != Delivered {
		tb.Fatalf("%+v %v", res, err)
	}
	if msgs := srv.Messages(); len(msgs) != 1 || msgs[0].Size != size {
		tb.Fatalf("server got %+v", msgs)
	}
	return max.Load(), elapsed
}

// TestLargeMessageHeap checks that a large message is streamed: the heap
// grows by a small, size-independent amount. 200 MB normally; 24 MB under
// the race detector, which slows the copy down about tenfold.
func TestLargeMessageHeap(t *testing.T) {
	size := int64(200 << 20)
	if raceEnabled || testing.Short() {
		size = 24 << 20
	}
	peak, elapsed := sendLarge(t, size)
	t.Logf("sent %d MB in %v; peak heap growth %.1f MB (%.3f%% of the message)", size>>20, elapsed.Round(time.Millisecond), float64(peak)/(1<<20), 100*float64(peak)/float64(size))
	// The server side runs in this process too and buffers lines; the
	// bound is loose on purpose, but below the message size, so that a
	// client holding the whole message fails here (about 3 MB is seen).
	if limit := min(32<<20, uint64(size)/2); peak > limit {
		t.Fatalf("heap grew by %d MB while sending %d MB", peak>>20, size>>20)
	}
}
