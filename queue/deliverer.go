package queue

import "context"

// Deliverer makes one delivery attempt of a queued message to some of its
// recipients. smtpclient satisfies it through a small adapter; tests use
// fakes. Implementations must be safe for concurrent use.
type Deliverer interface {
	// Deliver tries d.Recipients and returns one result per recipient, in
	// the same order. A non-nil error means the attempt as a whole failed
	// (for example, no route to any host); recipients without a result
	// then count as temporary failures. When ctx ends, Deliver returns
	// promptly, reporting what it knows: a recipient the server may have
	// accepted is OutcomeUnknown, never OutcomeTemporary. A panic in
	// Deliver is recovered by the Runner and fails the attempt like an
	// error: the recipients are tried again.
	Deliver(ctx context.Context, d *Delivery) ([]RecipientResult, error)
}

// DelivererFunc adapts a function to the Deliverer interface.
type DelivererFunc func(ctx context.Context, d *Delivery) ([]RecipientResult, error)

// Deliver calls f.
func (f DelivererFunc) Deliver(ctx context.Context, d *Delivery) ([]RecipientResult, error) {
	return f(ctx, d)
}

// Delivery is one attempt handed to a Deliverer.
type Delivery struct {
	// ID is the queue item's ID, for logs and trace headers.
	ID string
	// Envelope is the full envelope as enqueued (From, EnvID, Ret,
	// SMTPUTF8, Size are sent as MAIL FROM parameters).
	Envelope Envelope
	// Recipients are the recipients to try now: those still pending.
	Recipients []Recipient
	// Body is the message; read it with NewBodyReader, as many times as
	// needed (once per host tried). The runner closes it afterwards.
	Body Body
	// Attempt is 1 for the first attempt.
	Attempt int
}

// Outcome is what became of one recipient in one attempt.
type Outcome uint8

const (
	// OutcomeTemporary: not delivered this time; try again later (4xx,
	// connection failures before the end of DATA). The zero value, so a
	// missing result is never taken for a delivery.
	OutcomeTemporary Outcome = iota
	// OutcomeDelivered: the server accepted the message for the recipient.
	OutcomeDelivered
	// OutcomePermanent: the server refused the recipient for good (5xx).
	OutcomePermanent
	// OutcomeUnknown: the connection ended after the final dot and before
	// the reply (RFC 5321 §4.1.1.4 and §6.1): the server may have taken the
	// message. The runner retries it and flags it as a possible duplicate,
	// preferring a duplicate to a loss.
	OutcomeUnknown
)

func (o Outcome) String() string {
	switch o {
	case OutcomeDelivered:
		return "delivered"
	case OutcomeTemporary:
		return "temporary"
	case OutcomePermanent:
		return "permanent"
	case OutcomeUnknown:
		return "unknown"
	default:
		return "outcome(?)"
	}
}

// RecipientResult is the outcome of an attempt for one recipient.
type RecipientResult struct {
	Outcome Outcome
	// Reply is the server's reply about this recipient (to RCPT TO, or to
	// the end of DATA), or a local reason in the same form; it goes into
	// the Diagnostic-Code of a notice (RFC 3464 §2.3.6).
	Reply Reply
	// Host names the server that answered ("mx1.example.net [192.0.2.1]"),
	// the Remote-MTA of a notice (RFC 3464 §2.3.5). "" if none answered.
	Host string
}
