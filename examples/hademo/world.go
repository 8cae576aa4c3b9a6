package main

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hamail/hamail/imapfailover"
	"github.com/hamail/hamail/internal/dnstest"
	"github.com/hamail/hamail/internal/faultproxy"
	"github.com/hamail/hamail/internal/imaptest"
	"github.com/hamail/hamail/internal/smtptest"
)

// The destination of the demo's mail and the names of its world.
const (
	destDomain = "example.com"
	recipient  = "user@" + destDomain
	sender     = "app@example.org"
	mxPort     = 25
)

// smtpHost is one SMTP server of the demo: a mail exchanger of the
// destination domain or a fallback relay.
type smtpHost struct {
	name  string // mx1.example.com, relay-1
	role  string // "MX 10", "fallback relay"
	srv   *smtptest.Server
	proxy *faultproxy.Proxy // in front of the MX hosts; nil for relays
	// dial is the address the Mailer connects to: the exchanger's address
	// from DNS and port 25 for MX hosts, the relay's own address for relays.
	dial string
}

// world is everything the demo starts in-process, on loopback only: a DNS
// server with the destination's MX records, three MX hosts behind fault
// proxies, two fallback relays, two IMAP replicas of the recipient's
// mailbox behind fault proxies, and the delivery step that moves what the
// SMTP servers accepted into the mailbox.
//
// The script stops and starts again only servers that listen on ports
// outside the kernel's ephemeral range (the smtptest servers, see
// internal/loopback); anything else it takes down at a fault proxy, whose
// listener stays open. A port in the ephemeral range, once free, may be
// handed to any outgoing connection on the machine, and listening on it
// again would then fail.
type world struct {
	kit       *kit
	dns       *dnstest.Server
	mx        []*smtpHost // by preference: mx1 (10), mx2 (20), mx3 (30)
	relay     []*smtpHost // relay-1, relay-2
	imap      *imaptest.Set
	imapProxy []*faultproxy.Proxy // in front of each replica, in order
	net       *loopbackNet
	store     *mailStore
}

func (w *world) hosts() []*smtpHost { return append(append([]*smtpHost(nil), w.mx...), w.relay...) }

// newWorld starts the servers. Close stops them.
func newWorld(replicaLag time.Duration) (w *world, err error) {
	w = &world{kit: &kit{}, net: &loopbackNet{routes: map[string]string{}}}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	// dnstest reports setup failures through its TB's Fatalf; kit turns
	// them into this error.
	defer w.kit.recover(&err)

	w.dns = dnstest.Start(w.kit)
	w.dns.AddSOA(destDomain+".", 60, 60)
	for i, pref := range []uint16{10, 20, 30} {
		name := fmt.Sprintf("mx%d.%s", i+1, destDomain)
		srv, err := w.startSMTP(name)
		if err != nil {
			return w, err
		}
		proxy, err := faultproxy.Listen(srv.Addr(), &faultproxy.Options{DialTimeout: time.Second})
		if err != nil {
			return w, err
		}
		w.kit.Cleanup(func() { proxy.Close() })
		// Each exchanger gets its own loopback address in DNS; the
		// Mailer's dialer reaches port 25 there through the fault proxy
		// (the proxies themselves listen on 127.0.0.1 with free ports,
		// so the demo needs neither root nor extra addresses).
		ip := fmt.Sprintf("127.0.1.%d", i+1)
		w.dns.AddMX(destDomain+".", 60, pref, name+".")
		w.dns.AddA(name+".", 60, ip)
		dial := net.JoinHostPort(ip, fmt.Sprint(mxPort))
		w.net.route(dial, proxy.Addr())
		w.mx = append(w.mx, &smtpHost{name: name, role: fmt.Sprintf("MX %d", pref), srv: srv, proxy: proxy, dial: dial})
	}
	for i := range 2 {
		name := fmt.Sprintf("relay-%d", i+1)
		srv, err := w.startSMTP(fmt.Sprintf("relay%d.example.net", i+1))
		if err != nil {
			return w, err
		}
		w.relay = append(w.relay, &smtpHost{name: name, role: "fallback relay", srv: srv, dial: srv.Addr()})
	}

	w.imap, err = imaptest.Start(&imaptest.Options{Replicas: 2, Username: recipient, Password: "demo-password"})
	if err != nil {
		return w, err
	}
	w.kit.Cleanup(w.imap.Close)
	// The replicas listen on ports the kernel chose from its ephemeral
	// range, so the script never stops one: a replica goes down at its
	// proxy, and comes back there.
	for _, r := range w.imap.Replicas() {
		proxy, err := faultproxy.Listen(r.Addr(), &faultproxy.Options{DialTimeout: time.Second})
		if err != nil {
			return w, err
		}
		w.kit.Cleanup(func() { proxy.Close() })
		w.imapProxy = append(w.imapProxy, proxy)
	}
	w.store = newMailStore(w.imap, replicaLag)
	for _, h := range w.hosts() {
		w.store.collect(h)
	}
	return w, nil
}

