package queue

import (
	"fmt"
	"io"
	"strings"
)

// Envelope is the SMTP envelope of a queued message: what MAIL FROM and
// RCPT TO carry (RFC 5321 §4.1.1.2, §4.1.1.3) with the DSN extension's
// parameters (RFC 3461) and SMTPUTF8 (RFC 6531).
type Envelope struct {
	// From is the reverse path without angle brackets. The empty string
	// is the null reverse path "<>" (RFC 5321 §4.5.5): such a message is
	// itself a notification and never causes a bounce.
	From string
	// Recipients are the forward paths, in the order given. At least one.
	Recipients []Recipient
	// EnvID is the ENVID parameter of MAIL FROM (RFC 3461 §4.4), already
	// xtext-decoded. Empty when none was given.
	EnvID string
	// Ret is the RET parameter of MAIL FROM (RFC 3461 §4.3).
	Ret Ret
	// SMTPUTF8 says that the message needs the SMTPUTF8 extension
	// (RFC 6531 §3.4): addresses or headers carry UTF-8.
	SMTPUTF8 bool
	// Size is the declared message size in octets (SIZE, RFC 1870), or 0
	// when not declared. The stored body size is Item.BodySize.
	Size int64
}

// Recipient is one forward path with its DSN options.
type Recipient struct {
	// Address is the forward path without angle brackets.
	Address string
	// Notify is the NOTIFY parameter of RCPT TO (RFC 3461 §4.1).
	// The zero value means it was not given, which this queue treats
	// as FAILURE,DELAY as RFC 3461 §4.1 suggests.
	Notify Notify
	// ORcpt is the ORCPT parameter of RCPT TO (RFC 3461 §4.2) as
	// "addr-type;address" with the address xtext-decoded, for example
	// "rfc822;bob@example.org". Empty when none was given.
	ORcpt string
}

// Notify is a set of RFC 3461 §4.1 NOTIFY keywords.
type Notify uint8

// NOTIFY keywords. NotifyNever excludes the others.
const (
	NotifySuccess Notify = 1 << iota
	NotifyFailure
	NotifyDelay
	NotifyNever
)

// Wants reports whether a notification of kind k (NotifySuccess,
// NotifyFailure or NotifyDelay) is requested. An unset NOTIFY asks for
// failure and delay notices.
func (n Notify) Wants(k Notify) bool {
	if n == 0 {
		return k == NotifyFailure || k == NotifyDelay
	}
	if n&NotifyNever != 0 {
		return false
	}
	return n&k != 0
}

// String returns the parameter value as written in RCPT TO, or "" if unset.
func (n Notify) String() string {
	if n == 0 {
		return ""
	}
	if n&NotifyNever != 0 {
		return "NEVER"
	}
	var parts []string
	if n&NotifySuccess != 0 {
		parts = append(parts, "SUCCESS")
	}
	if n&NotifyFailure != 0 {
		parts = append(parts, "FAILURE")
	}
	if n&NotifyDelay != 0 {
		parts = append(parts, "DELAY")
	}
	return strings.Join(parts, ",")
}

// Ret is the RET parameter of MAIL FROM (RFC 3461 §4.3): how much of the
// message a failure notice returns.
type Ret uint8

const (
	// RetUnset: not given; the queue returns the full message when it is
	// small (RunnerOptions.ReturnLimit) and the headers otherwise.
	RetUnset Ret = iota
	// RetFull: return the full message.
	RetFull
	// RetHeaders: return the headers only (RET=HDRS).
	RetHeaders
)

// String returns the parameter value as written in MAIL FROM.
func (r Ret) String() string {
	switch r {
	case RetFull:
		return "FULL"
	case RetHeaders:
		return "HDRS"
	default:
		return ""
	}
}

// Message is what Enqueue takes: an envelope and a body.
type Message struct {
	// Key makes Enqueue idempotent: enqueuing a message with the key of
	// an item still in the queue returns that item's ID and stores
	// nothing. Empty means no key.
	Key string
	// Envelope is copied; the caller may reuse it after Enqueue returns.
	Envelope Envelope
	// Body is the message content (RFC 5322 header and body, CRLF line
	// endings), read once to EOF by Enqueue.
	Body io.Reader
}

// Validate checks the envelope for what would make the item undeliverable
// or unsafe to write into an SMTP command line.
func (e *Envelope) Validate() error {
	if err := checkPath(e.From); err != nil {
		return fmt.Errorf("%w: reverse path: %v", ErrInvalid, err)
	}
	if len(e.Recipients) == 0 {
		return fmt.Errorf("%w: no recipients", ErrInvalid)
	}
	for i, r := range e.Recipients {
		if r.Address == "" {
			return fmt.Errorf("%w: recipient %d: empty address", ErrInvalid, i)
		}
		if err := checkPath(r.Address); err != nil {
			return fmt.Errorf("%w: recipient %d: %v", ErrInvalid, i, err)
		}
		if r.Notify&NotifyNever != 0 && r.Notify != NotifyNever {
			// RFC 3461 §4.1: NEVER must not be combined with others.
			return fmt.Errorf("%w: recipient %d: NOTIFY=NEVER combined with other keywords", ErrInvalid, i)
		}
		if strings.ContainsAny(r.ORcpt, "\r\n") {
			return fmt.Errorf("%w: recipient %d: ORCPT contains a line break", ErrInvalid, i)
		}
	}
	if !e.SMTPUTF8 {
		// RFC 6531 §3.2: addresses in UTF-8 need the SMTPUTF8 extension.
		for _, a := range append([]string{e.From}, addresses(e.Recipients)...) {
			if !isASCII(a) {
				return fmt.Errorf("%w: address %q needs SMTPUTF8", ErrInvalid, a)
			}
		}
	}
	if strings.ContainsAny(e.EnvID, "\r\n") {
		return fmt.Errorf("%w: ENVID contains a line break", ErrInvalid)
	}
	if e.Ret > RetHeaders {
		return fmt.Errorf("%w: RET value %d", ErrInvalid, e.Ret)
	}
	if e.Size < 0 {
		return fmt.Errorf("%w: negative size", ErrInvalid)
	}
	return nil
}

func checkPath(p string) error {
	if len(p) > 256 {
		// RFC 5321 §4.5.3.1.3: a path is at most 256 octets.
		return fmt.Errorf("path longer than 256 octets")
	}
	if strings.ContainsAny(p, "\r\n\x00<> ") {
		return fmt.Errorf("path %q contains a forbidden character", p)
	}
	return nil
}

// Clone returns a deep copy.
func (e Envelope) Clone() Envelope {
	e.Recipients = append([]Recipient(nil), e.Recipients...)
	return e
}

func addresses(rs []Recipient) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Address
	}
	return out
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
