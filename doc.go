// Package hamail is the one obvious way to send mail with hamail: a Mailer
// that puts each message in a durable queue and delivers it in the
// background over every path that can work, retrying and bouncing like an
// MTA.
//
// A Mailer wires the other packages for the common case:
//
//   - smtpclient sends to relays (smarthosts in priority tiers) and/or
//     directly to each domain's mail exchangers (RFC 5321 §5.1, through
//     mxresolve), then to fallback relays, with a circuit breaker per host
//     and an optional health view (package health);
//   - queue keeps the messages: the embedded queue/bbolt store in
//     Options.Dir by default, or any queue.Store (queue/jetstream for
//     several processes sharing a queue);
//   - a queue.Runner leases due messages, hands them to the SMTP client,
//     records each recipient's outcome, retries the deferred ones on a
//     Postfix-like schedule and sends delivery status notifications
//     (RFC 3464) to the sender for the ones given up;
//   - package metrics, when Options.Metrics is set, counts all of it for
//     Prometheus.
//
// # Sending
//
// Send checks the envelope (RFC 5321 §4.1.2 address syntax, no CR or LF
// that could inject a command; UTF-8 addresses make the message SMTPUTF8,
// RFC 6531), rewrites bare line endings of the body as CRLF, and returns
// the queue ID once the message is durable. Bad input returns a
// *MessageError and stores nothing.
//
// # Delivery guarantees
//
// Delivery is at least once. The queue records each recipient's outcome
// after the server's reply; a crash between the reply and the record, or a
// connection lost after the final dot and before the reply (RFC 5321
// §4.5.3.2.6), makes the message go out again later, flagged as a possible
// duplicate. A message is never dropped while a path to its destination
// may work; it is given up only at the end of the retry schedule's lifetime
// (5 days by default) or on a permanent (5xx) refusal, and then the sender
// gets a failure notice unless the reverse path is null.
//
// # Observing
//
// Options.Metrics (package metrics) counts sessions, connections, breaker
// states and per-recipient outcomes by host, and reports the queue's depth
// and the client's pool under Options.Name. The delivery success rate is
//
//	sum(rate(hamail_delivery_recipients_total{outcome="delivered"}[5m]))
//	  / sum(rate(hamail_delivery_recipients_total[5m]))
//
// The caller's own smtpclient hooks and runner hooks (Options.SMTP.Hooks,
// Options.Runner.OnAttempt, OnNotice) keep working: the Mailer calls them
// as well. Stats and Store give the queue's content; Client gives the
// pool statistics.
//
// # Lifecycle and concurrency
//
// Open opens the store (I/O) and starts delivering in one goroutine;
// messages left queued by an earlier process are delivered too. Send,
// Stats, Client and Store are safe for concurrent use. Shutdown stops
// taking messages (Send then fails with ErrClosed), stops leasing, lets the
// attempts in flight finish until its context ends, then cuts them (their
// messages stay queued), closes the SMTP client and, if the Mailer opened
// it, the store. Close is Shutdown without a grace period. A store passed
// in Options.Store is not closed by the Mailer.
package hamail
