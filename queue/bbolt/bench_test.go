package bbolt_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
)

// rawFsyncRate measures, on the disk the benchmark uses, how many
// write-4KiB-then-fdatasync operations one writer completes per second:
// the rate of a queue that syncs every message on its own.
func rawFsyncRate(b *testing.B, dir string) float64 {
	b.Helper()
	f, err := os.Create(filepath.Join(dir, "raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{'x'}, 4096)
	const n = 500
	start := time.Now()
	for range n {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	return n / time.Since(start).Seconds()
}

func benchMessage(body []byte) *queue.Message {
	return &queue.Message{
		Envelope: queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: "bob@example.net"}}},
		Body:     bytes.NewReader(body),
	}
}

// openBench opens a store in a fresh directory and measures the raw
// write+fsync rate of the disk it lies on, the baseline its numbers are
// reported against.
func openBench(b *testing.B) (s *bbolt.Store, dir string, raw float64) {
	b.Helper()
	dir = b.TempDir()
	raw = rawFsyncRate(b, dir)
	s, err := bbolt.Open(filepath.Join(dir, "queue.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s, dir, raw
}

// enqueueAll enqueues n messages of body from producers goroutines.
func enqueueAll(ctx context.Context, b *testing.B, s *bbolt.Store, producers, n int, body []byte) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range producers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if _, err := s.Enqueue(ctx, benchMessage(body)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// report gives rate, in unit, beside the raw fsync rate of the same disk
// and their ratio (x_raw_fsync).
func report(b *testing.B, rate float64, unit string, raw float64) {
	b.ReportMetric(rate, unit)
	b.ReportMetric(raw, "raw_fsync/s")
	b.ReportMetric(rate/raw, "x_raw_fsync")
}

// BenchmarkEnqueue measures durable 4 KiB enqueues with 1 to 256
// concurrent producers, reported beside the raw write+fsync rate of the
// same disk measured in the same run, before and after (x_raw_fsync =
// enqueues per second divided by syncs per second).
func BenchmarkEnqueue(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 256)
	for _, producers := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("producers=%d", producers), func(b *testing.B) {
			s, dir, raw := openBench(b)
			b.ResetTimer()
			start := time.Now()
			enqueueAll(context.Background(), b, s, producers, b.N, body)
			rate := float64(b.N) / time.Since(start).Seconds()
			b.StopTimer()
			// The disk's rate drifts with the machine's load: take it
			// before and after, and compare with the mean.
			raw = (raw + rawFsyncRate(b, dir)) / 2
			report(b, rate, "msgs/s", raw)
		})
	}
}

// BenchmarkLeaseComplete measures taking items off a full queue: 16
// workers lease batches of 16 and complete each item.
func BenchmarkLeaseComplete(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 256)
	s, _, raw := openBench(b)
	ctx := context.Background()
	enqueueAll(ctx, b, s, 64, b.N, body)
	b.ResetTimer()
	start := time.Now()
	var done atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for done.Load() < int64(b.N) {
				items, err := s.Lease(ctx, 16, time.Minute)
				if err != nil {
					b.Error(err)
					return
				}
				if len(items) == 0 {
					return
				}
				for _, it := range items {
					if err := s.Complete(ctx, it.Lease); err != nil {
						b.Error(err)
						return
					}
					done.Add(1)
				}
			}
		})
	}
	wg.Wait()
	rate := float64(done.Load()) / time.Since(start).Seconds()
	b.StopTimer()
	report(b, rate, "items/s", raw)
}

// BenchmarkRunner measures the whole path on the embedded store: enqueue,
// lease, a deliverer that accepts at once, complete.
func BenchmarkRunner(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 256)
	s, _, raw := openBench(b)
	var delivered atomic.Int64
	all := make(chan struct{})
	d := queue.DelivererFunc(func(ctx context.Context, dl *queue.Delivery) ([]queue.RecipientResult, error) {
		if delivered.Add(1) == int64(b.N) {
			close(all)
		}
		return []queue.RecipientResult{{Outcome: queue.OutcomeDelivered}}, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	b.ResetTimer()
	start := time.Now()
	go func() { runDone <- queue.NewRunner(s, d, &queue.RunnerOptions{Concurrency: 64}).Run(ctx) }()
	enqueueAll(ctx, b, s, 64, b.N, body)
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatal("not all delivered in 5 minutes")
	}
	rate := float64(b.N) / time.Since(start).Seconds()
	b.StopTimer()
	cancel()
	<-runDone
	report(b, rate, "msgs/s", raw)
}
