package loopback

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// ephemeral returns the machine's ephemeral port range, skipping where it
// cannot be read (the tests of the fallback cover those systems).
func ephemeral(t *testing.T) (low, high int) {
	t.Helper()
	low, high, err := readRange(rangeFile)
	if err != nil {
		if runtime.GOOS == "linux" {
			t.Fatalf("reading the ephemeral range on Linux: %v", err)
		}
		t.Skipf("no ephemeral port range on %s: %v", runtime.GOOS, err)
	}
	if outside(low, high).size() < minCandidates {
		t.Skipf("the ephemeral range %d-%d leaves too few ports outside it", low, high)
	}
	return low, high
}

func port(t *testing.T, ln net.Listener) int {
	t.Helper()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestListenPortOutsideEphemeralRange(t *testing.T) {
	t.Parallel()
	low, high := ephemeral(t)
	for _, host := range []string{"", "127.0.0.1", "127.0.0.2"} {
		ln, err := Listen("tcp", host)
		if err != nil {
			t.Fatalf("Listen(%q): %v", host, err)
		}
		p := port(t, ln)
		ln.Close()
		if p >= low && p <= high {
			t.Errorf("Listen(%q) chose port %d, inside the ephemeral range %d-%d", host, p, low, high)
		}
		if p < lowestPort {
			t.Errorf("Listen(%q) chose port %d, below %d", host, p, lowestPort)
		}
	}
}

func TestListenIPv6(t *testing.T) {
	t.Parallel()
	low, high := ephemeral(t)
	ln, err := Listen("tcp6", "::1")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	defer ln.Close()
	if p := port(t, ln); p >= low && p <= high {
		t.Errorf("port %d inside the ephemeral range %d-%d", p, low, high)
	}
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.Equal(net.IPv6loopback) {
		t.Errorf("listening on %v, want ::1", ip)
	}
}

func TestListenersGetDistinctPorts(t *testing.T) {
	t.Parallel()
	const n = 200
	seen := map[int]bool{}
	for range n {
		ln, err := Listen("tcp", "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		p := port(t, ln)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}

// TestReListenWhileConnecting is the case Listen exists for: a server
// stops, the machine opens many outgoing loopback connections, and the
// server listens again on its port.
func TestReListenWhileConnecting(t *testing.T) {
	t.Parallel()
	ephemeral(t)
	ln, err := Listen("tcp", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	freed := port(t, ln)
	ln.Close()

	// A peer on an ordinary port 0, and many connections to it, all held
	// open so that each takes its own ephemeral local port.
	peer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		var in []net.Conn
		defer func() {
			for _, c := range in {
				c.Close()
			}
		}()
		for {
			c, err := peer.Accept()
			if err != nil {
				return
			}
			in = append(in, c)
		}
	}()
	defer func() {
		peer.Close()
		<-acceptDone
	}()
	const n = 500
	deadline := time.Now().Add(30 * time.Second)
	var out []net.Conn
	defer func() {
		for _, c := range out {
			c.Close()
		}
	}()
	d := net.Dialer{Deadline: deadline}
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		c, err := d.Dial("tcp", peer.Addr().String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		out = append(out, c)
		if local := c.LocalAddr().(*net.TCPAddr).Port; local == freed {
			t.Fatalf("outgoing connection %d was handed the stopped server's port %d", i, freed)
		}
	}
	if len(out) < n {
		t.Fatalf("only %d connections before the deadline", len(out))
	}

	again, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening again on %s: %v", addr, err)
	}
	again.Close()
}

func TestListenRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ network, host string }{
		{"tcp", "192.0.2.1"},
		{"tcp", "0.0.0.0"},
		{"tcp", "localhost"},
		{"tcp", "mx.example.com"},
		{"tcp4", "::1"},
	} {
		ln, err := Listen(tc.network, tc.host)
		if err == nil {
			ln.Close()
			t.Errorf("Listen(%q, %q) succeeded", tc.network, tc.host)
			continue
		}
		if tc.network == "tcp" && !errors.Is(err, ErrNotLoopback) {
			t.Errorf("Listen(%q, %q) = %v, want ErrNotLoopback", tc.network, tc.host, err)
		}
	}
	if _, err := Listen("udp", "127.0.0.1"); err == nil {
		t.Error("Listen(udp) succeeded")
	}
}

// TestFallbackToPortZero: without a readable range (other systems), or
// with too few ports outside it, Listen still listens, on a port the
// kernel chose from its ephemeral range.
func TestFallbackToPortZero(t *testing.T) {
	t.Parallel()
	low, high := ephemeral(t)
	dir := t.TempDir()
	narrow := filepath.Join(dir, "narrow")
	// 100 ports below the range and 535 above: fewer than minCandidates.
	if err := os.WriteFile(narrow, []byte("10100\t65000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(dir, "missing"), narrow} {
		ln, err := listen("tcp", "127.0.0.1", path)
		if err != nil {
			t.Fatalf("range in %s: %v", path, err)
		}
		p := port(t, ln)
		ln.Close()
		if p < low || p > high {
			t.Errorf("range in %s: port %d, want one the kernel chose in %d-%d", path, p, low, high)
		}
	}
}

// TestChosenFromFileRange: the range read decides the ports.
func TestChosenFromFileRange(t *testing.T) {
	t.Parallel()
	// An ephemeral range that covers 10000-64000 leaves 64001-65535.
	path := filepath.Join(t.TempDir(), "range")
	if err := os.WriteFile(path, []byte("1024 64000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		ln, err := listen("tcp", "127.0.0.1", path)
		if err != nil {
			t.Fatal(err)
		}
		p := port(t, ln)
		ln.Close()
		if p <= 64000 {
			t.Fatalf("port %d, want above 64000", p)
		}
	}
}

func TestParseRange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in        string
		low, high int
		ok        bool
	}{
		{"32768\t60999\n", 32768, 60999, true},
		{"1024 65535", 1024, 65535, true},
		{"  40000   40000  ", 40000, 40000, true},
		{"", 0, 0, false},
		{"32768", 0, 0, false},
		{"32768 60999 1", 0, 0, false},
		{"60999 32768", 0, 0, false},
		{"0 100", 0, 0, false},
		{"1 65536", 0, 0, false},
		{"a b", 0, 0, false},
		{"-1 5", 0, 0, false},
	} {
		low, high, err := parseRange(tc.in)
		if (err == nil) != tc.ok || low != tc.low || high != tc.high {
			t.Errorf("parseRange(%q) = %d, %d, %v; want %d, %d, ok %v", tc.in, low, high, err, tc.low, tc.high, tc.ok)
		}
	}
}

func TestGaps(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		low, high int
		size      int
		first     int
		last      int
	}{
		{32768, 60999, 32768 - 10000 + 65535 - 60999, 10000, 65535},
		{1024, 65535, 0, 0, 0},
		{1024, 5000, 65535 - 10000 + 1, 10000, 65535},
		{20000, 65535, 10000, 10000, 19999},
	} {
		g := outside(tc.low, tc.high)
		if g.size() != tc.size {
			t.Errorf("outside(%d, %d).size() = %d, want %d", tc.low, tc.high, g.size(), tc.size)
			continue
		}
		if g.size() == 0 {
			continue
		}
		if g.port(0) != tc.first || g.port(g.size()-1) != tc.last {
			t.Errorf("outside(%d, %d): ports %d..%d, want %d..%d", tc.low, tc.high, g.port(0), g.port(g.size()-1), tc.first, tc.last)
		}
		for i := range g.size() {
			if p := g.port(i); p >= tc.low && p <= tc.high || p < lowestPort || p > highestPort {
				t.Fatalf("outside(%d, %d).port(%d) = %d", tc.low, tc.high, i, p)
			}
		}
	}
}

func FuzzParseRange(f *testing.F) {
	f.Add("32768\t60999\n")
	f.Add("1 65535")
	f.Fuzz(func(t *testing.T, s string) {
		low, high, err := parseRange(s)
		if err != nil {
			return
		}
		if low < 1 || high > highestPort || low > high {
			t.Fatalf("parseRange(%q) = %d, %d", s, low, high)
		}
		g := outside(low, high)
		for _, i := range []int{0, g.size() / 2, g.size() - 1} {
			if i < 0 || i >= g.size() {
				continue
			}
			if p := g.port(i); p >= low && p <= high || p < lowestPort || p > highestPort {
				t.Fatalf("range %d-%d: candidate %d is %d", low, high, i, p)
			}
		}
	})
}
