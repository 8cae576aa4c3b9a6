package health

import (
	"errors"
	"fmt"
	"net"
)

// Sentinel errors.
var (
	// ErrInvalidTarget wraps the reason AddTarget refused a target.
	ErrInvalidTarget = errors.New("health: invalid target")
	// ErrDuplicateTarget is returned by AddTarget for a name already held.
	ErrDuplicateTarget = errors.New("health: duplicate target name")
	// ErrRunning is returned by Run when the checker is already running.
	ErrRunning = errors.New("health: checker already running")
	// ErrSubscriptionClosed is returned by Subscription.Next after Close.
	ErrSubscriptionClosed = errors.New("health: subscription closed")
	// ErrReportedFailure stands for the error of a ReportFailure call that
	// gave none.
	ErrReportedFailure = errors.New("health: failure reported by a client")

	// ErrBadGreeting: the server's greeting was not 220 (SMTP) or
	// "* OK"/"* PREAUTH" (IMAP); 421, 554 and "* BYE" are refusals.
	ErrBadGreeting = errors.New("bad greeting")
	// ErrRejected: the server refused a command of the probe.
	ErrRejected = errors.New("command rejected")
	// ErrNoStartTLS: TLS was required but the server does not offer
	// STARTTLS.
	ErrNoStartTLS = errors.New("STARTTLS not offered")
	// ErrLoginDisabled: credentials were given but the IMAP server
	// advertises LOGINDISABLED (RFC 9051 §6.2.3).
	ErrLoginDisabled = errors.New("LOGIN disabled by the server")
	// ErrMalformed: the server sent something that is not a reply of the
	// protocol, or sent too much.
	ErrMalformed = errors.New("malformed reply")
)

// ProbeError is why an active probe failed.
type ProbeError struct {
	Target string    // target name
	Kind   ProbeKind // probe kind
	// Step is the part of the conversation that failed: "connect", "tls",
	// "greeting", "ehlo", "helo", "starttls", "capability", "login",
	// "quit" or "logout".
	Step string
	// Code is the SMTP reply code when the server answered one; 0
	// otherwise.
	Code int
	// Text is the server's reply text, when it sent one (for IMAP, the
	// response line without its tag).
	Text string
	// Err is the underlying error: a network error, ErrBadGreeting,
	// ErrRejected, ErrNoStartTLS, ErrLoginDisabled, ErrMalformed, or the
	// probe context's error.
	Err error
}

func (e *ProbeError) Error() string {
	msg := fmt.Sprintf("health: %s probe of %q failed at %s", e.Kind, e.Target, e.Step)
	if e.Code != 0 {
		msg += fmt.Sprintf(": %d", e.Code)
	}
	if e.Text != "" {
		msg += fmt.Sprintf(" %q", e.Text)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *ProbeError) Unwrap() error { return e.Err }

// Timeout reports whether the probe failed because its time ran out: the
// server did not answer in time.
func (e *ProbeError) Timeout() bool {
	// context.DeadlineExceeded is a net.Error with Timeout() true too.
	var ne net.Error
	return errors.As(e.Err, &ne) && ne.Timeout()
}
