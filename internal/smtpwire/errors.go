package smtpwire

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
)

// Sentinel errors. Test with errors.Is.
var (
	// ErrInvalidInput: an address, name or parameter cannot be sent as is
	// (CR, LF or NUL, which would inject commands; '<' or '>' in a path;
	// an over-long path; an unknown parameter value). Returned before any
	// I/O.
	ErrInvalidInput = errors.New("smtpwire: invalid input")
	// ErrNotAdvertised: the command or parameter needs an extension the
	// server did not advertise in its EHLO reply. Returned before the
	// command is sent.
	ErrNotAdvertised = errors.New("smtpwire: extension not advertised by the server")
	// ErrProtocol: the server's reply is malformed (not a 2xx–5xx code,
	// inconsistent multi-line codes, a line longer than
	// Options.MaxLineLength, too many lines, or an unexpected code). The
	// connection is closed, because the dialogue can no longer be trusted.
	ErrProtocol = errors.New("smtpwire: protocol error")
	// ErrClosed: the connection was closed (by Close, Quit, an earlier
	// failure or a 421 reply) and cannot be used.
	ErrClosed = errors.New("smtpwire: connection closed")
	// ErrNoRecipients: Send got a refusal for every recipient, so no body
	// was sent; the replies are in TxResult.Rcpt.
	ErrNoRecipients = errors.New("smtpwire: no recipient accepted")
	// ErrUnknownAfterDot matches (errors.Is) a *ConnError whose Stage is
	// StageDataEnd: the whole message and its final dot were sent but the
	// reply never came, so the server may have accepted the message (RFC
	// 5321 §4.5.3.2.6). Retrying may deliver it twice; not retrying may lose
	// it.
	ErrUnknownAfterDot = errors.New("smtpwire: connection lost after the final dot, outcome unknown")
)

// ConnError reports that the connection failed during Stage: an I/O error,
// a timeout, a cancelled context, a protocol error or a server that closed
// the connection. It is never a server reply; those are *smtp.SMTPError.
// After a ConnError the Conn is closed.
type ConnError struct {
	Stage Stage
	// Err is the cause: the context's error when the context ended, the
	// network error (a net.Error with Timeout() for an expired deadline),
	// io.EOF / io.ErrUnexpectedEOF when the server hung up, or an error
	// wrapping ErrProtocol or ErrClosed.
	Err error
}

func (e *ConnError) Error() string {
	msg := fmt.Sprintf("smtpwire: connection failed during %s: %v", e.Stage, e.Err)
	if e.Stage == StageDataEnd {
		msg += " (message may have been delivered)"
	}
	return msg
}

func (e *ConnError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnknownAfterDot) true after the final dot.
func (e *ConnError) Is(target error) bool {
	return target == ErrUnknownAfterDot && e.Stage == StageDataEnd
}

// Timeout reports whether a deadline (per-command timeout or the
// context's) expired.
func (e *ConnError) Timeout() bool {
	var ne net.Error
	return errors.Is(e.Err, context.DeadlineExceeded) || errors.Is(e.Err, os.ErrDeadlineExceeded) ||
		(errors.As(e.Err, &ne) && ne.Timeout())
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidInput}, args...)...)
}

func protocolErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}
