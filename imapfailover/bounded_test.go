package imapfailover

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptedServer is an IMAP server that greets, accepts any LOGIN and
// answers every other command with answer, which may hang or misbehave.
// It runs until the test ends.
func scriptedServer(t *testing.T, greet bool, answer func(conn net.Conn, tag, command string)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		close(done)
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				if !greet {
					<-done
					return
				}
				conn.Write([]byte("* OK [CAPABILITY IMAP4rev1] ready\r\n"))
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					tag, cmd, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
					verb, _, _ := strings.Cut(cmd, " ")
					switch strings.ToUpper(verb) {
					case "LOGIN":
						conn.Write([]byte(tag + " OK [CAPABILITY IMAP4rev1] logged in\r\n"))
					case "LOGOUT":
						conn.Write([]byte("* BYE\r\n" + tag + " OK bye\r\n"))
						return
					default:
						answer(conn, tag, strings.ToUpper(verb))
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func scriptedPool(t *testing.T, addr string, mod func(*Options)) *Pool {
	t.Helper()
	o := &Options{
		Replicas:       []Replica{{Name: "hostile", Addr: addr, TLS: TLSNone, Username: "alice", Password: "secret"}},
		CommandTimeout: 200 * time.Millisecond,
		DialTimeout:    5 * time.Second, // generous: only the greeting test waits for it
	}
	if mod != nil {
		mod(o)
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func noop(ctx context.Context, c *Conn) error { return c.Noop(ctx) }

// runBounded runs fn and fails the test if it does not return within a
// generous bound: the point is that it returns at all.
func runBounded(t *testing.T, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("command not bounded")
		return nil
	}
}

func TestSilentServerTimesOut(t *testing.T) {
	t.Parallel()
	addr := scriptedServer(t, true, func(net.Conn, string, string) {})
	p := scriptedPool(t, addr, nil)
	err := runBounded(t, func() error { return p.Do(t.Context(), Once, noop) })
	var e *Error
	if !errors.Is(err, ErrTimeout) || !errors.As(err, &e) || e.Replica != "hostile" || e.Op != "noop" {
		t.Fatalf("err %v", err)
	}
	if st := p.Stats(); st.Open != 0 {
		t.Fatalf("timed-out connection kept: %+v", st)
	}
}

func TestSilentGreetingTimesOut(t *testing.T) {
	t.Parallel()
	addr := scriptedServer(t, false, nil)
	p := scriptedPool(t, addr, func(o *Options) { o.DialTimeout = 300 * time.Millisecond })
	err := runBounded(t, func() error { return p.Do(t.Context(), Repeatable, noop) })
	var e *Error
	if !errors.Is(err, ErrNoReplica) || !errors.Is(err, ErrTimeout) || !errors.As(err, &e) {
		t.Fatalf("err %v", err)
	}
}

func TestContextEndsHangingCommand(t *testing.T) {
	t.Parallel()
	addr := scriptedServer(t, true, func(net.Conn, string, string) {})
	p := scriptedPool(t, addr, func(o *Options) { o.CommandTimeout = time.Hour })
	ctx, cancel := context.WithCancel(t.Context())
	err := runBounded(t, func() error {
		return p.Do(ctx, Once, func(ctx context.Context, c *Conn) error {
			time.AfterFunc(50*time.Millisecond, cancel)
			return c.Noop(ctx)
		})
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
		t.Fatalf("err %v", err)
	}
}

// A server that keeps sending one line is alive by the silence rule, so
// CommandTimeout does not end it; the line limit does, before the line
// fills memory.
func TestLongLines(t *testing.T) {
	t.Parallel()
	megabyte := bytes.Repeat([]byte("x"), 1<<20)
	oneMegabyteLine := func(conn net.Conn, tag, _ string) {
		conn.Write(append(append([]byte("* OK "), megabyte...), "\r\n"+tag+" OK done\r\n"...))
	}
	endless := func(conn net.Conn, _, _ string) {
		conn.Write([]byte("* OK "))
		// Bounded for the test's sake: 256 MiB, far past any limit.
		for range 256 {
			if _, err := conn.Write(megabyte); err != nil {
				return
			}
		}
	}
	for _, tc := range []struct {
		name    string
		answer  func(net.Conn, string, string)
		maxLine int
		want    error
	}{
		{"megabyte line under the default limit", oneMegabyteLine, 0, nil},
		{"megabyte line over a 64 KiB limit", oneMegabyteLine, 64 << 10, ErrLineTooLong},
		{"endless line", endless, 2 << 20, ErrLineTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr := scriptedServer(t, true, tc.answer)
			p := scriptedPool(t, addr, func(o *Options) {
				o.MaxLineLength = tc.maxLine
				o.CommandTimeout = 5 * time.Second
			})
			err := runBounded(t, func() error { return p.Do(t.Context(), Once, noop) })
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var e *Error
			if !errors.Is(err, tc.want) || !errors.As(err, &e) || e.Op != "noop" {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if st := p.Stats(); st.Open != 0 {
				t.Fatalf("connection kept: %+v", st)
			}
		})
	}
}
