// Package jetstream is a queue store on NATS JetStream, for senders on
// more than one machine sharing one queue.
package jetstream
