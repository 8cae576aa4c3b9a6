package mxresolve_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/hamail/hamail/internal/dnstest"
	"github.com/hamail/hamail/mxresolve"
)

// exampleTB runs the test DNS server outside a test: cleanups run when the
// example ends.
type exampleTB struct{ cleanups *[]func() }

func (exampleTB) Helper()                           {}
func (exampleTB) Fatalf(format string, args ...any) { log.Fatalf(format, args...) }
func (e exampleTB) Cleanup(f func())                { *e.cleanups = append(*e.cleanups, f) }

func (e exampleTB) close() {
	for i := len(*e.cleanups) - 1; i >= 0; i-- {
		(*e.cleanups)[i]()
	}
}

func Example() {
	// A loopback DNS server stands in for the recursive resolver.
	tb := exampleTB{cleanups: new([]func())}
	defer tb.close()
	dns := dnstest.Start(tb)
	dns.AddMX("example.com", 300, 10, "mx1.example.com")
	dns.AddMX("example.com", 300, 20, "mx2.example.com")
	dns.AddA("mx1.example.com", 300, "192.0.2.1")
	dns.AddAAAA("mx1.example.com", 300, "2001:db8::1")
	dns.AddA("mx2.example.com", 300, "192.0.2.2")
	dns.AddMX("example.net", 300, 0, ".")

	r := mxresolve.New(&mxresolve.Options{Nameservers: []string{dns.Addr()}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	res, err := r.Resolve(ctx, "example.com")
	if err != nil {
		log.Fatal(err)
	}
	for _, h := range res.Hosts {
		fmt.Println(h.Preference, h.Name, h.Addrs)
	}

	_, err = r.Resolve(ctx, "example.net")
	fmt.Println(err, mxresolve.IsPermanent(err))
	// Output:
	// 10 mx1.example.com [2001:db8::1 192.0.2.1]
	// 20 mx2.example.com [192.0.2.2]
	// mxresolve: example.net: 556 5.1.10 domain does not accept mail (null MX) true
}

// With no Nameservers, the resolver reads /etc/resolv.conf on the first
// look-up. A temporary error means "try again later"; a permanent one means
// the message can be bounced.
func ExampleResolver_Resolve() {
	r := mxresolve.New(&mxresolve.Options{
		LocalNames: []string{"mail.example.org"}, // never deliver to ourselves
	})
	res, err := r.Resolve(context.Background(), "example.com")
	switch {
	case mxresolve.IsTemporary(err):
		fmt.Println("defer:", err)
	case mxresolve.IsPermanent(err):
		fmt.Println("bounce:", err)
	default:
		for _, h := range res.Hosts {
			fmt.Println(h.Name, h.Addrs)
		}
	}
}
