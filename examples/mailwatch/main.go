// Command mailwatch follows one mailbox across a set of IMAP replicas and
// emits every new message exactly once: as a JSON line on standard output,
// or as a JSON POST to a URL.
//
// It reads through imapfailover: when the replica it follows dies or stops
// answering it moves to the next one and resynchronises by UID (RFC 3501
// §2.3.1.1, RFC 4549 §4), so a message that arrived during the failover is
// neither missed nor emitted twice. What has been emitted is recorded in a
// state directory after each message, so a restarted mailwatch resumes where
// it stopped. Only a crash between emitting a message and recording it can
// repeat that one message; receivers that must never see a repeat can
// de-duplicate on the message_id field (or the Idempotency-Key header of a
// POST).
//
// With -url, a message counts as emitted only once the server answered 2xx;
// until then it is retried with a growing pause and the messages after it
// wait, so nothing is skipped while the receiver is down.
//
// Usage:
//
//	MAILWATCH_PASSWORD=secret mailwatch -replicas imap1:993,imap2:993 -user alice -state /var/lib/mailwatch
//	mailwatch -replicas 127.0.0.1:1143 -tls none -user alice -password-file pw -url https://hooks.example.org/mail
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
