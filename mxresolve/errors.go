package mxresolve

import (
	"errors"
	"fmt"

	"github.com/miekg/dns"
)

// Sentinel errors carried in Error.Err; test them with errors.Is.
var (
	// ErrNullMX: the domain publishes a null MX (RFC 7505 §3): it accepts
	// no mail. Permanent, 556 5.1.10.
	ErrNullMX = errors.New("domain does not accept mail (null MX)")
	// ErrNoSuchDomain: the domain does not exist (NXDOMAIN, RFC 1035
	// §4.1.1). Permanent, 550 5.1.2.
	ErrNoSuchDomain = errors.New("no such domain")
	// ErrInvalidDomain: the name is not a valid domain name or is an
	// address literal. Permanent, 550 5.1.2.
	ErrInvalidDomain = errors.New("invalid domain name")
	// ErrNoAddress: no mail exchanger of the domain has an address.
	// Permanent (550 5.4.4) when every look-up answered; temporary
	// (451 4.4.3) when one of them failed.
	ErrNoAddress = errors.New("no mail exchanger has an address")
	// ErrLoopsBack: the best remaining mail exchanger is this host itself
	// (RFC 5321 §5.1). Permanent, 550 5.4.6.
	ErrLoopsBack = errors.New("mail for the domain loops back to this host")
	// ErrCNAMELoop: a CNAME chain loops or is longer than allowed.
	// Temporary, 451 4.4.3.
	ErrCNAMELoop = errors.New("CNAME chain loops or is too long")
	// ErrServerFailure: every nameserver answered with SERVFAIL, REFUSED
	// or another failure code, or with a malformed reply. Temporary,
	// 451 4.4.3.
	ErrServerFailure = errors.New("nameserver failure")
	// ErrNoAnswer: no nameserver answered in time (timeouts, unreachable
	// servers). Temporary, 451 4.4.3.
	ErrNoAnswer = errors.New("no answer from any nameserver")
	// ErrNoNameservers: no nameserver is configured, or the resolver
	// configuration could not be read. Temporary, 451 4.4.3.
	ErrNoNameservers = errors.New("no nameserver configured")
)

// Error is the error returned by Resolve. It carries the class of the
// failure as an SMTP reply code (4xx temporary, 5xx permanent) and an
// enhanced status code (RFC 3463), the domain and the cause.
//
// A context that ends during Resolve gives a temporary Error whose cause
// wraps the context's error, so errors.Is(err, context.Canceled) holds.
type Error struct {
	Domain       string
	Code         int    // SMTP reply code: 451, 550 or 556
	EnhancedCode [3]int // RFC 3463: {4,4,3}, {5,1,2}, {5,1,10}, {5,4,4}, {5,4,6}
	Err          error  // the cause; wraps one of the sentinel errors above
}

func (e *Error) Error() string {
	return fmt.Sprintf("mxresolve: %s: %d %d.%d.%d %v", e.Domain, e.Code,
		e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether trying again later may succeed.
func (e *Error) Temporary() bool { return e.Code >= 400 && e.Code < 500 }

// Permanent reports whether trying again will not help.
func (e *Error) Permanent() bool { return e.Code >= 500 && e.Code < 600 }

// IsTemporary reports whether err is or wraps an *Error that is temporary.
func IsTemporary(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Temporary()
}

// IsPermanent reports whether err is or wraps an *Error that is permanent.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent()
}

func temporary(domain string, err error) *Error {
	return &Error{Domain: domain, Code: 451, EnhancedCode: [3]int{4, 4, 3}, Err: err}
}

func permanent(domain string, code int, enh [3]int, err error) *Error {
	return &Error{Domain: domain, Code: code, EnhancedCode: enh, Err: err}
}

// rcodeError is a reply code that made a nameserver unusable for a query.
type rcodeError struct {
	server string
	rcode  int
}

func (e *rcodeError) Error() string {
	if e.server == "" {
		return "reply code " + rcodeString(e.rcode)
	}
	return fmt.Sprintf("nameserver %s answered %s", e.server, rcodeString(e.rcode))
}

func (e *rcodeError) Unwrap() error { return ErrServerFailure }

func rcodeString(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rcode)
}
