package imapfailover

import (
	"errors"
	"fmt"
)

// Sentinel errors for states of the pool and of a mailbox.
var (
	// ErrNoReplica: every replica was tried and none could serve.
	ErrNoReplica = errors.New("imapfailover: no replica available")
	// ErrClosed: the pool is closed.
	ErrClosed = errors.New("imapfailover: pool closed")
	// ErrTimeout: a command got no byte from the server within
	// Options.CommandTimeout and its connection was closed.
	ErrTimeout = errors.New("imapfailover: command timed out")
	// ErrLineTooLong: the server sent a response line longer than
	// Options.MaxLineLength and the connection was closed.
	ErrLineTooLong = errors.New("imapfailover: response line too long")
	// ErrConnLost: the connection broke while a command was running; the
	// command may or may not have taken effect on the server.
	ErrConnLost = errors.New("imapfailover: connection lost")
	// ErrUIDValidity: the mailbox's UIDVALIDITY is not the one the caller's
	// UIDs belong to (RFC 3501 §2.3.1.1), so the UIDs mean nothing here.
	ErrUIDValidity = errors.New("imapfailover: UIDVALIDITY changed")
	// ErrLagging: the replica has not yet received messages already
	// handled (its UIDNEXT is not above the last handled UID).
	ErrLagging = errors.New("imapfailover: replica is behind")
	// ErrNoMessageID: a message to append has a Message-ID header that
	// cannot be parsed.
	ErrNoMessageID = errors.New("imapfailover: malformed Message-ID")
)

// Error is what the package returns for a failure on a replica: the
// replica's name, the operation and the cause. Errors.Is sees through it
// to the sentinels above, to *imap.Error for a server's NO/BAD, and to
// network errors.
type Error struct {
	Replica string // empty when no replica was involved
	Op      string // "dial", "login", "select", "fetch", "append", …
	Err     error
}

func (e *Error) Error() string {
	if e.Replica == "" {
		return fmt.Sprintf("imapfailover: %s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("imapfailover: %s on %s: %v", e.Op, e.Replica, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }
