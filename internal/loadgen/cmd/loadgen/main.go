// Command loadgen sends generated messages to an SMTP server over reused
// connections and prints the throughput.
//
//	loadgen -addr 127.0.0.1:2525 -c 16 -m 20000 -s 2048 [-rset pipelined|lockstep|none] [-client]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/hamail/hamail/internal/loadgen"
)

func main() {
	var cfg loadgen.Config
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:25", "SMTP server host:port")
	flag.IntVar(&cfg.Conns, "c", 16, "connections (one worker each)")
	flag.IntVar(&cfg.Messages, "m", 20000, "messages in total")
	flag.IntVar(&cfg.Size, "s", 2048, "message size in bytes")
	rset := flag.String("rset", string(loadgen.ResetPipelined), "RSET between messages: pipelined (with the next MAIL), lockstep, or none")
	flag.BoolVar(&cfg.GoSMTP, "gosmtp", false, "use go-smtp's client instead of smtpwire (baseline)")
	flag.BoolVar(&cfg.Client, "client", false, "send through smtpclient.Client (pool of -c connections) instead of smtpwire")
	quiet := flag.Bool("q", false, "print only the messages per second")
	flag.Parse()
	cfg.Reset = loadgen.ResetMode(*rset)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := loadgen.Run(ctx, cfg)
	if *quiet {
		fmt.Printf("%.0f\n", res.Rate())
	} else {
		fmt.Printf("sent %d failed %d in %v: %.0f messages/s\n", res.Sent, res.Failed, res.Elapsed.Round(1e6), res.Rate())
	}
	if res.FirstErr != nil {
		fmt.Fprintln(os.Stderr, "first error:", res.FirstErr)
	}
	if err != nil || res.Failed > 0 {
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(1)
	}
}
