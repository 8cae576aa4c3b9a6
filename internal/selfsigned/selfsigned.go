package selfsigned

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Options says what certificate New makes. A nil *Options means the
// defaults of every field.
type Options struct {
	// Host is the subject's common name and a DNS name the certificate
	// covers besides "localhost". Empty: only "localhost".
	Host string
	// Organization names the maker in the subject. Empty: none.
	Organization string
	// Now is the time the certificate is made. Zero: time.Now(). It is
	// valid from an hour before, so that a peer whose clock runs a little
	// behind still accepts it.
	Now time.Time
	// Lifetime is how long after Now the certificate stays valid.
	// Zero: 24 hours.
	Lifetime time.Duration
	// CA marks the certificate as a certification authority (basic
	// constraints cA, key usage keyCertSign; RFC 5280 §4.2.1.9,
	// §4.2.1.3), for verifiers that take only such a certificate as a
	// trust anchor.
	CA bool
}

// New makes a key and a certificate for it that signs itself. The
// returned certificate has its Leaf set.
func New(opts *Options) (tls.Certificate, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.Lifetime == 0 {
		o.Lifetime = 24 * time.Hour
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("selfsigned: key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("selfsigned: serial: %w", err)
	}
	subject := pkix.Name{CommonName: o.Host}
	if o.Organization != "" {
		subject.Organization = []string{o.Organization}
	}
	names := []string{"localhost"}
	if o.Host != "" && o.Host != "localhost" {
		names = []string{o.Host, "localhost"}
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    o.Now.Add(-time.Hour),
		NotAfter:     o.Now.Add(o.Lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     names,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if o.CA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.BasicConstraintsValid = true
		tmpl.IsCA = true
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("selfsigned: certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("selfsigned: certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Pool returns a pool that trusts cert, a certificate made by New.
func Pool(cert tls.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	return pool
}
