// Package queue is a durable retry queue for mail: once Enqueue returns, the
// message survives a crash and is retried until it is delivered or bounced
// (RFC 5321 §4.5.4.1, RFC 3464).
package queue
