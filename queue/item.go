package queue

import (
	"fmt"
	"time"
)

// Status is where a recipient stands.
type Status uint8

const (
	// StatusPending: not delivered yet; will be tried again.
	StatusPending Status = iota
	// StatusDelivered: a server accepted the message for this recipient.
	StatusDelivered
	// StatusFailed: given up, by a permanent failure or at the end of the
	// lifetime. A failure notice is owed unless Reported is set.
	StatusFailed
)

func (s Status) String() string {
	switch s {
	case StatusPending:
		return "pending"
	case StatusDelivered:
		return "delivered"
	case StatusFailed:
		return "failed"
	default:
		return fmt.Sprintf("status(%d)", uint8(s))
	}
}

// Reply is an SMTP reply (RFC 5321 §4.2) or a local reason written in the
// same form.
type Reply struct {
	Code     int    // three-digit reply code, 0 if none (e.g. connection refused)
	Enhanced string // enhanced status code "x.y.z" (RFC 3463), "" if none
	Text     string // reply text, lines joined by "\n"
}

// IsZero reports whether r holds nothing.
func (r Reply) IsZero() bool { return r.Code == 0 && r.Enhanced == "" && r.Text == "" }

func (r Reply) String() string {
	s := ""
	if r.Code != 0 {
		s = fmt.Sprintf("%d", r.Code)
	}
	if r.Enhanced != "" {
		if s != "" {
			s += " "
		}
		s += r.Enhanced
	}
	if r.Text != "" {
		if s != "" {
			s += " "
		}
		s += r.Text
	}
	return s
}

// RecipientState is the stored state of one recipient of an item.
type RecipientState struct {
	Recipient
	Status Status
	// Reply is the last reply about this recipient: the server's, or a
	// local reason ("4.4.1 connection refused").
	Reply Reply
	// Host is the server that gave Reply ("mx1.example.net [192.0.2.1]"),
	// "" for a local reason.
	Host string
	// LastAttempt is when delivery to this recipient was last tried.
	LastAttempt time.Time
	// PossibleDuplicate: an attempt ended without knowing whether the
	// server took the message (connection lost after the final dot,
	// RFC 5321 §4.1.1.4), so a later delivery may be a duplicate.
	PossibleDuplicate bool
	// Reported: the failure or success notice owed for this recipient has
	// been handed over (enqueued as a DSN or given to the hook).
	Reported bool
	// DelayReported: a delay notice has been handed over.
	DelayReported bool
}

// Lease identifies a leased item and fences writes to it: a store accepts
// Record and Complete only with the token of the item's latest lease, so a
// worker whose lease expired and was taken over cannot touch the item.
type Lease struct {
	ID    string
	Token uint64
	// Until is when the lease expires and the item becomes due again.
	Until time.Time
}

// Item is a queued message as the store holds it.
type Item struct {
	ID  string
	Key string
	// Envelope is as enqueued; Recipients[i] holds the state of
	// Envelope.Recipients[i].
	Envelope   Envelope
	Recipients []RecipientState
	// Created is when the item was enqueued (the arrival date of
	// RFC 3464 §2.2.5); its lifetime counts from here.
	Created time.Time
	// Attempts counts the delivery attempts made so far.
	Attempts int
	// NextAttempt is when the item is due. While leased it is the lease
	// expiry.
	NextAttempt time.Time
	// LastError describes the last attempt's failure, if any.
	LastError string
	// BodySize is the stored body's length in octets.
	BodySize int64
	// Lease is set on items returned by Lease; its Token is also kept on
	// items returned by Inspect and List while the item is leased.
	Lease Lease
}

// Pending returns the indexes of the recipients still pending.
func (it *Item) Pending() []int {
	var p []int
	for i := range it.Recipients {
		if it.Recipients[i].Status == StatusPending {
			p = append(p, i)
		}
	}
	return p
}

// Clone returns a deep copy.
func (it *Item) Clone() *Item {
	c := *it
	c.Envelope = it.Envelope.Clone()
	c.Recipients = append([]RecipientState(nil), it.Recipients...)
	return &c
}

// NewItemState returns the initial recipient states of an envelope.
func NewItemState(env *Envelope) []RecipientState {
	rs := make([]RecipientState, len(env.Recipients))
	for i, r := range env.Recipients {
		rs[i].Recipient = r
	}
	return rs
}

// Update is what Record writes: the full new recipient states and when to
// try next. Stores persist it as given; the runner decides its content.
type Update struct {
	// Recipients replaces the item's recipient states; it must have one
	// entry per recipient, in the same order.
	Recipients []RecipientState
	// Attempts replaces the attempt count.
	Attempts int
	// NextAttempt is when the item becomes due again; the zero time means
	// now. The lease token stays valid until the item is leased again.
	NextAttempt time.Time
	// LastError replaces the last error text.
	LastError string
}

// Stats is a snapshot of a store's content.
type Stats struct {
	// Items is the number of items in the queue.
	Items int
	// Due is the number of items whose time has come and that nobody
	// holds a valid lease on.
	Due int
	// Leased is the number of items under a lease that has not expired.
	Leased int
	// Deferred is the number of items waiting for a later attempt.
	Deferred int
	// Quarantined is the number of records set aside as undecodable.
	Quarantined int
	// Oldest is the creation time of the oldest item, zero when empty.
	Oldest time.Time
}
