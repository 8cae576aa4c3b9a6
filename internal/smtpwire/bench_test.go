package smtpwire

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/internal/smtptest"
)

var benchBody = bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"), 28) // ~2 KB

// BenchmarkSend measures one 2 KB message per iteration on a reused
// connection to the in-process server, with and without PIPELINING, and
// go-smtp's client doing the same as the baseline.
func BenchmarkSend(b *testing.B) {
	for _, pipelining := range []bool{true, false} {
		name := "lockstep"
		if pipelining {
			name = "pipelined"
		}
		b.Run("smtpwire/"+name, func(b *testing.B) {
			s := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true, Capabilities: capsWith(pipelining)})
			c := connect(b, s.Addr(), nil)
			ctx := context.Background()
			rc := rcpts("rcpt@example.net")
			b.SetBytes(int64(len(benchBody)))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Send(ctx, "sender@example.org", nil, rc, bytes.NewReader(benchBody)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("go-smtp/lockstep", func(b *testing.B) {
		s := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true})
		c, err := smtp.Dial(s.Addr())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.SetBytes(int64(len(benchBody)))
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if err := c.Mail("sender@example.org", nil); err != nil {
				b.Fatal(err)
			}
			if err := c.Rcpt("rcpt@example.net", nil); err != nil {
				b.Fatal(err)
			}
			w, err := c.Data()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(w, bytes.NewReader(benchBody)); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDotWriter measures dot-stuffing throughput alone.
func BenchmarkDotWriter(b *testing.B) {
	b.SetBytes(int64(len(benchBody)))
	for b.Loop() {
		dw := dotWriter{w: io.Discard}
		dw.Write(benchBody)
		dw.Close()
	}
}

// BenchmarkSendLarge sends a 64 MB message per iteration; B/op shows that
// the body is streamed, not held in memory.
func BenchmarkSendLarge(b *testing.B) {
	const size = 64 << 20
	s := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true})
	c := connect(b, s.Addr(), nil)
	ctx := context.Background()
	rc := rcpts("rcpt@example.net")
	line := string(benchBody[:74])
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		body := smtptest.RepeatedBody(line, size)
		if _, err := c.Send(ctx, "sender@example.org", nil, rc, body); err != nil {
			b.Fatal(err)
		}
	}
}
