// Command hademo shows, on loopback and in a few seconds, what high
// availability means for a mail sender: two relays, the first one broken
// in different ways by a fault-injecting proxy, and a message that still
// gets through each time.
//
// The relays are in-process SMTP servers; relay-1 is reached through a TCP
// proxy that black-holes it (accepts, never answers), then resets every
// connection, then lets traffic pass. The sender tries relay-1 with a short
// timeout and falls back to relay-2. The table shows what happened.
//
//	go run ./examples/hademo
package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/internal/faultproxy"
	"github.com/hamail/hamail/internal/smtptest"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "hademo:", err)
		os.Exit(1)
	}
}

// timeout bounds each relay attempt: connect, greeting and every command.
const timeout = 300 * time.Millisecond

type relay struct {
	name, addr string
}

func run(w io.Writer) error {
	servers := make([]*smtptest.Server, 2)
	for i := range servers {
		s, err := smtptest.New(&smtptest.Options{Domain: fmt.Sprintf("relay%d.example.net", i+1)})
		if err != nil {
			return err
		}
		if err := s.Start(); err != nil {
			return err
		}
		defer s.Stop()
		servers[i] = s
	}
	proxy, err := faultproxy.Listen(servers[0].Addr(), nil)
	if err != nil {
		return err
	}
	defer proxy.Close()
	relays := []relay{{"relay-1", proxy.Addr()}, {"relay-2", servers[1].Addr()}}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "message\tfault on relay-1\trelay-1 said\tdelivered by\ttook")
	for i, fault := range []faultproxy.Mode{faultproxy.BlackHole, faultproxy.Reset, faultproxy.Pass} {
		if err := proxy.SetMode(fault); err != nil {
			return err
		}
		start := time.Now()
		var first string
		deliveredBy := "nobody"
		for j, r := range relays {
			err := send(r.addr, i+1)
			if j == 0 {
				first = describe(err)
			}
			if err == nil {
				deliveredBy = r.name
				break
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%v\n", i+1, fault, first, deliveredBy, time.Since(start).Round(time.Millisecond))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	// Check with the servers themselves, not with what the sender believed.
	got1, got2 := len(servers[0].Messages()), len(servers[1].Messages())
	fmt.Fprintf(w, "\nrelay-1 received %d message(s), relay-2 received %d; proxy accepted %d connection(s)\n",
		got1, got2, proxy.Accepted())
	if got1 != 1 || got2 != 2 {
		return fmt.Errorf("expected relay-1 to receive 1 message and relay-2 2, got %d and %d", got1, got2)
	}
	return nil
}

// send delivers message n through the relay at addr, bounded by timeout.
func send(addr string, n int) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	c.CommandTimeout = timeout
	c.SubmissionTimeout = timeout
	body := fmt.Sprintf("From: app@example.org\r\nTo: user@example.com\r\n"+
		"Message-ID: <hademo-%d@example.org>\r\nSubject: demo %d\r\n\r\nHello.\r\n", n, n)
	if err := c.SendMail("app@example.org", []string{"user@example.com"}, strings.NewReader(body)); err != nil {
		return err
	}
	return c.Quit()
}

func describe(err error) string {
	var ne net.Error
	var se *smtp.SMTPError
	switch {
	case err == nil:
		return "250 accepted"
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("no answer in %v", timeout)
	case errors.As(err, &se):
		return fmt.Sprintf("%d %s", se.Code, se.Message)
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF):
		return "connection reset"
	default:
		return err.Error()
	}
}
