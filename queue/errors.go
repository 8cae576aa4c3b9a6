package queue

import (
	"errors"
	"fmt"
)

// Sentinel errors for queue states. Errors returned by stores and the
// runner wrap them; test with errors.Is.
var (
	// ErrNotFound: no item has this ID.
	ErrNotFound = errors.New("queue: item not found")
	// ErrLeaseLost: the lease token is not the item's latest one (the lease
	// expired and the item was leased again) or the item is gone.
	ErrLeaseLost = errors.New("queue: lease lost")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("queue: store closed")
	// ErrInvalid: the message or update is malformed.
	ErrInvalid = errors.New("queue: invalid")
	// ErrCorrupt: a stored record cannot be decoded; it was quarantined.
	ErrCorrupt = errors.New("queue: corrupt record")
	// ErrStorageFull: the disk or the configured size limit is full;
	// nothing of the failed operation was written.
	ErrStorageFull = errors.New("queue: storage full")
)

// Error is the error type of the queue and its stores.
type Error struct {
	Op  string // "enqueue", "lease", "record", "complete", "body", ...
	ID  string // the item concerned, "" if none
	Err error  // the cause; wraps one of the sentinels where one applies
}

func (e *Error) Error() string {
	if e.ID != "" {
		return fmt.Sprintf("queue: %s %s: %v", e.Op, e.ID, e.Err)
	}
	return fmt.Sprintf("queue: %s: %v", e.Op, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }
