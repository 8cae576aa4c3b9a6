package smtpclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/emersion/go-smtp"
)

type tempDNSError struct{ temporary bool }

func (e tempDNSError) Error() string   { return fmt.Sprintf("dns temporary=%v", e.temporary) }
func (e tempDNSError) Temporary() bool { return e.temporary }

// TestClassify walks every row of the design's classification table.
func TestClassify(t *testing.T) {
	t.Parallel()
	reply := func(code int, enh ...int) error {
		e := &smtp.SMTPError{Code: code, Message: "text"}
		if len(enh) == 3 {
			e.EnhancedCode = smtp.EnhancedCode{enh[0], enh[1], enh[2]}
		}
		return fmt.Errorf("wrapped: %w", e)
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	tlsErr := &tls.CertificateVerificationError{Err: errors.New("bad certificate")}

	tmp := verdict{outcome: Temporary, next: true}
	tmpSite := verdict{outcome: Temporary, site: true, next: true}
	perm := verdict{outcome: Permanent}
	permNext := verdict{outcome: Permanent, next: true}
	unknown := verdict{outcome: Unknown, site: true}
	cancelled := verdict{outcome: Temporary, excluded: true}

	tests := []struct {
		name  string
		stage Stage
		err   error
		want  verdict
	}{
		// Row: connect refused, timeout, TLS failure, greeting 421/554,
		// 421 any time, connection lost before DATA ends.
		{"connect refused", StageConnect, refused, tmpSite},
		{"connect timeout", StageConnect, timeout, tmpSite},
		{"greeting timeout", StageGreeting, timeout, tmpSite},
		{"greeting 421", StageGreeting, reply(421, 4, 3, 2), tmpSite},
		{"greeting 554", StageGreeting, reply(554, 5, 3, 2), tmpSite},
		{"EHLO 550", StageHello, reply(550), tmpSite},
		{"TLS handshake failure", StageStartTLS, tlsErr, tmpSite},
		{"STARTTLS 454", StageStartTLS, reply(454, 4, 7, 0), tmpSite},
		{"421 at MAIL", StageMail, reply(421, 4, 4, 2), tmpSite},
		{"421 at RCPT", StageRcpt, reply(421), tmpSite},
		{"421 at DATA", StageData, reply(421), tmpSite},
		{"421 after dot", StageDataEnd, reply(421, 4, 4, 2), tmpSite},
		{"lost at MAIL", StageMail, io.EOF, tmpSite},
		{"lost at RCPT", StageRcpt, io.ErrUnexpectedEOF, tmpSite},
		{"lost at DATA", StageData, timeout, tmpSite},
		{"lost writing body", StageBody, syscall.EPIPE, tmpSite},
		{"RSET fails on reused connection", StageReset, io.EOF, tmpSite},
		// Row: 4xx to MAIL/RCPT/DATA: temporary, not the host's fault,
		// except 451 4.3.x.
		{"450 at MAIL", StageMail, reply(450, 4, 2, 0), tmp},
		{"451 at RCPT", StageRcpt, reply(451, 4, 7, 1), tmp},
		{"452 at RCPT", StageRcpt, reply(452, 4, 2, 2), tmp},
		{"450 greylisted RCPT no enhanced", StageRcpt, reply(450), tmp},
		{"451 at DATA", StageData, reply(451, 4, 4, 1), tmp},
		{"451 after dot", StageDataEnd, reply(451, 4, 6, 0), tmp},
		{"451 4.3.0 at MAIL", StageMail, reply(451, 4, 3, 0), tmpSite},
		{"451 4.3.5 at DATA", StageDataEnd, reply(451, 4, 3, 5), tmpSite},
		// Row: 5xx to RCPT: permanent for that recipient.
		{"550 5.1.1 at RCPT", StageRcpt, reply(550, 5, 1, 1), perm},
		{"553 at RCPT", StageRcpt, reply(553, 5, 1, 3), perm},
		// Row: 5xx to MAIL or DATA: permanent for the transaction.
		{"550 at MAIL", StageMail, reply(550, 5, 7, 1), perm},
		{"554 at DATA", StageData, reply(554, 5, 5, 1), perm},
		{"554 after dot", StageDataEnd, reply(554, 5, 7, 1), perm},
		{"552 after dot (too big)", StageDataEnd, reply(552, 5, 3, 4), perm},
		// Row: 552 to RCPT is temporary (RFC 5321 §4.5.3.1.10).
		{"552 at RCPT", StageRcpt, reply(552, 5, 5, 3), tmp},
		// Row: lost after the final dot, before the reply: unknown.
		{"EOF after dot", StageDataEnd, io.EOF, unknown},
		{"timeout after dot", StageDataEnd, timeout, unknown},
		// Rows: DNS.
		{"null MX / NXDOMAIN", StageResolve, tempDNSError{false}, perm},
		{"SERVFAIL", StageResolve, tempDNSError{true}, tmp},
		{"DNS unknown error", StageResolve, errors.New("odd"), tmp},
		// Local policy against the host's capabilities.
		{"STARTTLS missing under encrypt", StagePolicy, ErrTLSRequired, tmpSite},
		{"AUTH in clear refused", StagePolicy, ErrAuthInClear, tmp},
		{"AUTH not offered", StagePolicy, ErrAuthUnsupported, tmp},
		{"SMTPUTF8 missing", StagePolicy, ErrSMTPUTF8Required, permNext},
		{"too big for SIZE", StagePolicy, ErrMessageTooBig, permNext},
		// AUTH rejected: configuration, not the site.
		{"AUTH 535", StageAuth, reply(535, 5, 7, 8), tmp},
		{"AUTH 454", StageAuth, reply(454, 4, 7, 0), tmp},
		{"SASL exchange the mechanism cannot finish", StageAuth, fmt.Errorf("%w: oauth error", errAuthExchange), tmp},
		{"AUTH connection lost", StageAuth, io.EOF, tmpSite},
		// The caller's context: excluded from the breaker, no next host.
		{"ctx cancelled at RCPT", StageRcpt, context.Canceled, cancelled},
		{"ctx deadline writing body", StageBody, fmt.Errorf("x: %w", context.DeadlineExceeded), cancelled},
		{"ctx deadline after dot", StageDataEnd, fmt.Errorf("x: %w", context.DeadlineExceeded), verdict{outcome: Unknown, excluded: true}},
		// Local failures.
		{"client closed while waiting for a connection", StageConnect, ErrClosed, cancelled},
		{"body unreadable", StageBody, fmt.Errorf("%w: disk", errLocal), verdict{outcome: Temporary}},
		{"token source down", StagePolicy, fmt.Errorf("%w: token", errLocal), tmp},
		{"extension missing", StageMail, fmt.Errorf("%w: 8BITMIME", errPolicy), tmp},
		{"success", StageDataEnd, nil, verdict{outcome: Delivered}},
	}
	for _, tt := range tests {
		if got := classify(tt.stage, tt.err); got != tt.want {
			t.Errorf("%s: classify(%v, %v) = %+v, want %+v", tt.name, tt.stage, tt.err, got, tt.want)
		}
	}
}
