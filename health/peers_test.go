package health_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/peers"
	"github.com/hamail/hamail/internal/smtptest"
)

// TestRealPostfix probes a real Postfix relay: its greeting and EHLO pass
// the SMTP probe; stopped, it goes down after Fall refused connections;
// started again, it comes back after Rise good probes.
func TestRealPostfix(t *testing.T) {
	t.Parallel()
	next := smtptest.NewServer(t, nil)
	pf := peers.StartPostfix(t, peers.PostfixOptions{RelayHost: next.Addr()})
	tg := health.Target{Name: "postfix", Kind: health.ProbeSMTP, Address: pf.Addr}
	if err := probe(t, tg, 10*time.Second); err != nil {
		t.Fatalf("probe of Postfix: %v", err)
	}

	var log eventLog
	c := health.New(fastOptions(&log))
	sub := c.Subscribe()
	defer sub.Close()
	mustAdd(t, c, tg)
	stop := runReal(t, c)
	waitChange(t, sub, "postfix", health.Unknown, health.Up)
	pf.Stop()
	down := waitChange(t, sub, "postfix", health.Up, health.Down)
	var pe *health.ProbeError
	if !errors.As(down.Err, &pe) || pe.Step != "connect" {
		t.Errorf("down because of %v", down.Err)
	}
	pf.Start()
	waitChange(t, sub, "postfix", health.Down, health.Up)
	stop()
	log.checkHysteresis(t, 2, 3)
}

// TestRealDovecot probes a real Dovecot: greeting, CAPABILITY, LOGIN and
// LOGOUT pass; wrong credentials fail at LOGIN; stopped, it goes down after
// Fall refused connections, and up again after Rise good probes.
func TestRealDovecot(t *testing.T) {
	t.Parallel()
	dc := peers.StartDovecot(t, peers.DovecotOptions{Config: "auth_failure_delay = 0\n"})
	tg := health.Target{Name: "dovecot", Kind: health.ProbeIMAP, Address: dc.Addr, Username: dc.User, Password: dc.Password}
	if err := probe(t, tg, 10*time.Second); err != nil {
		t.Fatalf("probe of Dovecot: %v", err)
	}

	var log eventLog
	c := health.New(fastOptions(&log))
	sub := c.Subscribe()
	defer sub.Close()
	mustAdd(t, c, tg)
	stop := runReal(t, c)
	waitChange(t, sub, "dovecot", health.Unknown, health.Up)
	dc.Stop()
	down := waitChange(t, sub, "dovecot", health.Up, health.Down)
	var pe *health.ProbeError
	if !errors.As(down.Err, &pe) || pe.Step != "connect" {
		t.Errorf("down because of %v", down.Err)
	}
	dc.Start()
	waitChange(t, sub, "dovecot", health.Down, health.Up)
	stop()
	log.checkHysteresis(t, 2, 3)

	// Last, because Dovecot slows down later logins from an address that
	// failed one (its auth penalty).
	bad := tg
	bad.Password = "wrong"
	pe = wantProbeError(t, probe(t, bad, 10*time.Second), "login", health.ErrRejected)
	if !strings.HasPrefix(pe.Text, "NO") {
		t.Errorf("LOGIN refusal %q", pe.Text)
	}
}

// TestRealDovecotStartTLS: the IMAP probe upgrades a real Dovecot with
// STARTTLS, verifies its certificate and logs in over TLS; a certificate
// for another name fails the probe at the handshake.
func TestRealDovecotStartTLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, pool := selfSigned(t)
	dc := peers.StartDovecot(t, peers.DovecotOptions{Config: fmt.Sprintf(
		"ssl = yes\nssl_cert = <%s\nssl_key = <%s\n", certFile, keyFile)})
	tg := health.Target{Name: "dovecot", Kind: health.ProbeIMAP, Address: dc.Addr, Username: dc.User, Password: dc.Password,
		TLS: health.StartTLS, TLSConfig: &tls.Config{RootCAs: pool}}
	if err := probe(t, tg, 10*time.Second); err != nil {
		t.Fatalf("verified STARTTLS with Dovecot: %v", err)
	}
	tg.TLSConfig = &tls.Config{RootCAs: pool, ServerName: "imap.other.example"}
	wantProbeError(t, probe(t, tg, 10*time.Second), "tls", nil)
}

// selfSigned writes a key and a self-signed certificate for 127.0.0.1 to
// PEM files and returns their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "imap.example.test"},
		DNSNames:     []string{"imap.example.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