// Close stops every server and the delivery step.
func (w *world) Close() {
	if w.store != nil {
		w.store.stop()
	}
	w.kit.close()
}

// imapReplicas describes the IMAP replicas for imapfailover, imap1
// preferred, each reached through its fault proxy.
func (w *world) imapReplicas() []imapfailover.Replica {
	var rs []imapfailover.Replica
	for i, r := range w.imap.Replicas() {
		rs = append(rs, imapfailover.Replica{Name: r.Name(), Addr: w.imapProxy[i].Addr(), Priority: i,
			TLS: imapfailover.TLSNone, Username: w.imap.Username(), Password: w.imap.Password()})
	}
	return rs
}

// loopbackNet is the Mailer's dialer: it connects the exchanger addresses
// that the demo's DNS hands out to the fault proxies in front of the MX
// servers, and everything else (the relays) directly. Only loopback
// addresses are ever dialed.
type loopbackNet struct {
	mu     sync.Mutex
	routes map[string]string
	d      net.Dialer
}

func (n *loopbackNet) route(from, to string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.routes[from] = to
}

func (n *loopbackNet) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	to, ok := n.routes[addr]
	n.mu.Unlock()
	if !ok {
		to = addr
	}
	host, _, err := net.SplitHostPort(to)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("%s is outside the demo's loopback network", addr)}
	}
	return n.d.DialContext(ctx, network, to)
}

// startSMTP starts an in-process SMTP server for domain that Close stops.
func (w *world) startSMTP(domain string) (*smtptest.Server, error) {
	srv, err := smtptest.New(&smtptest.Options{Domain: domain})
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, err
	}
	w.kit.Cleanup(func() { srv.Stop() })
	return srv, nil
}

// kit lets a program use dnstest, whose Start takes a dnstest.TB to report
// failures and register cleanups, and collects the cleanups of the other
// servers too.
type kit struct {
	mu       sync.Mutex
	cleanups []func()
}

var _ dnstest.TB = (*kit)(nil)

// kitFailure is what Fatalf panics with; recover turns it into an error.
type kitFailure struct{ err error }

func (k *kit) Helper() {}

// Fatalf must not return, as testing.TB's does not: it panics, and
// recover, deferred by the caller, turns the panic into an error.
func (k *kit) Fatalf(format string, args ...any) {
	panic(kitFailure{fmt.Errorf(format, args...)})
}

func (k *kit) Cleanup(f func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cleanups = append(k.cleanups, f)
}

// recover, deferred, turns a Fatalf during setup into *err.
func (k *kit) recover(err *error) {
	if r := recover(); r != nil {
		f, ok := r.(kitFailure)
		if !ok {
			panic(r)
		}
		*err = f.err
	}
}

// close runs the cleanups, last registered first.
func (k *kit) close() {
	k.mu.Lock()
	cs := k.cleanups
	k.cleanups = nil
	k.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}
