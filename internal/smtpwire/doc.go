// Package smtpwire is an SMTP client session layer (RFC 5321) that owns its
// deadlines and takes a context on every call, with PIPELINING (RFC 2920).
// It is the wire layer under package smtpclient, which adds routing,
// pooling, breakers, policy and classification.
//
// go-smtp's client has no context, does not pipeline and clears the
// connection deadline after each command; this package reuses go-smtp's
// types instead (*smtp.SMTPError for refusals, smtp.MailOptions,
// smtp.RcptOptions, smtp.EnhancedCode) and go-sasl's clients for AUTH.
//
// # Session
//
//	nc, _ := dialer.DialContext(ctx, "tcp", addr)
//	c, err := smtpwire.NewConn(ctx, nc, &smtpwire.Options{LocalName: "client.example.org"})
//	err = c.Hello(ctx)                      // EHLO, HELO on 500/502
//	err = c.StartTLS(ctx, tlsConfig)        // RFC 3207, then EHLO again
//	err = c.Auth(ctx, sasl.NewPlainClient("", user, pass)) // RFC 4954
//	res, err := c.Send(ctx, from, mailOpts, rcpts, body)
//	err = c.Reset(ctx)                       // RSET: reuse the connection
//	c.ResetNext()                            // or: RSET pipelined with the next Send
//	err = c.Quit(ctx)
//
// # Deadlines and cancellation
//
// Every command sets the connection deadline to the earlier of its timeout
// (Timeouts, RFC 5321 §4.5.3.2 defaults) and the context's deadline. While
// the body is written, each write gets the DataBlock timeout. When the
// context is cancelled during a call, the connection is closed at once
// (context.AfterFunc) and the call returns a *ConnError wrapping ctx.Err().
//
// # Errors
//
// A server reply that refuses something is an *smtp.SMTPError with the code,
// enhanced code (RFC 2034/3463) and text. A failure of the connection
// itself (I/O error, timeout, cancellation, malformed reply) is a
// *ConnError naming the Stage; the Conn is closed after it. A ConnError at
// StageDataEnd also matches ErrUnknownAfterDot: the message was fully sent
// but no reply arrived, so it may have been delivered (§4.5.3.2.6). A 421
// reply (§3.8) is returned as *smtp.SMTPError and closes the Conn. Input
// that cannot be sent safely (CR, LF or NUL anywhere, which would inject
// commands) fails with ErrInvalidInput before any I/O.
//
// # Message body
//
// The body is an io.Reader streamed with constant memory: bare LF and bare
// CR become CRLF (§2.3.8), a leading "." is doubled (§4.5.2), a missing
// final line ending is added, then "." ends the data.
//
// # Replies
//
// Replies are read with bounded memory: a line longer than
// Options.MaxLineLength or a reply of more than Options.MaxReplyLines lines
// is a protocol error, as is a code outside 2xx–5xx or a code that changes
// within a multi-line reply.
//
// # Concurrency
//
// A Conn serves one goroutine; only Close may be called concurrently, to
// abort. Nothing runs in the background.
package smtpwire
