// Package selfsigned makes throw-away TLS server certificates that sign
// themselves: for the in-process test servers, and for a relay tried out
// without a certificate of its own.
//
// A certificate covers its host name, "localhost", 127.0.0.1 and ::1, so a
// client reaching a server on loopback by name or by address can verify
// it against a pool holding the certificate (RFC 5280 §6.1: a trust anchor
// ends the path; a self-signed certificate is its own anchor). The key is
// ECDSA P-256 and the serial number a random positive integer below 2^127,
// inside the 20 octets RFC 5280 §4.1.2.2 allows.
//
// Functions are safe for concurrent use; the package keeps no state. Each
// call of New makes a new key: nothing is written to disk.
package selfsigned
