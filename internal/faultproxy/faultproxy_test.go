package faultproxy_test

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/faultproxy"
)

// echoServer echoes every byte back on 127.0.0.1 until the test ends.
type echoServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startEcho(t testing.TB) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *echoServer) addr() string { return s.ln.Addr().String() }

func (s *echoServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reads the same number of bytes back, waiting at
// most wait.
func roundTrip(c net.Conn, msg string, wait time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(wait))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

func mustEcho(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	got, err := roundTrip(c, msg, 5*time.Second)
	if err != nil || got != msg {
		t.Fatalf("echo %q: got %q, %v", msg, got, err)
	}
}

// dialAndRead dials addr and reads one byte. A reset can surface in
// either step: when the RST arrives before connect(2) reports success, the
// dial itself fails with ECONNRESET.
func dialAndRead(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPassEchoesAndCounts(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	p := faultproxy.Start(t, echo.addr())
	if p.Target() != echo.addr() {
		t.Fatalf("Target() = %q, want %q", p.Target(), echo.addr())
	}
	c := dial(t, p.Addr())
	mustEcho(t, c, "EHLO mail.example.org\r\n")
	c2 := dial(t, p.Addr())
	mustEcho(t, c2, "QUIT\r\n")
	if got := p.Accepted(); got != 2 {
		t.Fatalf("Accepted() = %d, want 2", got)
	}
	c.Close()
	c2.Close()
	waitFor(t, "connections to be released", func() bool { return p.Active() == 0 })
}

func TestBlackHoleTimesOutThenPassRecovers(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	p := faultproxy.Start(t, echo.addr())

	open := dial(t, p.Addr())
	mustEcho(t, open, "before\r\n")

	if err := p.SetMode(faultproxy.BlackHole); err != nil {
		t.Fatal(err)
	}
	// A new connection is accepted (the dial succeeds) but never answered.
	fresh := dial(t, p.Addr())
	if _, err := roundTrip(fresh, "EHLO\r\n", 200*time.Millisecond); !isTimeout(err) {
		t.Fatalf("new connection in black hole: want read timeout, got %v", err)
	}
	// The already open connection goes silent too.
	if _, err := roundTrip(open, "during\r\n", 200*time.Millisecond); !isTimeout(err) {
		t.Fatalf("open connection in black hole: want read timeout, got %v", err)
	}

	if err := p.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	mustEcho(t, dial(t, p.Addr()), "after\r\n")
	// The open connection forwards again; what was sent in the black hole
	// is gone.
	mustEcho(t, open, "again\r\n")
	// A connection accepted in the black hole never reaches the target.
	if _, err := roundTrip(fresh, "still\r\n", 200*time.Millisecond); !isTimeout(err) {
		t.Fatalf("connection accepted in black hole: want read timeout, got %v", err)
	}
}

func TestResetFailsOpenAndNewConnections(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	p := faultproxy.Start(t, echo.addr())
	open := dial(t, p.Addr())
	mustEcho(t, open, "hello\r\n")

	if err := p.SetMode(faultproxy.Reset); err != nil {
		t.Fatal(err)
	}
	open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("open connection after Reset: want ECONNRESET, got %v", err)
	}

	if err := dialAndRead(p.Addr()); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("new connection in Reset mode: want ECONNRESET, got %v", err)
	}

	if err := p.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	mustEcho(t, dial(t, p.Addr()), "back\r\n")
}

func TestRefuseThenListenAgainOnSameAddress(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	p := faultproxy.Start(t, echo.addr())
	addr := p.Addr()
	if err := p.SetMode(faultproxy.Refuse); err != nil {
		t.Fatal(err)
	}
	_, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial in Refuse mode: want ECONNREFUSED, got %v", err)
	}
	if err := p.SetMode(faultproxy.Pass); err != nil {
		t.Fatal(err)
	}
	if p.Addr() != addr {
		t.Fatalf("address changed from %s to %s", addr, p.Addr())
	}
	mustEcho(t, dial(t, addr), "ok\r\n")
}

func TestLatencyDelaysEachDirection(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	p := faultproxy.Start(t, echo.addr())
	c := dial(t, p.Addr())
	const d = 50 * time.Millisecond
	p.SetLatency(d)
	start := time.Now()
	mustEcho(t, c, "slow\r\n")
	// One chunk each way: at least twice the latency. Only the lower bound
	// is asserted; a loaded machine may be slower.
	if el := time.Since(start); el < 2*d {
		t.Fatalf("round trip took %v, want at least %v", el, 2*d)
	}
	p.SetLatency(0)
	mustEcho(t, c, "fast\r\n")
}

func TestDialFailureResetsClient(t *testing.T) {
	t.Parallel()
	// A target where nothing listens: take a port and release it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close()
	p := faultproxy.Start(t, target)
	if err := dialAndRead(p.Addr()); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("want the connection reset, got %v", err)
	}
}

func TestListenRejectsBadTarget(t *testing.T) {
	t.Parallel()
	if _, err := faultproxy.Listen("no-port", nil); err == nil {
		t.Fatal("Listen accepted a target without a port")
	}
}

func TestSetModeAfterClose(t *testing.T) {
	t.Parallel()
	echo := startEcho(t)
	p, err := faultproxy.Listen(echo.addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if err := p.SetMode(faultproxy.Pass); !errors.Is(err, faultproxy.ErrClosed) {
		t.Fatalf("SetMode after Close: got %v, want ErrClosed", err)
	}
	p.Close() // idempotent
}

// Not parallel: it counts the process's goroutines, which is only
// meaningful while no other test runs (parallel tests wait until the
// sequential ones are done).
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		echo := startEcho(t)
		defer echo.close()
		p, err := faultproxy.Listen(echo.addr(), &faultproxy.Options{Latency: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		var conns []net.Conn
		for range 3 {
			c := dial(t, p.Addr())
			mustEcho(t, c, "x")
			conns = append(conns, c)
		}
		p.SetMode(faultproxy.BlackHole)
		conns = append(conns, dial(t, p.Addr()))
		// Refuse closes the listener: let the accept happen first.
		waitFor(t, "four accepts", func() bool { return p.Accepted() == 4 })
		p.SetMode(faultproxy.Refuse)
		p.SetMode(faultproxy.Pass)
		waitFor(t, "four live connections", func() bool { return p.Active() == 4 })
		p.Close()
		if n := p.Active(); n != 0 {
			t.Errorf("Active() after Close = %d", n)
		}
		for _, c := range conns {
			c.Close()
		}
	}()
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}
