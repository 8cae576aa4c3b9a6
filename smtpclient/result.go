package smtpclient

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// Outcome is what happened to one recipient in one Send call.
type Outcome int

const (
	// Temporary: not delivered; try again later (RFC 5321 §4.2.1 4yz, or
	// no host could be reached).
	Temporary Outcome = iota
	// Delivered: a server accepted responsibility (250 after the final dot).
	Delivered
	// Permanent: a server refused it for good (5yz), or it cannot be sent
	// (null MX, no such domain, message too big for every host).
	Permanent
	// Unknown: the connection was lost after the final dot and before the
	// reply, so the message may have been delivered (RFC 5321 §4.5.3.2.6).
	// Retrying later can duplicate it; not retrying can lose it.
	Unknown
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Permanent:
		return "permanent"
	case Unknown:
		return "unknown"
	default:
		return "temporary"
	}
}

// Reply is an SMTP reply: code, enhanced status code (RFC 3463) and text.
type Reply struct {
	Code     int
	Enhanced smtp.EnhancedCode
	Message  string
}

func (r Reply) String() string {
	if r.Enhanced != (smtp.EnhancedCode{}) && r.Enhanced != smtp.NoEnhancedCode {
		return fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], r.Message)
	}
	return fmt.Sprintf("%d %s", r.Code, r.Message)
}

// RecipientResult is the outcome for one recipient.
type RecipientResult struct {
	// Recipient is the address as given in Message.To.
	Recipient string
	Outcome   Outcome
	// Host names the host that gave the final answer: a relay's Name, or
	// "mx.example.org [192.0.2.1]:25" for a mail exchanger. Empty when no
	// host answered (e.g. DNS failure, every host unavailable).
	Host string
	// Reply is the server's reply that decided the outcome: the reply after
	// the final dot when delivered, the RCPT/MAIL/DATA rejection otherwise.
	// Nil when no reply decided it (lost connection, DNS, local checks).
	Reply *Reply
	// Err is the reason of a failure (an *Error), nil when delivered.
	Err error
	// Attempts counts the hosts this recipient was offered to in this call.
	Attempts int
}

// Result holds one RecipientResult per recipient, in Message.To order.
type Result struct {
	Recipients []RecipientResult
}

// Count returns how many recipients have outcome o.
func (r *Result) Count(o Outcome) int {
	n := 0
	for _, rr := range r.Recipients {
		if rr.Outcome == o {
			n++
		}
	}
	return n
}

// Stage is the point of an SMTP session where something happened.
type Stage int

const (
	StageNone     Stage = iota
	StageResolve        // MX look-up
	StageConnect        // TCP connect (or implicit TLS handshake)
	StageGreeting       // the server's 220
	StageHello          // EHLO/HELO
	StageStartTLS       // STARTTLS and the handshake (RFC 3207)
	StageAuth           // AUTH (RFC 4954)
	StageMail           // MAIL FROM
	StageRcpt           // RCPT TO
	StageData           // DATA, until the 354
	StageBody           // writing the body, until the final dot is sent
	StageDataEnd        // the reply after the final dot
	StageReset          // RSET on a reused connection
	StagePolicy         // a local check against the server's capabilities
)

var stageNames = [...]string{"none", "resolve", "connect", "greeting", "hello", "starttls", "auth",
	"mail", "rcpt", "data", "body", "data-end", "reset", "policy"}

func (s Stage) String() string {
	if int(s) < len(stageNames) {
		return stageNames[s]
	}
	return fmt.Sprintf("stage(%d)", int(s))
}

// Error is the one error type of this package for delivery failures: where
// it happened, on which host, the reply when there was one, and the cause.
type Error struct {
	Host  string
	Stage Stage
	// Reply is the server's reply, nil for local and network errors.
	Reply *Reply
	// Outcome is the classification of the failure for the recipients it
	// concerns (Temporary, Permanent or Unknown).
	Outcome Outcome
	// Err is the cause (*smtp.SMTPError, network error, sentinel).
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("smtpclient: ")
	if e.Host != "" {
		b.WriteString(e.Host)
		b.WriteString(": ")
	}
	b.WriteString(e.Stage.String())
	b.WriteString(": ")
	b.WriteString(e.Outcome.String())
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether a later retry may succeed.
func (e *Error) Temporary() bool { return e.Outcome == Temporary || e.Outcome == Unknown }

// Sentinel errors for states.
var (
	// ErrNoRoute: the client has no relay and no MX resolver.
	ErrNoRoute = errors.New("smtpclient: no relays and no MX resolver configured")
	// ErrNoHostAvailable: every host was skipped (breaker open, health
	// down) or none exists; nothing was attempted.
	ErrNoHostAvailable = errors.New("smtpclient: no host available")
	// ErrBreakerOpen: the host's circuit breaker is open.
	ErrBreakerOpen = errors.New("smtpclient: circuit breaker open")
	// ErrHostDown: the health checker reports the host down.
	ErrHostDown = errors.New("smtpclient: host down by health check")
	// ErrTLSRequired: the TLS policy requires STARTTLS and the server does
	// not offer it (RFC 3207 §4).
	ErrTLSRequired = errors.New("smtpclient: TLS required but the server does not offer STARTTLS")
	// ErrAuthInClear: AUTH would be sent over an unencrypted connection.
	ErrAuthInClear = errors.New("smtpclient: refusing to authenticate over an unencrypted connection")
	// ErrAuthUnsupported: credentials are configured and the server does not
	// offer AUTH or the mechanism.
	ErrAuthUnsupported = errors.New("smtpclient: server does not offer the configured AUTH mechanism")
	// ErrSMTPUTF8Required: the message needs SMTPUTF8 (RFC 6531) and the
	// server does not offer it.
	ErrSMTPUTF8Required = errors.New("smtpclient: message needs SMTPUTF8 and the server does not offer it")
	// ErrMessageTooBig: the message exceeds the server's SIZE (RFC 1870).
	ErrMessageTooBig = errors.New("smtpclient: message exceeds the server's maximum size")
	// ErrConnectionLost: the connection closed or failed in the middle of
	// a command.
	ErrConnectionLost = errors.New("smtpclient: connection lost")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("smtpclient: client closed")
)
