package selfsigned

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"
)

func TestVerifiesForHostAndLoopback(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	cert, err := New(&Options{Host: "mx1.example.org", Organization: "relay", Now: now, Lifetime: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pool := Pool(cert)
	for _, name := range []string{"mx1.example.org", "localhost", "127.0.0.1", "::1"} {
		_, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, CurrentTime: now})
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	var hostErr x509.HostnameError
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "mx2.example.org", Roots: pool, CurrentTime: now}); !errors.As(err, &hostErr) {
		t.Errorf("a name it was not made for verified: %v", err)
	}
	var invalid x509.CertificateInvalidError
	for _, at := range []time.Time{now.Add(-61 * time.Minute), now.Add(48*time.Hour + time.Second)} {
		_, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: pool, CurrentTime: at})
		if !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
			t.Errorf("at %v: %v, want expired", at, err)
		}
	}
	for _, at := range []time.Time{now.Add(-59 * time.Minute), now.Add(48*time.Hour - time.Second)} {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: pool, CurrentTime: at}); err != nil {
			t.Errorf("at %v, inside its lifetime: %v", at, err)
		}
	}
	if got := cert.Leaf.Subject; got.CommonName != "mx1.example.org" || len(got.Organization) != 1 || got.Organization[0] != "relay" {
		t.Errorf("subject %v", got)
	}
	if cert.Leaf.IsCA || cert.Leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Errorf("a certificate made without CA is an authority")
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: x509.NewCertPool(), CurrentTime: now}); err == nil {
		t.Errorf("verified without being trusted")
	}
}

func TestDefaultsAndCA(t *testing.T) {
	t.Parallel()
	before := time.Now()
	cert, err := New(&Options{CA: true})
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	leaf := cert.Leaf
	if !leaf.IsCA || !leaf.BasicConstraintsValid || leaf.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA %v, key usage %b", leaf.IsCA, leaf.KeyUsage)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "localhost" {
		t.Errorf("DNS names %q, want only localhost", leaf.DNSNames)
	}
	// The certificate stores whole seconds.
	lo, hi := before.Add(24*time.Hour).Truncate(time.Second), after.Add(24*time.Hour)
	if leaf.NotAfter.Before(lo) || leaf.NotAfter.After(hi) {
		t.Errorf("NotAfter %v, want a day after %v", leaf.NotAfter, before)
	}
	other, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	if other.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 || other.Leaf.SerialNumber.Sign() <= 0 {
		t.Errorf("serial numbers %v and %v", leaf.SerialNumber, other.Leaf.SerialNumber)
	}
	if other.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(leaf.PublicKey) {
		t.Errorf("two certificates share a key")
	}
}

// TestHandshake: a TLS client on loopback that trusts the pool completes a
// handshake with a server presenting the certificate.
func TestHandshake(t *testing.T) {
	t.Parallel()
	cert, err := New(&Options{Host: "mx.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		served <- c.(*tls.Conn).Handshake()
	}()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 20 * time.Second},
		Config: &tls.Config{RootCAs: Pool(cert), ServerName: "mx.example.org", MinVersion: tls.VersionTLS12}}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-served; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}
