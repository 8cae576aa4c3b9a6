package mxresolve

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/dnstest"
	"github.com/miekg/dns"
)

func TestTruncatedAnswerIsAskedAgainOverTCP(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	for i := range 4 {
		h := fmt.Sprintf("mx%d.example.com", i)
		s.AddMX("example.com", 300, uint16(10*(i+1)), h)
		s.AddA(h, 300, fmt.Sprintf("192.0.2.%d", i+1))
	}
	// Over UDP the reply has TC and only mx0 and mx1.
	s.SetFault("example.com", dns.TypeMX, dnstest.Truncate)
	r := newResolver(t, nil, s)

	res := resolve(t, r, "example.com")
	if want := []string{"mx0.example.com", "mx1.example.com", "mx2.example.com", "mx3.example.com"}; !slices.Equal(hostNames(res), want) {
		t.Fatalf("hosts %v, want %v (the truncated reply must not be used)", hostNames(res), want)
	}
	if u, tc := s.Answered("example.com", dns.TypeMX, dnstest.UDP), s.Answered("example.com", dns.TypeMX, dnstest.TCP); u != 1 || tc != 1 {
		t.Fatalf("MX answered %d over UDP and %d over TCP, want 1 and 1", u, tc)
	}
}

func TestEDNS0AvoidsTruncation(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	// 30 MX records need more than 512 bytes and less than 1232.
	for i := range 30 {
		s.AddMX("example.com", 300, uint16(i), fmt.Sprintf("mail-exchanger-%02d.example.com", i))
	}
	s.AddA("mail-exchanger-00.example.com", 300, "192.0.2.1")
	r := newResolver(t, nil, s)
	res := resolve(t, r, "example.com")
	if len(res.Hosts) != 1 || res.Hosts[0].Name != "mail-exchanger-00.example.com" {
		t.Fatalf("hosts %v", hostNames(res))
	}
	if n := s.Answered("", 0, dnstest.TCP); n != 0 {
		t.Fatalf("%d queries over TCP, want none with a 1232-byte EDNS0 buffer", n)
	}
}

func TestTruncatedAnswerWithFailingTCPIsNotUsed(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.AddMX("example.com", 300, 10, "mx1.example.com")
	s.AddMX("example.com", 300, 20, "mx2.example.com")
	s.AddA("mx1.example.com", 300, "192.0.2.1")
	s.SetFault("example.com", dns.TypeMX, dnstest.Truncate)
	r := newResolver(t, &Options{Timeout: 200 * time.Millisecond}, s)
	// The UDP reply is truncated and the TCP query times out, so the
	// look-up fails instead of using the partial record set.
	s.SetFaultOn(dnstest.TCP, "example.com", dns.TypeMX, dnstest.Silence)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := r.Resolve(ctx, "example.com")
	if !IsTemporary(err) || !errors.Is(err, ErrNoAnswer) {
		t.Fatalf("err = %v, want temporary", err)
	}
	if n := s.Received("example.com", dns.TypeMX, dnstest.TCP); n != 1 {
		t.Fatalf("%d TCP queries, want 1", n)
	}
}

func TestDeadFirstNameserverIsTriedLast(t *testing.T) {
	t.Parallel()
	dead := dnstest.Start(t)
	dead.SetFault("example.com", 0, dnstest.Silence)
	dead.SetFault("example.org", 0, dnstest.Silence)
	dead.SetFault("mx.example.com", 0, dnstest.Silence)
	dead.SetFault("mx.example.org", 0, dnstest.Silence)
	dead.SetFault("example.net", 0, dnstest.Silence)
	good := dnstest.Start(t)
	for _, d := range []string{"example.com", "example.org"} {
		good.AddMX(d, 300, 10, "mx."+d)
		good.AddA("mx."+d, 300, "192.0.2.1")
	}
	clock := newFakeClock()
	r := newResolver(t, &Options{Timeout: 200 * time.Millisecond, NameserverBackoff: time.Minute,
		Clock: clock.Now, AddressPolicy: IPv4Only}, dead, good)

	res := resolve(t, r, "example.com")
	if len(res.Hosts) != 1 {
		t.Fatalf("hosts %v", hostNames(res))
	}
	if n := dead.Received("example.com", dns.TypeMX, ""); n != 1 {
		t.Fatalf("dead server got %d MX queries, want 1", n)
	}
	before := dead.Received("", 0, "")
	// Within the back-off the dead server is asked last, so not at all
	// while the good one answers.
	resolve(t, r, "example.org")
	if n := dead.Received("", 0, ""); n != before {
		t.Fatalf("dead server asked during its back-off (%d queries, was %d)", n, before)
	}
	// After the back-off it is first again.
	clock.Advance(2 * time.Minute)
	good.AddMX("example.net", 300, 10, "mx.example.org")
	resolve(t, r, "example.net")
	if n := dead.Received("example.net", dns.TypeMX, ""); n != 1 {
		t.Fatalf("dead server not asked again after its back-off (%d)", n)
	}
}

func TestServfailMovesToNextNameserver(t *testing.T) {
	t.Parallel()
	bad := dnstest.Start(t)
	bad.SetFault("example.com", 0, dnstest.ServFail)
	bad.SetFault("mx.example.com", 0, dnstest.Refused)
	good := dnstest.Start(t)
	good.AddMX("example.com", 300, 10, "mx.example.com")
	good.AddA("mx.example.com", 300, "192.0.2.1")
	r := newResolver(t, &Options{AddressPolicy: IPv4Only}, bad, good)
	res := resolve(t, r, "example.com")
	if len(res.Hosts) != 1 || bad.Answered("example.com", dns.TypeMX, "") != 1 {
		t.Fatalf("hosts %v; bad server answered %d", hostNames(res), bad.Answered("", 0, ""))
	}
}

