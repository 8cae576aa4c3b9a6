package smtpclient

import (
	"context"
	"crypto/tls"
)

// wire is the part of an open SMTP session the client reads between
// transactions.
type wire interface {
	// Extension returns the parameter of an EHLO keyword and whether the
	// server offers it.
	Extension(name string) (string, bool)
	// MaxMessageSize returns the SIZE limit (RFC 1870), when announced.
	MaxMessageSize() (int64, bool)
	// TLSConnectionState returns the TLS state when TLS is active.
	TLSConnectionState() (tls.ConnectionState, bool)
}

// conn is a pooled session.
type conn struct {
	w wire
	// quit ends the session politely (QUIT, bounded) and closes it.
	quit func() error
}

func (c *conn) Close() error { return c.quit() }

// transport opens sessions and runs transactions on them. The client's
// routing, pooling and classification sit above it.
type transport interface {
	// dial connects to t and readies a session (greeting, EHLO, STARTTLS
	// and AUTH per t's policy); on failure it says at which stage.
	dial(ctx context.Context, t *target) (*conn, Stage, error)
	// transact runs MAIL, RCPT for each recipient, DATA and the body.
	transact(ctx context.Context, cn *conn, t *target, env *envelope, rcpts []parsedRecipient) *txReport
	// reset sends RSET on a reused session, or arranges for it to lead the
	// next transaction (pipelined); a failure then shows in transact as a
	// broken transaction before any recipient was accepted.
	reset(ctx context.Context, cn *conn) error
}
