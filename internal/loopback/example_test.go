package loopback_test

import (
	"fmt"
	"net"

	"github.com/hamail/hamail/internal/loopback"
)

// A server that will be stopped and started again on the same address
// listens through loopback.Listen, so its port is still free when it
// starts again.
func ExampleListen() {
	ln, err := loopback.Listen("tcp", "127.0.0.1")
	if err != nil {
		fmt.Println(err)
		return
	}
	addr := ln.Addr().String()
	ln.Close() // the server stops

	ln, err = net.Listen("tcp", addr) // and starts again
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	fmt.Println("listening again")
	// Output: listening again
}
