package smtpclient

import (
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/dnstest"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/mxresolve"
)

// TestDirectMXEndToEnd resolves through the real resolver against an
// in-process DNS server and delivers to two exchangers listening on the
// same port of two loopback addresses.
func TestDirectMXEndToEnd(t *testing.T) {
	t.Parallel()
	mx1 := smtptest.NewServer(t, &smtptest.Options{Domain: "mx1.example.com"})
	_, port, _ := net.SplitHostPort(mx1.Addr())
	mx2, err := smtptest.New(&smtptest.Options{Domain: "mx2.example.com", Addr: "127.0.0.2:" + port})
	if err != nil {
		t.Fatal(err)
	}
	if err := mx2.Start(); err != nil {
		t.Skipf("cannot listen on 127.0.0.2:%s: %v", port, err)
	}
	t.Cleanup(func() { mx2.Stop() })
	fallback := smtptest.NewServer(t, nil)

	dns := dnstest.Start(t)
	dns.AddSOA("example.com", 60, 60)
	dns.AddMX("example.com", 60, 10, "mx1.example.com")
	dns.AddMX("example.com", 60, 20, "mx2.example.com")
	dns.AddA("mx1.example.com", 60, "127.0.0.1")
	dns.AddA("mx2.example.com", 60, "127.0.0.2")
	dns.AddSOA("null.example", 60, 60)
	dns.AddMX("null.example", 60, 0, ".")
	dns.AddSOA("nx.example", 60, 60)
	dns.SetFault("nx.example", 0, dnstest.NXDomain)
	dns.SetFault("broken.example", 0, dnstest.ServFail)

	resolver := mxresolve.New(&mxresolve.Options{Nameservers: []string{dns.Addr()}, Timeout: time.Second, AddressPolicy: mxresolve.IPv4Only})
	mxPort, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, &Options{
		Resolver:       resolver,
		MXPort:         mxPort,
		FallbackRelays: []Relay{{Name: "fallback", Addr: fallback.Addr()}},
	})

	res := mustSend(t, c, testMessage("a@example.com"))
	if rr := res.Recipients[0]; rr.Outcome != Delivered || rr.Host != "mx1.example.com [127.0.0.1]:"+port {
		t.Fatalf("%+v", rr)
	}
	mx1.Stop()
	res = mustSend(t, c, testMessage("a@example.com", "b@null.example", "c@nx.example", "d@broken.example"))
	r := res.Recipients
	if r[0].Outcome != Delivered || r[0].Host != "mx2.example.com [127.0.0.2]:"+port || r[0].Attempts != 2 {
		t.Fatalf("backup MX: %+v", r[0])
	}
	if r[1].Outcome != Permanent || r[1].Reply == nil || r[1].Reply.Code != 556 || !errors.Is(r[1].Err, mxresolve.ErrNullMX) {
		t.Fatalf("null MX: %+v", r[1])
	}
	if r[2].Outcome != Permanent || r[2].Reply == nil || r[2].Reply.Enhanced[1] != 1 || r[2].Reply.Enhanced[2] != 2 {
		t.Fatalf("NXDOMAIN: %+v", r[2])
	}
	if r[3].Outcome != Delivered || r[3].Host != "fallback" {
		t.Fatalf("SERVFAIL -> fallback relay: %+v", r[3])
	}
	if len(mx2.Messages()) != 1 || len(fallback.Messages()) != 1 {
		t.Fatalf("mx2 %d, fallback %d", len(mx2.Messages()), len(fallback.Messages()))
	}
}

// TestDirectMXTLSPolicy applies Options.MXTLS to exchangers: encrypt gives
// nothing to an exchanger without STARTTLS, verify checks the certificate
// against the exchanger's name; what an exchanger cannot take goes on to
// the fallback relay.
func TestDirectMXTLSPolicy(t *testing.T) {
	t.Parallel()
	noTLS := smtptest.DefaultCapabilities()
	noTLS.StartTLS = false
	tests := []struct {
		name     string
		domain   string // the exchanger's certificate name
		caps     *smtptest.Capabilities
		policy   TLSPolicy
		delivers bool // by the exchanger, with TLS
	}{
		{"encrypt without STARTTLS", "mx.tls.example", &noTLS, TLSEncrypt, false},
		{"verify with a good certificate", "mx.tls.example", nil, TLSVerify, true},
		{"verify with a certificate for another name", "other.example", nil, TLSVerify, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mx := smtptest.NewServer(t, &smtptest.Options{Domain: tc.domain, Capabilities: tc.caps})
			fallback := smtptest.NewServer(t, nil)
			_, port, _ := net.SplitHostPort(mx.Addr())
			mxPort, _ := strconv.Atoi(port)
			dns := dnstest.Start(t)
			dns.AddSOA("tls.example", 60, 60)
			dns.AddMX("tls.example", 60, 10, "mx.tls.example")
			dns.AddA("mx.tls.example", 60, "127.0.0.1")
			c := newTestClient(t, &Options{
				Resolver:       mxresolve.New(&mxresolve.Options{Nameservers: []string{dns.Addr()}, Timeout: time.Second, AddressPolicy: mxresolve.IPv4Only}),
				MXPort:         mxPort,
				MXTLS:          tc.policy,
				MXTLSConfig:    mx.ClientTLSConfig(""),
				FallbackRelays: []Relay{{Name: "fallback", Addr: fallback.Addr()}},
			})
			rr := mustSend(t, c, testMessage("a@tls.example")).Recipients[0]
			if tc.delivers {
				if rr.Outcome != Delivered || rr.Host != "mx.tls.example [127.0.0.1]:"+port || mx.Messages()[0].TLS == nil {
					t.Fatalf("%+v", rr)
				}
				return
			}
			if rr.Outcome != Delivered || rr.Host != "fallback" || rr.Attempts != 2 {
				t.Fatalf("%+v", rr)
			}
			if st := mx.Stats(); st.Mail != 0 {
				t.Fatalf("the exchanger got a transaction against the TLS policy: %+v", st)
			}
		})
	}
}
