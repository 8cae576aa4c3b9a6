package smtpclient_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hamail/hamail/internal/dnstest"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/mxresolve"
	"github.com/hamail/hamail/smtpclient"
)

// Relay mode: two smarthosts in two tiers. The primary is down, so the
// message goes through the backup tier.
func ExampleClient_Send_relays() {
	primary, backup := startServer("127.0.0.1:0"), startServer("127.0.0.1:0")
	defer backup.Stop()
	primary.Stop() // the primary relay is down

	client, err := smtpclient.New(&smtpclient.Options{
		LocalName: "app.example.org",
		Relays: []smtpclient.Relay{
			{Name: "relay-a", Addr: primary.Addr(), Priority: 10, TLS: smtpclient.TLSMay},
			{Name: "relay-b", Addr: backup.Addr(), Priority: 20, TLS: smtpclient.TLSMay},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	body := "From: app@example.org\r\nTo: bob@example.com\r\nSubject: hello\r\n\r\nHello Bob.\r\n"
	res, err := client.Send(context.Background(), &smtpclient.Message{
		From: "app@example.org",
		To:   []smtpclient.Recipient{{Addr: "bob@example.com"}},
		Body: strings.NewReader(body),
		Size: int64(len(body)),
	})
	if err != nil {
		log.Fatal(err) // nothing could be attempted
	}
	for _, r := range res.Recipients {
		fmt.Println(r.Recipient, r.Outcome, "via", r.Host, "after", r.Attempts, "attempts")
	}
	// Output:
	// bob@example.com delivered via relay-b after 2 attempts
}

// Direct MX mode: recipients are delivered to their domains' mail
// exchangers, found through mxresolve; fallback relays would take what
// stays temporarily undeliverable.
func ExampleClient_Send_directMX() {
	mx := startServer("127.0.0.1:0")
	defer mx.Stop()
	nameserver, stop := startDNS(mx)
	defer stop()

	_, port, _ := net.SplitHostPort(mx.Addr())
	mxPort, _ := strconv.Atoi(port) // 25 in production: leave MXPort zero

	client, err := smtpclient.New(&smtpclient.Options{
		LocalName: "app.example.org",
		Resolver:  mxresolve.New(&mxresolve.Options{Nameservers: []string{nameserver}}),
		MXPort:    mxPort,
		MXTLS:     smtpclient.TLSMay,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	body := "From: app@example.org\r\nSubject: hello\r\n\r\nHello.\r\n"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := client.Send(ctx, &smtpclient.Message{
		From: "app@example.org",
		To:   []smtpclient.Recipient{{Addr: "carol@example.com"}, {Addr: "dave@null.example"}},
		Body: strings.NewReader(body),
		Size: int64(len(body)),
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range res.Recipients {
		fmt.Println(r.Recipient, r.Outcome, r.Reply.Code, r.Err)
	}
	// Output:
	// carol@example.com delivered 250 <nil>
	// dave@null.example permanent 556 smtpclient: resolve: permanent: mxresolve: null.example: 556 5.1.10 domain does not accept mail (null MX)
}

// startServer starts an in-process SMTP server standing for a relay or an
// exchanger.
func startServer(addr string) *smtptest.Server {
	s, err := smtptest.New(&smtptest.Options{Addr: addr})
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Start(); err != nil {
		log.Fatal(err)
	}
	return s
}

// startDNS starts an in-process DNS server with example.com's MX pointing at
// mx, and a null MX for null.example.
func startDNS(mx *smtptest.Server) (addr string, stop func()) {
	tb := &exampleTB{}
	d := dnstest.Start(tb)
	host, _, _ := net.SplitHostPort(mx.Addr())
	d.AddSOA("example.com", 60, 60)
	d.AddMX("example.com", 60, 10, "mx.example.com")
	d.AddA("mx.example.com", 60, host)
	d.AddSOA("null.example", 60, 60)
	d.AddMX("null.example", 60, 0, ".")
	return d.Addr(), tb.cleanup
}

type exampleTB struct{ cleanups []func() }

func (*exampleTB) Helper()                      {}
func (*exampleTB) Fatalf(f string, args ...any) { log.Fatalf(f, args...) }
func (tb *exampleTB) Cleanup(f func())          { tb.cleanups = append(tb.cleanups, f) }
func (tb *exampleTB) cleanup() {
	for i := len(tb.cleanups) - 1; i >= 0; i-- {
		tb.cleanups[i]()
	}
}
