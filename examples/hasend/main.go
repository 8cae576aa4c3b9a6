// Command hasend is a sendmail-compatible command for programs that send
// mail by running /usr/sbin/sendmail: cron, scripts, PHP's mail(), monitoring
// tools. It reads one message on standard input and delivers it through
// hamail, either right away through relays (and optionally straight to the
// recipients' mail exchangers), or through a durable queue directory that a
// long-running "hasend -queue DIR -run" (or relayd -queue DIR) delivers,
// retries and bounces.
//
// Usage:
//
//	hasend [-t] [-i] [-f sender] [-F "Full Name"] [options] [recipient ...] < message
//	hasend -queue DIR -run [options]
//
// See usageText in this package (hasend -help) for every option, the
// environment, the config file and the exit statuses.
//
// Direct mode (no -queue) exits 0 only when every recipient was accepted by a
// server, and 75 (EX_TEMPFAIL) when some could not be delivered now, so that a
// calling program can keep the message and try again. Queue mode exits 0 as
// soon as the message is durable in DIR/maildrop; the process that runs the
// queue picks it up into its durable queue (DIR/queue.db) and keeps trying for
// five days, sending a delivery status notification (RFC 3464) to the sender
// when it gives up.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
