package faultproxy_test

import (
	"fmt"
	"net"
	"time"

	"github.com/hamail/hamail/internal/faultproxy"
)

// A relay that accepts connections and then never answers: the client's
// read deadline is what saves it.
func ExampleListen() {
	relay, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer relay.Close()

	p, err := faultproxy.Listen(relay.Addr().String(), &faultproxy.Options{Mode: faultproxy.BlackHole})
	if err != nil {
		panic(err)
	}
	defer p.Close()

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = c.Read(make([]byte, 512))
	fmt.Println("greeting timed out:", err.(net.Error).Timeout(), "accepted:", p.Accepted())
	// Output: greeting timed out: true accepted: 1
}
