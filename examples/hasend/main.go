// Command hasend is a sendmail-compatible command for programs that send
// mail by running /usr/sbin/sendmail: cron, scripts, PHP's mail(), monitoring
// tools. It reads one message on standard input and delivers it through
// hamail, either right away through relays (and optionally straight to the
// recipients' mail exchangers), or through a durable queue directory that a
// long-running "hasend -queue DIR -run" (or relayd -queue-dir DIR) delivers,
// retries and bounces.
//
// Usage:
//
//	hasend [-t] [-i] [-f sender] [-F "Full Name"] [options] [recipient ...] < message
//	hasend -queue DIR -run [options]
//
// See usageText in this package (hasend -help) for every option, the
// environment, the config file and the exit statuses. To stand in for
// sendmail, install it as /usr/sbin/sendmail (and /usr/lib/sendmail) and put
// the relay in /etc/hasend.conf.
//
// Direct mode (no -queue) exits 0 only when every recipient was accepted by a
// server, and 75 (EX_TEMPFAIL) when some could not be delivered now, so that a
// calling program can keep the message and try again. Queue mode exits 0 as
// soon as the message is durable in DIR/maildrop; the process that runs the
// queue picks it up into its durable queue (DIR/queue.db) and keeps trying for
// five days, sending a delivery status notification (RFC 3464) to the sender
// when it gives up.
//
// The queue directory is shared between the users who submit and the one
// process that runs the queue; the database file takes a lock, so only one
// process (hasend -run or relayd) can own DIR at a time, and the submitting
// commands never open it. Each message goes through DIR/maildrop/tmp into
// DIR/maildrop/new (written, fsynced, renamed, directory fsynced); the owner
// moves it into DIR/queue.db under the file's name as idempotency key and then
// removes the file, so a crash at any point neither loses nor doubles a
// message. For several local users, make the maildrop writable by a group of
// theirs that the queue's owner also belongs to, for example:
//
//	install -d -m 0711 -o mail /var/spool/hasend
//	install -d -m 2770 -o mail -g maildrop /var/spool/hasend/maildrop \
//	    /var/spool/hasend/maildrop/tmp /var/spool/hasend/maildrop/new /var/spool/hasend/maildrop/bad
//
// The envelope sender of a dropped message is whatever the submitter said
// (-f), as with sendmail; relayd, which authenticates its clients, is the
// choice when that matters.
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
