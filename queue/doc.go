// Package queue is a durable retry queue for mail: once Enqueue returns, the
// message survives a crash and is retried until it is delivered or given up
// and bounced, the way an MTA's queue works (RFC 5321 §4.5.4.1).
//
// The pieces:
//
//   - Envelope, Recipient, Message: the SMTP envelope with the DSN
//     parameters of RFC 3461 (NOTIFY, ORCPT, ENVID, RET) and SMTPUTF8
//     (RFC 6531), and the body, stored once and read back as a Body.
//   - Store: where items live. queue/bbolt is the durable embedded store,
//     queue/memqueue keeps items in memory for tests, and queue/queuetest is
//     the conformance suite every store passes. A store leases due items to
//     workers; a lease expires by itself, so an item held by a worker that
//     died becomes due again, and a fencing token keeps the old worker from
//     writing to it.
//   - Runner: leases due items with bounded concurrency, hands the pending
//     recipients to a Deliverer, records each recipient's outcome, retries
//     the ones still pending on a Schedule (Retry is Postfix-like), and gives
//     up at the end of the lifetime.
//   - Notices: permanent failures and expired recipients produce a delivery
//     status notification (RFC 3464 multipart/report, RFC 3462) enqueued to
//     the reverse path, never for a null reverse path; an optional hook
//     sees every notice. A message whose content the store reports lost
//     (ErrCorrupt) is given up at once with such a notice, without the
//     original; one whose content cannot be read for now waits on the
//     schedule like a failed attempt.
//
// Delivery is at least once: a crash between a server's final reply and
// the write that records it repeats the delivery; nothing is lost. Results
// the runner cannot be sure of (connection lost after the final dot) are
// retried and flagged as possible duplicates.
//
// Stores and the Runner are safe for concurrent use. A Runner does its work
// in Run, which returns when its context ends and the attempts in flight
// have finished or been released.
package queue
