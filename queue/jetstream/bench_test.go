package jetstream

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
	"github.com/nats-io/nats.go"
)

var (
	benchProducers   = flag.Int("jetstream.producers", 64, "goroutines enqueuing in BenchmarkPipeline")
	benchConcurrency = flag.Int("jetstream.concurrency", 64, "attempts in flight in BenchmarkPipeline, shared by the runners")
)

// BenchmarkPipeline measures the whole path — Enqueue, a runner leasing,
// a deliverer that accepts at once, Complete — on the embedded bbolt store
// and on JetStream (one node, and three nodes with R3), all servers with
// synchronous writes, in the same run. The JetStream results carry their
// ratio to the bbolt rate as x_bbolt, and those with the default prefetch
// their ratio to the same cluster without prefetch as x_noprefetch.
//
//	go test -run '^$' -bench Pipeline -benchtime 20000x ./queue/jetstream
func BenchmarkPipeline(b *testing.B) {
	producers, concurrency := *benchProducers, *benchConcurrency
	body := bytes.Repeat([]byte("0123456789abcdef"), 256) // 4 KiB
	var bboltRate float64

	b.Run("bbolt", func(b *testing.B) {
		s, err := bbolt.Open(filepath.Join(b.TempDir(), "queue.db"), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		bboltRate = pipeline(b, []queue.Store{s}, body, producers, concurrency)
		b.ReportMetric(bboltRate, "msgs/s")
	})

	for _, size := range []int{1, 3} {
		// The servers live as long as the parent benchmark, across the
		// rounds of the sub-benchmark.
		var urls string
		if size == 1 {
			urls = startNode(b).url()
		} else {
			urls = startCluster(b, size).urls()
		}
		var round atomic.Int64
		var noPrefetchRate float64
		for _, prefetch := range []int{-1, 0} {
			name := fmt.Sprintf("jetstream-R%d", size)
			if prefetch < 0 {
				name += "-noprefetch"
			}
			b.Run(name, func(b *testing.B) {
				// A fresh stream per round; two connections, each with its
				// store and runner, as two sender processes would.
				r := round.Add(1)
				var stores []queue.Store
				for range 2 {
					nc, err := nats.Connect(urls)
					if err != nil {
						b.Fatal(err)
					}
					defer nc.Close()
					s, err := New(nc, &Options{Stream: fmt.Sprintf("BENCH%d", r), Subject: fmt.Sprintf("bench%d", r), Replicas: size, Prefetch: prefetch})
					if err != nil {
						b.Fatal(err)
					}
					if err := s.Open(context.Background()); err != nil {
						b.Fatal(err)
					}
					defer s.Close()
					stores = append(stores, s)
				}
				rate := pipeline(b, stores, body, producers, concurrency/len(stores))
				b.ReportMetric(rate, "msgs/s")
				if bboltRate > 0 {
					b.ReportMetric(rate/bboltRate, "x_bbolt")
				}
				if prefetch < 0 {
					noPrefetchRate = rate
				} else if noPrefetchRate > 0 {
					b.ReportMetric(rate/noPrefetchRate, "x_noprefetch")
				}
			})
		}
	}
}

// pipeline enqueues b.N messages through the stores from producers
// goroutines while one runner per store delivers them, and returns the
// messages completed per second.
func pipeline(b *testing.B, stores []queue.Store, body []byte, producers, concurrency int) float64 {
	b.Helper()
	var done atomic.Int64
	all := make(chan struct{})
	d := queue.DelivererFunc(func(ctx context.Context, dl *queue.Delivery) ([]queue.RecipientResult, error) {
		if done.Add(1) == int64(b.N) {
			close(all)
		}
		return delivered(len(dl.Recipients)), nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var runWG sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for _, s := range stores {
		r := queue.NewRunner(s, d, &queue.RunnerOptions{Concurrency: concurrency, PollInterval: 10 * time.Millisecond, NoDSN: true})
		runWG.Go(func() { _ = r.Run(ctx) })
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for p := range producers {
		s := stores[p%len(stores)]
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				_, err := s.Enqueue(ctx, &queue.Message{Envelope: testEnvelope(int(i)), Body: bytes.NewReader(body)})
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d delivered in 5 minutes", done.Load(), b.N)
	}
	// Completed, not only delivered: wait for the queue to drain.
	if !waitFor(time.Minute, func() bool {
		st, err := stores[0].Stats(ctx)
		return err == nil && st.Items == 0
	}) {
		b.Fatal("queue not drained")
	}
	rate := float64(b.N) / time.Since(start).Seconds()
	b.StopTimer()
	cancel()
	runWG.Wait()
	return rate
}

// BenchmarkEnqueue measures durable enqueues alone from 32 goroutines, 4
// KiB each: the embedded bbolt store, then a three-node R3 cluster with
// synchronous writes, in the same run; the JetStream result carries its
// ratio to bbolt as x_bbolt.
//
//	go test -run '^$' -bench Enqueue -benchtime 5000x ./queue/jetstream
func BenchmarkEnqueue(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 256)
	var bboltRate float64
	enqueue := func(b *testing.B, s queue.Store) float64 {
		b.SetParallelism(16) // 32 callers on 2 cores
		b.ResetTimer()
		start := time.Now()
		var i atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				n := int(i.Add(1))
				if _, err := s.Enqueue(context.Background(), &queue.Message{Envelope: testEnvelope(n), Body: bytes.NewReader(body)}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		rate := float64(b.N) / time.Since(start).Seconds()
		b.ReportMetric(rate, "msgs/s")
		return rate
	}
	b.Run("bbolt", func(b *testing.B) {
		s, err := bbolt.Open(filepath.Join(b.TempDir(), "queue.db"), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		bboltRate = enqueue(b, s)
	})
	urls := startCluster(b, 3).urls()
	var round atomic.Int64
	b.Run("jetstream-R3", func(b *testing.B) {
		r := round.Add(1)
		nc, err := nats.Connect(urls)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		s, err := New(nc, &Options{Stream: fmt.Sprintf("ENQ%d", r), Subject: fmt.Sprintf("enq%d", r)})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		if err := s.Open(context.Background()); err != nil {
			b.Fatal(err)
		}
		rate := enqueue(b, s)
		if bboltRate > 0 {
			b.ReportMetric(rate/bboltRate, "x_bbolt")
		}
	})
}
