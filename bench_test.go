package hamail

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
	"github.com/hamail/hamail/smtpclient"
)

var benchBody = "From: app@example.org\r\nTo: bob@example.com\r\nSubject: benchmark\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 16)

// BenchmarkSend measures Mailer.Send (validation, line-ending check,
// durable enqueue) against the store's own Enqueue of the same message, both
// from parallel producers. The runner is held on one attempt so that it
// takes no share of the machine.
func BenchmarkSend(b *testing.B) {
	b.Run("store-enqueue", func(b *testing.B) {
		s, err := bbolt.Open(filepath.Join(b.TempDir(), "queue.db"), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		env := queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Address: "bob@example.com"}}}
		b.SetBytes(int64(len(benchBody)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Enqueue(context.Background(), &queue.Message{Envelope: env, Body: strings.NewReader(benchBody)}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("mailer-send", func(b *testing.B) {
		relay := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true})
		relay.SetFault(smtptest.StageGreeting, smtptest.Fault{Delay: time.Hour})
		m, err := Open(&Options{Relays: relayOf(relay), Dir: b.TempDir(), Runner: &queue.RunnerOptions{Concurrency: 1}})
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		b.SetBytes(int64(len(benchBody)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := m.Send(context.Background(), &Message{From: "app@example.org", To: []string{"bob@example.com"}, Body: strings.NewReader(benchBody)}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkDelivery measures queued delivery end to end (Send, lease,
// SMTP to a loopback relay, record, complete) against sending the same
// messages straight through the SMTP client, with the same concurrency.
func BenchmarkDelivery(b *testing.B) {
	const concurrency = 8
	b.Run("smtpclient-direct", func(b *testing.B) {
		relay := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true})
		c, err := smtpclient.New(&smtpclient.Options{Relays: relayOf(relay)})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		work := make(chan struct{})
		var wg sync.WaitGroup
		for range concurrency {
			wg.Go(func() {
				for range work {
					res, err := c.Send(context.Background(), &smtpclient.Message{From: "app@example.org", To: []smtpclient.Recipient{{Addr: "bob@example.com"}},
						Body: strings.NewReader(benchBody), Size: int64(len(benchBody))})
					if err != nil || res.Recipients[0].Outcome != smtpclient.Delivered {
						b.Error(err)
					}
				}
			})
		}
		b.ResetTimer()
		for range b.N {
			work <- struct{}{}
		}
		close(work)
		wg.Wait()
	})
	b.Run("mailer-queued", func(b *testing.B) {
		relay := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true})
		m, err := Open(&Options{Relays: relayOf(relay), Dir: b.TempDir(), Runner: &queue.RunnerOptions{Concurrency: concurrency}})
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		work := make(chan struct{})
		var wg sync.WaitGroup
		b.ResetTimer()
		for range concurrency {
			wg.Go(func() {
				for range work {
					if _, err := m.Send(context.Background(), &Message{From: "app@example.org", To: []string{"bob@example.com"}, Body: strings.NewReader(benchBody)}); err != nil {
						b.Error(err)
					}
				}
			})
		}
		for range b.N {
			work <- struct{}{}
		}
		close(work)
		wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, err := relay.WaitMessages(ctx, b.N); err != nil {
			b.Fatal(err)
		}
	})
}
