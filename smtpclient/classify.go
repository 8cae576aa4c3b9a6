package smtpclient

import (
	"context"
	"errors"

	"github.com/emersion/go-smtp"
)

// errLocal marks a failure on the client's side (body unreadable, token
// source failing).
var errLocal = errors.New("local failure")

// errAuthExchange marks a SASL exchange the mechanism could not complete
// (e.g. an OAuth provider's error challenge): the credentials' problem,
// not the host's.
var errAuthExchange = errors.New("SASL exchange failed")

// errPolicy marks a message the server cannot take as sent (an extension
// it lacks).
var errPolicy = errors.New("server lacks a needed extension")

// verdict is what a failure means for the recipients it concerns and for
// the host that produced it.
type verdict struct {
	// outcome for the recipients concerned, if no later host changes it.
	outcome Outcome
	// site: the failure is the host's (it counts against its circuit
	// breaker and is reported to the health checker as a failure).
	site bool
	// next: the recipients concerned may be offered to the next host in
	// this call. False for Unknown (never resent in the same call),
	// permanent rejections, and cancellation.
	next bool
	// excluded: neither success nor failure for the breaker (cancellation).
	excluded bool
}

// classify is the classification table of the design (DESIGN.md,
// "Classification"), in one place. It maps what happened at a stage of a
// session to the outcome for the recipients concerned and whether the host
// is at fault. Reply errors are *smtp.SMTPError; any other error at a
// session stage means the connection failed or timed out.
func classify(stage Stage, err error) verdict {
	if err == nil {
		return verdict{outcome: Delivered}
	}
	// The caller's context ended: nothing is the host's fault, and nothing
	// more is tried in this call.
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if stage == StageDataEnd {
			// Cut off while waiting for the reply to the final dot: the
			// server may have taken the message.
			return verdict{outcome: Unknown, excluded: true}
		}
		return verdict{outcome: Temporary, excluded: true}
	}

	if errors.Is(err, ErrClosed) {
		// The Client was closed while this Send waited for a connection:
		// our doing, not the host's, and no other host will do better.
		return verdict{outcome: Temporary, excluded: true}
	}

	if errors.Is(err, errLocal) && stage != StagePolicy {
		// Our side failed (the body could not be read): not the host's
		// fault, and another host would fare no better.
		return verdict{outcome: Temporary}
	}
	if errors.Is(err, errPolicy) {
		return verdict{outcome: Temporary, next: true}
	}

	if stage == StageResolve {
		return classifyResolve(err)
	}
	if errors.Is(err, errAuthExchange) {
		// Like a refused AUTH: another relay may take other credentials.
		return verdict{outcome: Temporary, next: true}
	}

	if stage == StagePolicy {
		switch {
		case errors.Is(err, ErrTLSRequired):
			// STARTTLS missing where required: as bad as a failed TLS
			// handshake; maybe stripped by an attacker (RFC 3207 §6).
			return verdict{outcome: Temporary, site: true, next: true}
		case errors.Is(err, ErrSMTPUTF8Required), errors.Is(err, ErrMessageTooBig):
			// This host can never take it; another host might. If none
			// does, the recipient ends permanent (RFC 6531 §3.2, RFC 1870
			// §6.1).
			return verdict{outcome: Permanent, next: true}
		default: // ErrAuthInClear, ErrAuthUnsupported: local configuration
			return verdict{outcome: Temporary, next: true}
		}
	}

	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		// No reply: refused, reset, timed out, TLS handshake failed.
		if stage == StageDataEnd {
			// The final dot was sent and the reply never came: the server
			// may have taken the message (RFC 5321 §4.5.3.2.6).
			return verdict{outcome: Unknown, site: true}
		}
		return verdict{outcome: Temporary, site: true, next: true}
	}

	// 421: the service is closing the channel, at any stage (RFC 5321
	// §3.8); a dropped connection counts the same.
	if se.Code == 421 {
		return verdict{outcome: Temporary, site: true, next: true}
	}
	switch stage {
	case StageGreeting, StageHello, StageStartTLS, StageReset, StageConnect:
		// The host refuses to talk to us (554 greeting, EHLO or STARTTLS
		// rejected): a site failure whatever the code.
		return verdict{outcome: Temporary, site: true, next: true}
	case StageAuth:
		// Credentials are configuration: another relay may accept them,
		// and the message must not be bounced for it.
		return verdict{outcome: Temporary, next: true}
	}

	switch se.Code / 100 {
	case 2, 3:
		// A positive reply where a failure was reported: treat as a
		// protocol error of the host.
		return verdict{outcome: Temporary, site: true, next: true}
	case 4:
		// 451 4.3.x: the server's own system is failing (RFC 3463 §3.4).
		site := se.Code == 451 && se.EnhancedCode[0] == 4 && se.EnhancedCode[1] == 3
		return verdict{outcome: Temporary, site: site, next: true}
	case 5:
		if stage == StageRcpt && se.Code == 552 {
			// "Too many recipients" at RCPT is temporary (RFC 5321
			// §4.5.3.1.10).
			return verdict{outcome: Temporary, next: true}
		}
		return verdict{outcome: Permanent}
	}
	return verdict{outcome: Temporary, site: true, next: true}
}

// classifyResolve handles the DNS rows of the table: a permanent answer
// (null MX, RFC 7505: 556 5.1.10; NXDOMAIN: 5.1.2) ends the recipients of
// that domain; a temporary one (SERVFAIL, timeout: 4.4.3) lets them go on
// to the fallback relays. Resolver errors say which through Temporary().
func classifyResolve(err error) verdict {
	var t interface{ Temporary() bool }
	if errors.As(err, &t) && !t.Temporary() {
		return verdict{outcome: Permanent}
	}
	return verdict{outcome: Temporary, next: true}
}
