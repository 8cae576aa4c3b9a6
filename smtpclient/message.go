package smtpclient

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-smtp"
)

// Message is one message and its envelope. The body is read once per
// attempt, because a recipient that fails on one host is sent again on the
// next: give either Body with Size (read through io.SectionReader, so one
// ReaderAt serves concurrent attempts) or Open. The body is streamed, never
// held in memory.
type Message struct {
	// From is the reverse-path; "" sends the null reverse-path "<>"
	// (RFC 5321 §4.5.5), as bounces do.
	From string
	// To lists the recipients; at least one. The Result has one entry per
	// recipient, in this order.
	To []Recipient

	// Body and Size give a re-readable body.
	Body io.ReaderAt
	Size int64
	// Open returns a fresh reader over the body, called once per attempt;
	// used when Body is nil. Size should still be set when known: it is
	// announced with SIZE (RFC 1870) and checked against the server's limit.
	Open func() (io.ReadCloser, error)

	// EnvelopeID is the DSN ENVID (RFC 3461 §4.4), sent when the server
	// offers DSN.
	EnvelopeID string
	// Return is the DSN RET parameter (FULL or HDRS), sent when the server
	// offers DSN.
	Return smtp.DSNReturn
	// SMTPUTF8 asks for the SMTPUTF8 extension (RFC 6531), e.g. for UTF-8
	// headers. It is implied when an envelope address is not ASCII; a host
	// without the extension is then skipped.
	SMTPUTF8 bool
	// EightBit announces BODY=8BITMIME (RFC 6152) when the server offers it.
	EightBit bool
}

// Recipient is one envelope recipient with its DSN parameters.
type Recipient struct {
	// Addr is the mailbox, local@domain, without angle brackets.
	Addr string
	// Notify is the DSN NOTIFY parameter (RFC 3461 §4.1), sent when the
	// server offers DSN.
	Notify []smtp.DSNNotify
	// OriginalRecipient is the DSN ORCPT address (RFC 3461 §4.2), sent as
	// rfc822 (or utf-8 when not ASCII) when the server offers DSN.
	OriginalRecipient string
}

// ErrNoRecipients is returned when a message has no recipient.
var ErrNoRecipients = errors.New("smtpclient: message has no recipients")

// ErrNoBody is returned when a message has neither Body nor Open.
var ErrNoBody = errors.New("smtpclient: message has no body (set Body and Size, or Open)")

// envelope is a validated message: parsed addresses, the options to send.
type envelope struct {
	msg   *Message
	from  string
	rcpts []parsedRecipient
	utf8  bool // SMTPUTF8 needed
}

type parsedRecipient struct {
	index int
	rcpt  Recipient
	addr  Address
}

// validate checks everything about a message that can be checked before any
// I/O, so that a bad message fails fast with a typed error and no partial
// delivery.
func validate(m *Message) (*envelope, error) {
	if m == nil {
		return nil, errors.New("smtpclient: nil message")
	}
	if len(m.To) == 0 {
		return nil, ErrNoRecipients
	}
	if m.Body == nil && m.Open == nil {
		return nil, ErrNoBody
	}
	if m.Size < 0 {
		return nil, fmt.Errorf("smtpclient: negative message size %d", m.Size)
	}
	if m.Body != nil && m.Size == 0 {
		return nil, errors.New("smtpclient: Body is set but Size is 0")
	}
	env := &envelope{msg: m, utf8: m.SMTPUTF8}
	if m.From != "" {
		a, err := ParseAddress(m.From)
		if err != nil {
			return nil, err
		}
		env.from = m.From
		env.utf8 = env.utf8 || !a.ASCII
	}
	if err := checkXtext("ENVID", m.EnvelopeID, 100); err != nil {
		return nil, err
	}
	switch m.Return {
	case "", smtp.DSNReturnFull, smtp.DSNReturnHeaders:
	default:
		return nil, fmt.Errorf("smtpclient: invalid DSN RET %q", m.Return)
	}
	seen := make(map[string]int, len(m.To))
	for i, r := range m.To {
		a, err := ParseAddress(r.Addr)
		if err != nil {
			return nil, err
		}
		key := a.Local + "@" + a.DomainKey()
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("smtpclient: recipient %q listed twice (positions %d and %d)", r.Addr, j, i)
		}
		seen[key] = i
		env.utf8 = env.utf8 || !a.ASCII
		if err := checkNotify(r.Notify); err != nil {
			return nil, err
		}
		if r.OriginalRecipient != "" {
			if _, err := ParseAddress(r.OriginalRecipient); err != nil {
				return nil, fmt.Errorf("smtpclient: ORCPT: %w", err)
			}
		}
		env.rcpts = append(env.rcpts, parsedRecipient{index: i, rcpt: r, addr: a})
	}
	return env, nil
}

// checkXtext refuses what could not be carried safely in an ESMTP parameter
// value: the value is encoded as xtext (RFC 3461 §4), but control
// characters and non-ASCII are refused outright.
func checkXtext(name, v string, max int) error {
	if len(v) > max {
		return fmt.Errorf("smtpclient: %s longer than %d characters", name, max)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("smtpclient: %s contains character 0x%02x", name, c)
		}
	}
	return nil
}

// checkNotify enforces RFC 3461 §4.1: NEVER alone, or any of SUCCESS,
// FAILURE, DELAY, each once.
func checkNotify(n []smtp.DSNNotify) error {
	seen := map[smtp.DSNNotify]bool{}
	for _, v := range n {
		switch smtp.DSNNotify(strings.ToUpper(string(v))) {
		case smtp.DSNNotifyNever:
			if len(n) != 1 {
				return errors.New("smtpclient: DSN NOTIFY=NEVER must stand alone")
			}
		case smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed:
		default:
			return fmt.Errorf("smtpclient: invalid DSN NOTIFY value %q", v)
		}
		if seen[v] {
			return fmt.Errorf("smtpclient: DSN NOTIFY value %q repeated", v)
		}
		seen[v] = true
	}
	return nil
}

// openBody returns a fresh reader over the body for one attempt.
func (m *Message) openBody() (io.ReadCloser, error) {
	if m.Body != nil {
		return io.NopCloser(io.NewSectionReader(m.Body, 0, m.Size)), nil
	}
	rc, err := m.Open()
	if err != nil {
		return nil, fmt.Errorf("smtpclient: open body: %w", err)
	}
	return rc, nil
}