func TestEveryNameserverFailing(t *testing.T) {
	t.Parallel()
	a := dnstest.Start(t)
	a.SetFault("example.com", 0, dnstest.ServFail)
	b := dnstest.Start(t)
	b.SetFault("example.com", 0, dnstest.Silence)
	closed := dnstest.Start(t)
	closed.Close()
	r := newResolver(t, &Options{Timeout: 200 * time.Millisecond}, a, b, closed)
	e := resolveErr(t, r, "example.com")
	wantCode(t, e, 451, [3]int{4, 4, 3}, ErrServerFailure)
	if a.Received("example.com", dns.TypeMX, "") != 1 || b.Received("example.com", dns.TypeMX, "") != 1 {
		t.Fatalf("not every nameserver was asked: %v", e)
	}
}

func TestCancellationStopsInFlightQueries(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.SetFault("example.com", 0, dnstest.Silence)
	// A timeout far longer than the test: only cancellation can end the
	// query.
	r := newResolver(t, &Options{Timeout: time.Hour}, s)

	for _, network := range []string{"udp", "tcp"} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		name := "example.com"
		if network == "tcp" {
			// Truncation sends the query to TCP, where it is silenced.
			name = "tcp.example.com"
			s.AddMX(name, 300, 10, "mx.example.com")
			s.SetFault(name, 0, dnstest.Truncate)
			s.SetFaultOn(dnstest.TCP, name, 0, dnstest.Silence)
		}
		go func() {
			_, err := r.Resolve(ctx, name)
			done <- err
		}()
		wait, cancelWait := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.WaitReceived(wait, name, dns.TypeMX, network, 1); err != nil {
			t.Fatal(err)
		}
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) || !IsTemporary(err) {
				t.Fatalf("%s: err = %v, want a temporary error wrapping context.Canceled", network, err)
			}
		case <-wait.Done():
			t.Fatalf("%s: Resolve did not return after cancellation", network)
		}
		cancelWait()
	}

	// The cancelled queries really stopped: once the server answers, a new
	// look-up is not stuck behind them (it would join a query still in
	// flight, which waits for the one-hour timeout).
	s.SetFault("example.com", 0, dnstest.NoFault)
	s.AddMX("example.com", 300, 10, "mx.example.com")
	s.AddA("mx.example.com", 300, "192.0.2.1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.Resolve(ctx, "example.com"); err != nil {
		t.Fatalf("look-up after cancellation: %v", err)
	}
}

func TestDeadlineBoundsTheLookup(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.SetFault("example.com", 0, dnstest.Silence)
	r := newResolver(t, &Options{Timeout: time.Hour}, s)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := r.Resolve(ctx, "example.com")
	if !errors.Is(err, context.DeadlineExceeded) || !IsTemporary(err) {
		t.Fatalf("err = %v", err)
	}
}

func TestNameserversFromResolvConf(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	conf := "# test\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions rotate attempts:3\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	r := New(&Options{ResolvConf: path})
	got, err := r.nameservers()
	if err != nil || !slices.Equal(got, []string{"192.0.2.53:53", "[2001:db8::53]:53"}) {
		t.Fatalf("nameservers %v, %v", got, err)
	}

	r = New(&Options{Nameservers: []string{"127.0.0.1", "127.0.0.2:5353", "::1", "[::1]:54"}})
	got, _ = r.nameservers()
	if want := []string{"127.0.0.1:53", "127.0.0.2:5353", "[::1]:53", "[::1]:54"}; !slices.Equal(got, want) {
		t.Fatalf("nameservers %v, want %v", got, want)
	}

	r = New(&Options{ResolvConf: filepath.Join(dir, "missing")})
	e := resolveErr(t, r, "example.com")
	wantCode(t, e, 451, [3]int{4, 4, 3}, ErrNoNameservers)

	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("search example.com\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e = resolveErr(t, New(&Options{ResolvConf: empty}), "example.com")
	wantCode(t, e, 451, [3]int{4, 4, 3}, ErrNoNameservers)
}

func TestServerWithoutEDNS0(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t)
	s.SetRejectEDNS0(true)
	// 30 MX records: more than 512 bytes, so without EDNS0 the UDP reply
	// is truncated and TCP brings the whole set.
	for i := range 30 {
		s.AddMX("example.com", 300, uint16(i), fmt.Sprintf("mail-exchanger-%02d.example.com", i))
	}
	s.AddA("mail-exchanger-00.example.com", 300, "192.0.2.1")
	r := newResolver(t, &Options{AddressPolicy: IPv4Only}, s)
	res := resolve(t, r, "example.com")
	if len(res.Hosts) != 1 || res.Hosts[0].Name != "mail-exchanger-00.example.com" {
		t.Fatalf("hosts %v", hostNames(res))
	}
	if u, tc := s.Answered("example.com", dns.TypeMX, dnstest.UDP), s.Answered("example.com", dns.TypeMX, dnstest.TCP); u != 2 || tc != 1 {
		t.Fatalf("MX answered %d times over UDP (FORMERR, then truncated) and %d over TCP, want 2 and 1", u, tc)
	}
}
