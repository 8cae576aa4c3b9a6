package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestScriptLeavesEveryServerServing runs the fault script's steps on a
// world without mail, with the machine opening many loopback connections
// while the servers are down, and checks that every restart and repair
// succeeded and every server answers again at the address its clients
// know. A server restarted on a port from the kernel's ephemeral range
// could find it taken by one of those connections.
func TestScriptLeavesEveryServerServing(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	w, err := newWorld(0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	mailerRestarts := 0
	stg := &stage{world: w, restartMailer: func() error { mailerRestarts++; return nil }}

	steps := script()
	firstRepair := len(steps)
	for i, s := range steps {
		if !s.kill {
			firstRepair = i
			break
		}
	}
	for _, s := range steps[:firstRepair] {
		if err := s.do(stg); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
	}
	// The machine keeps busy while the servers are down.
	for _, c := range holdConnections(t, ctx, 300) {
		defer c.Close()
	}
	for _, s := range steps[firstRepair:] {
		if err := s.do(stg); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
	}
	if mailerRestarts != 1 {
		t.Errorf("the script restarted the mailer %d times, want 1", mailerRestarts)
	}

	for _, h := range w.hosts() {
		if err := greeting(ctx, w.net, h.dial, "220 "); err != nil {
			t.Errorf("%s at %s: %v", h.name, h.dial, err)
		}
	}
	for _, r := range w.imapReplicas() {
		if err := greeting(ctx, w.net, r.Addr, "* OK"); err != nil {
			t.Errorf("%s at %s: %v", r.Name, r.Addr, err)
		}
	}

	// The servers the script stops listen outside the ephemeral range.
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return // not Linux: nothing to compare with
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*smtpHost{w.mx[0], w.relay[0]} {
		a, err := net.ResolveTCPAddr("tcp", h.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if a.Port >= low && a.Port <= high && (low > 10000+1024 || high < 65535-1024) {
			t.Errorf("%s listens on %d, in the ephemeral range %d-%d", h.name, a.Port, low, high)
		}
	}
}

// holdConnections opens n loopback connections and keeps them open, so
// that each holds an ephemeral port.
func holdConnections(t *testing.T, ctx context.Context, n int) []net.Conn {
	t.Helper()
	peer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, n)
	go func() {
		for range n {
			c, err := peer.Accept()
			if err != nil {
				break
			}
			accepted <- c
		}
		close(accepted)
	}()
	var conns []net.Conn
	var d net.Dialer
	for i := range n {
		c, err := d.DialContext(ctx, "tcp", peer.Addr().String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	for c := range accepted {
		conns = append(conns, c)
	}
	peer.Close()
	return conns
}

// greeting connects to addr through dialer and checks that the first line
// starts with want.
func greeting(ctx context.Context, dialer *loopbackNet, addr, want string) error {
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the greeting: %w", err)
	}
	if !strings.HasPrefix(line, want) {
		return fmt.Errorf("greeting %q, want %q", strings.TrimSpace(line), want)
	}
	return nil
}
