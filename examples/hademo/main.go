// Command hademo shows hamail keeping mail flowing while servers die: it
// starts, in this process and on loopback only, a DNS zone whose domain has
// three MX hosts of different preferences, two fallback relays and two IMAP
// replicas of the recipient's mailbox; then it sends a stream of messages
// through hamail.Mailer while it kills and restarts the primary MX, cuts
// off the others, kills a relay, takes an IMAP replica down and brings it
// back, and reads the mailbox through imapfailover all along; midway it
// also restarts the sending process: the Mailer is closed while messages
// wait and opened again on the same queue directory. It ends with a
// table built from what the servers recorded and what the reader was
// handed: sent, delivered per host, retried, failovers, breaker trips,
// resync cost, lost and read twice. The exit status is 1 when a message
// was lost or read twice.
//
// Nothing needs to be installed: no Postfix, no Dovecot, no DNS server.
//
//	go run ./examples/hademo
//	go run ./examples/hademo -messages 1000 -duration 40s -concurrency 8
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := mainCode(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// mainCode parses the flags, runs the demo and gives the exit status.
func mainCode(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var d Config
	d.defaults()
	fs := flag.NewFlagSet("hademo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := Config{}
	fs.IntVar(&cfg.Messages, "messages", d.Messages, "number of messages to send")
	fs.DurationVar(&cfg.Duration, "duration", d.Duration, "how long the sending lasts; the faults are spread over it")
	fs.IntVar(&cfg.Concurrency, "concurrency", d.Concurrency, "Send calls in flight at once")
	fs.DurationVar(&cfg.Drain, "drain", d.Drain, "how long to wait after the last Send for the last deliveries and reads")
	fs.DurationVar(&cfg.ReplicaLag, "lag", d.ReplicaLag, "replication lag of the second IMAP replica")
	fs.BoolVar(&cfg.Quiet, "quiet", false, "print only the final table")
	fs.StringVar(&cfg.MetricsAddr, "metrics", "", "serve the run's Prometheus metrics at http://`addr`/metrics (e.g. 127.0.0.1:9100)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: hademo [flags]\n\nRuns the hamail high-availability demo in-process on loopback and prints what happened.\nExit status 1 if a message was lost or read twice.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || cfg.Messages < 0 || cfg.Concurrency < 0 || cfg.Duration < 0 {
		fmt.Fprintln(stderr, "hademo: flags take positive values and there are no arguments")
		fs.Usage()
		return 2
	}
	rep, err := run(ctx, cfg, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "hademo:", err)
		return 1
	}
	if !rep.OK() {
		return 1
	}
	return 0
}
