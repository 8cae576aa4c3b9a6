package loopback

import (
	"net"
	"testing"
)

// BenchmarkRestartUnderLoad measures how often a stopped server can listen
// again on its port while the machine keeps opening listeners on port 0
// and outgoing connections (other tests, other processes), for a server
// that first listened on port 0 (the baseline) and for one that listened
// through Listen. It reports the share of failed restarts:
//
//	go test -run '^$' -bench RestartUnderLoad -benchtime 2000x ./internal/loopback
func BenchmarkRestartUnderLoad(b *testing.B) {
	const load = 128 // listeners on port 0 and connections, per restart
	peer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer peer.Close()
	go func() {
		for {
			c, err := peer.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for _, bc := range []struct {
		name   string
		listen func() (net.Listener, error)
	}{
		{"port0", func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }},
		{"loopback", func() (net.Listener, error) { return Listen("tcp", "127.0.0.1") }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			failed := 0
			for b.Loop() {
				ln, err := bc.listen()
				if err != nil {
					b.Fatal(err)
				}
				addr := ln.Addr().String()
				ln.Close() // the server stops
				var held []net.Conn
				var others []net.Listener
				for range load {
					if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
						others = append(others, l)
					}
					if c, err := net.Dial("tcp", peer.Addr().String()); err == nil {
						held = append(held, c)
					}
				}
				if again, err := net.Listen("tcp", addr); err != nil {
					failed++
				} else {
					again.Close()
				}
				for _, l := range others {
					l.Close()
				}
				for _, c := range held {
					c.Close()
				}
			}
			b.ReportMetric(100*float64(failed)/float64(b.N), "%failed")
		})
	}
}
