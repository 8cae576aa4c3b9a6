package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"io"
	"sync"
	"time"
)

// Store holds queued items durably. Implementations are safe for
// concurrent use. Time-dependent behaviour (due times, lease expiry,
// Created) follows the store's clock, which stores let callers inject.
//
// Backends: queue/bbolt (embedded, durable), queue/memqueue (memory only),
// and the conformance suite in queue/queuetest that each must pass.
type Store interface {
	// Enqueue stores the message and returns its ID once it is durable.
	// With a Key already present it stores nothing and returns the
	// existing item's ID. The item is due at once.
	Enqueue(ctx context.Context, msg *Message) (string, error)

	// Lease takes up to max items that are due now, in order of due time,
	// and leases each for d: until then no other Lease returns it. An
	// item whose lease expired is due again. A store that finds undecodable
	// records quarantines them and returns the good items together with an
	// error wrapping ErrCorrupt that names the quarantined IDs.
	Lease(ctx context.Context, max int, d time.Duration) ([]*Item, error)

	// Record writes an update to a leased item and makes it due at
	// u.NextAttempt. It fails with ErrLeaseLost if l is not the item's
	// latest lease.
	Record(ctx context.Context, l Lease, u Update) error

	// Complete removes a leased item and its body. It fails with
	// ErrLeaseLost if l is not the item's latest lease.
	Complete(ctx context.Context, l Lease) error

	// Body opens the item's body. The caller closes it. It fails with
	// ErrNotFound if no item has this ID, and with an error wrapping
	// ErrCorrupt if the item is there but its body is lost or damaged for
	// good (the Runner then gives the recipients up with a failure
	// notice); any other error is retried on the schedule.
	Body(ctx context.Context, id string) (Body, error)

	// Inspect returns a copy of the item.
	Inspect(ctx context.Context, id string) (*Item, error)

	// List returns up to limit items with IDs greater than after, in ID
	// order (which is enqueue order). after "" starts at the beginning.
	List(ctx context.Context, after string, limit int) ([]*Item, error)

	// Stats counts the items by state.
	Stats(ctx context.Context) (Stats, error)

	// Close releases the store. Items stay stored (for durable stores).
	Close() error
}

// Notifier is implemented by stores that can tell when to look again, so
// that the runner waits instead of polling.
type Notifier interface {
	// NextDue returns the earliest due time of any item (ok false when the
	// queue is empty) and a channel that is closed at the next change to
	// the queue after the call.
	NextDue(ctx context.Context) (next time.Time, ok bool, changed <-chan struct{}, err error)
}

// Body is a stored message body. It can be read many times and
// concurrently, from any offset; use NewBodyReader for a stream.
type Body interface {
	io.ReaderAt
	io.Closer
	// Size is the body length in octets.
	Size() int64
}

// NewBodyReader returns a reader over the whole body.
func NewBodyReader(b Body) io.Reader { return io.NewSectionReader(b, 0, b.Size()) }

// BytesBody returns a Body over p.
func BytesBody(p []byte) Body { return bytesBody{bytes.NewReader(p)} }

type bytesBody struct{ *bytes.Reader }

func (bytesBody) Close() error { return nil }

var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// NewID returns a new item ID: 20 characters that sort by t (to the
// nanosecond), then by 36 random bits, so that IDs made at once on
// different machines do not collide and ID order is enqueue order.
func NewID(t time.Time) string {
	var b [13]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixNano()))
	_, _ = rand.Read(b[8:])
	return idEncoding.EncodeToString(b[:])[:20]
}

// IDSource makes IDs with NewID that increase strictly within one process
// even when the clock stands still or steps back. The zero value is ready.
type IDSource struct {
	mu   sync.Mutex
	last int64
}

// New returns a new ID for an item created at t.
func (s *IDSource) New(t time.Time) string {
	s.mu.Lock()
	n := t.UnixNano()
	if n <= s.last {
		n = s.last + 1
	}
	s.last = n
	s.mu.Unlock()
	return NewID(time.Unix(0, n))
}

// IDTime returns the time encoded in an ID made by NewID.
func IDTime(id string) (time.Time, bool) {
	if len(id) != 20 {
		return time.Time{}, false
	}
	b, err := idEncoding.DecodeString(id + "0")
	if err != nil || len(b) < 8 {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b[:8]))), true
}
