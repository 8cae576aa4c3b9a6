package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail"
)

// spoolFunc adapts a function to spool.
type spoolFunc func(ctx context.Context, m *hamail.Message) (string, error)

func (f spoolFunc) Send(ctx context.Context, m *hamail.Message) (string, error) { return f(ctx, m) }

// serveWith runs a Server over sp on a loopback port.
func serveWith(t *testing.T, f *fixture, sp spool) string {
	t.Helper()
	c := defaultConfig()
	c.Hostname, c.TLSCert, c.TLSKey = "submit.example.test", f.certFile, f.keyFile
	tlsConf, err := serverTLS(c)
	if err != nil {
		t.Fatal(err)
	}
	us, err := loadUsers(f.usersFile)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ServerOptions{
		Hostname: c.Hostname, TLS: tlsConf, Users: us, MaxMessageBytes: 1 << 20, MaxRecipients: 10,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, SendTimeout: 30 * time.Second,
		Logger: slog.New(slog.DiscardHandler),
	}, sp)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// TestReplyWaitsForDurability: the reply to the final dot comes only after
// the queue's Send returned, and a failed Send is a 451, never a 250.
func TestReplyWaitsForDurability(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	entered := make(chan *hamail.Message, 1)
	release := make(chan error)
	addr := serveWith(t, f, spoolFunc(func(ctx context.Context, m *hamail.Message) (string, error) {
		body, err := io.ReadAll(m.Body)
		if err != nil {
			return "", err
		}
		m.Body = strings.NewReader(string(body))
		entered <- m
		if err := <-release; err != nil {
			return "", err
		}
		return "Q1", nil
	}))

	for _, tc := range []struct {
		name    string
		sendErr error
		want    int
	}{
		{"durable", nil, 250},
		{"queue failed", errors.New("disk full"), 451},
		{"invalid", &hamail.MessageError{Field: "To[0]", Err: errors.New("bad")}, 554},
	} {
		result := make(chan error, 1)
		go func() {
			_, err := submit(addr, f.clientTLS, "alice@example.org", []string{"bob@example.net"}, message(tc.name))
			result <- err
		}()
		var m *hamail.Message
		select {
		case m = <-entered:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the queue was never asked", tc.name)
		}
		select {
		case err := <-result:
			t.Fatalf("%s: the client got its reply (%v) before the queue answered", tc.name, err)
		default:
		}
		if m.From != "alice@example.org" || len(m.To) != 1 || m.To[0] != "bob@example.net" {
			t.Errorf("%s: envelope handed to the queue: %q → %q", tc.name, m.From, m.To)
		}
		release <- tc.sendErr
		var err error
		select {
		case err = <-result:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no reply after the queue answered", tc.name)
		}
		var se *smtp.SMTPError
		switch {
		case tc.want == 250 && err != nil:
			t.Errorf("%s: %v, want 250", tc.name, err)
		case tc.want != 250 && (!errors.As(err, &se) || se.Code != tc.want):
			t.Errorf("%s: %v, want %d", tc.name, err, tc.want)
		}
	}
}

// TestSessionAfterShutdownStarts: Shutdown waits for a transaction in
// progress, closes the session once it is idle (RSET), and the listener no
// longer accepts.
func TestSessionAfterShutdownStarts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := defaultConfig()
	c.Hostname, c.TLSCert, c.TLSKey = "submit.example.test", f.certFile, f.keyFile
	tlsConf, _ := serverTLS(c)
	us, _ := loadUsers(f.usersFile)
	s := NewServer(ServerOptions{Hostname: c.Hostname, TLS: tlsConf, Users: us, InsecureAuth: true,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}, spoolFunc(func(context.Context, *hamail.Message) (string, error) {
		t.Error("a message was queued during the shutdown")
		return "", errors.New("no")
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	r := dialRaw(t, ln.Addr().String())
	r.cmd("EHLO client.example.test")
	if code, msg := r.cmd("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U="); code != 235 {
		t.Fatalf("AUTH (insecure allowed): %d %s", code, msg)
	}
	// A transaction is in progress: Shutdown must not cut it.
	if code, _ := r.cmd("MAIL FROM:<alice@example.org>"); code != 250 {
		t.Fatalf("MAIL: %d", code)
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !s.isDraining() {
		if time.Now().After(deadline) {
			t.Fatal("Shutdown never started draining")
		}
		time.Sleep(time.Millisecond) // waiting for a flag set at once by Shutdown, bounded
	}
	if code, _ := r.cmd("RSET"); code != 250 {
		t.Fatalf("RSET: %d", code)
	}
	// After RSET (answered) the session is idle: Shutdown ends it with a
	// 421 (RFC 5321 §3.8).
	if rest, err := r.readToEOF(); !isClosed(err) || !strings.HasPrefix(rest, "421 ") {
		t.Errorf("idle session during shutdown: %q, %v; want a 421 and the end", rest, err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second); err == nil {
		t.Error("the listener still accepts after Shutdown")
	}
}
