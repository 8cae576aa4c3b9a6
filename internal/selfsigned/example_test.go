package selfsigned_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/hamail/hamail/internal/selfsigned"
)

// A test server presents a fresh certificate; its client trusts exactly
// that certificate.
func ExampleNew() {
	cert, err := selfsigned.New(&selfsigned.Options{Host: "mx.example.org"})
	if err != nil {
		fmt.Println(err)
		return
	}
	server := &tls.Config{Certificates: []tls.Certificate{cert}}
	client := &tls.Config{RootCAs: selfsigned.Pool(cert), ServerName: "127.0.0.1"}
	_, err = cert.Leaf.Verify(x509.VerifyOptions{DNSName: client.ServerName, Roots: client.RootCAs})
	fmt.Println(len(server.Certificates), err)
	// Output: 1 <nil>
}
