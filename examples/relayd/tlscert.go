package main

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/hamail/hamail/internal/selfsigned"
)

// serverTLS loads the certificate or, with selfSigned, makes one.
func serverTLS(c *Config) (*tls.Config, error) {
	var cert tls.Certificate
	var err error
	switch {
	case c.TLSSelfSigned:
		cert, err = selfSigned(c.Hostname, time.Now())
	case c.TLSCert != "":
		cert, err = tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// selfSigned makes an ECDSA P-256 certificate for host, localhost and the
// loopback addresses, valid for a year.
func selfSigned(host string, now time.Time) (tls.Certificate, error) {
	return selfsigned.New(&selfsigned.Options{Host: host, Organization: "relayd self-signed", Now: now, Lifetime: 365 * 24 * time.Hour})
}
