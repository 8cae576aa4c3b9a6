package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/hamail/hamail"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/smtpclient"
)

// BenchmarkSubmit measures submissions acknowledged per second, each client
// on its own connection, in two ways in the same run:
//
//   - next-hop: straight to the in-process next hop, which keeps the message
//     in memory (the baseline: SMTP alone);
//   - relayd: through relayd, whose 250 waits for the fsync of the queue, and
//     which delivers to that next hop in the background.
//
// The ratio of their ns/op is the price of answering only once durable.
func BenchmarkSubmit(b *testing.B) {
	body := message("bench") + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 26) // about 2 KB
	hop := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true})

	b.Run("next-hop", func(b *testing.B) {
		benchSubmit(b, hop.Addr(), false, body)
	})

	b.Run("relayd", func(b *testing.B) {
		dir := b.TempDir()
		m, err := hamail.Open(&hamail.Options{
			Relays: []smtpclient.Relay{{Addr: hop.Addr(), TLS: smtpclient.TLSNone}},
			Dir:    filepath.Join(dir, "queue"),
		})
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		h, _ := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
		us, err := parseUsers("users", strings.NewReader(testUser+":"+string(h)+"\n"))
		if err != nil {
			b.Fatal(err)
		}
		s := NewServer(ServerOptions{Hostname: "bench.example.test", Users: us, InsecureAuth: true,
			MaxMessageBytes: 1 << 20, MaxRecipients: 10, MaxConnections: 1000,
			ReadTimeout: time.Minute, WriteTimeout: time.Minute, Logger: slog.New(slog.DiscardHandler)}, m)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go s.Serve(ln)
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s.Shutdown(ctx)
		}()
		benchSubmit(b, ln.Addr().String(), true, body)
	})
}

func benchSubmit(b *testing.B, addr string, auth bool, body string) {
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		c, err := smtp.Dial(addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		if err := c.Hello("bench.example.test"); err != nil {
			b.Error(err)
			return
		}
		if auth {
			if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
				b.Error(err)
				return
			}
		}
		for pb.Next() {
			if err := c.Mail("alice@example.org", nil); err != nil {
				b.Error(err)
				return
			}
			if err := c.Rcpt("bob@example.net", nil); err != nil {
				b.Error(err)
				return
			}
			w, err := c.Data()
			if err != nil {
				b.Error(err)
				return
			}
			io.WriteString(w, body)
			if err := w.Close(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
