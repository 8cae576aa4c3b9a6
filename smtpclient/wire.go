package smtpclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/internal/smtpwire"
)

var _ wire = (*smtpwire.Conn)(nil)

// wireTransport runs sessions with internal/smtpwire, which owns the
// deadlines, the context, PIPELINING and the streamed, dot-stuffed body.
type wireTransport struct{ c *Client }

var _ transport = wireTransport{}

func (wt wireTransport) options(t *target) *smtpwire.Options {
	c := wt.c
	tm := c.opts.Timeouts
	o := &smtpwire.Options{
		LocalName: c.opts.LocalName,
		Timeouts: smtpwire.Timeouts{
			Greeting: tm.Greeting, Hello: tm.Hello, StartTLS: tm.StartTLS, Auth: tm.Auth,
			Mail: tm.Mail, Rcpt: tm.Rcpt, DataInit: tm.DataInit, DataBlock: tm.DataBlock,
			DataEnd: tm.DataEnd, Reset: tm.Reset, Quit: tm.Quit,
		},
	}
	if c.opts.Transcript != nil {
		// smtpwire already replaces AUTH arguments by "<redacted>".
		o.Transcript = &lineWriter{c: c, prefix: t.key() + " "}
	}
	return o
}

func (wt wireTransport) dial(ctx context.Context, t *target) (*conn, Stage, error) {
	c := wt.c
	dctx, cancel := context.WithTimeout(ctx, c.opts.Timeouts.Connect)
	nc, err := c.dialer.DialContext(dctx, "tcp", t.info.Addr)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			// Our connect timeout, not the caller's context: a failure of
			// the host, which the next host may not share. (net.Dialer
			// already says "i/o timeout"; other dialers pass the context's
			// error through.)
			err = &connectTimeoutError{addr: t.info.Addr, after: c.opts.Timeouts.Connect, cause: err.Error()}
		}
		return nil, StageConnect, err
	}
	if t.implicitTLS {
		// The handshake happens in NewConn, bounded by the greeting
		// timeout (RFC 8314 §3.3).
		nc = tls.Client(nc, t.tlsConfig)
	}
	w, err := smtpwire.NewConn(ctx, nc, wt.options(t))
	if err != nil {
		return nil, StageGreeting, err
	}
	quit := func() error {
		qctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeouts.Quit)
		defer cancel()
		w.Quit(qctx)
		return w.Close()
	}
	giveUp := func(stage Stage, err error) (*conn, Stage, error) {
		var ce *smtpwire.ConnError
		if errors.As(err, &ce) || ctx.Err() != nil {
			w.Close()
		} else {
			quit()
		}
		return nil, stage, err
	}
	if err := w.Hello(ctx); err != nil {
		return giveUp(StageHello, err)
	}
	if !t.implicitTLS && t.policy != TLSNone {
		if _, ok := w.Extension("STARTTLS"); ok {
			if err := w.StartTLS(ctx, t.tlsConfig); err != nil {
				return giveUp(StageStartTLS, err)
			}
		} else if t.policy == TLSEncrypt || t.policy == TLSVerify {
			// RFC 3207 §4: a client that requires TLS must not go on
			// without it; a missing STARTTLS may have been stripped.
			return giveUp(StagePolicy, ErrTLSRequired)
		}
	}
	if st, ok := w.TLSConnectionState(); ok && c.hooks.TLS != nil {
		c.hooks.TLS(t.info, st)
	}
	if t.auth != nil {
		if _, tlsOn := w.TLSConnectionState(); !tlsOn && !t.insecure {
			return giveUp(StagePolicy, ErrAuthInClear)
		}
		param, ok := w.Extension("AUTH")
		if !ok || !hasWord(param, string(t.auth.Mechanism)) {
			return giveUp(StagePolicy, fmt.Errorf("%w (%s; offered: %q)", ErrAuthUnsupported, t.auth.Mechanism, param))
		}
		sc, err := saslClient(ctx, t.auth, t.info.Addr)
		if err != nil {
			return giveUp(StagePolicy, fmt.Errorf("%w: %w", errLocal, err))
		}
		if err := w.Auth(ctx, sc); err != nil {
			var ce *smtpwire.ConnError
			var se *smtp.SMTPError
			if !errors.As(err, &ce) && !errors.As(err, &se) && !errors.Is(err, smtpwire.ErrProtocol) && ctx.Err() == nil {
				err = fmt.Errorf("%w: %w", errAuthExchange, err)
			}
			return giveUp(StageAuth, err)
		}
	}
	return &conn{w: w, quit: quit}, StageNone, nil
}

func hasWord(list, w string) bool {
	for f := range strings.FieldsSeq(list) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}

func (wt wireTransport) reset(ctx context.Context, cn *conn) error {
	w := cn.w.(*smtpwire.Conn)
	if _, ok := w.Extension("PIPELINING"); ok {
		// RSET may lead a pipelined group (RFC 2920 §3.1), saving a round
		// trip per reused session. Its reply is read before MAIL's, so a
		// connection that died while idle fails there, before anything of
		// the transaction can count, and transactOnce reconnects once.
		w.ResetNext()
		return nil
	}
	return w.Reset(ctx)
}

func (wt wireTransport) transact(ctx context.Context, cn *conn, t *target, env *envelope, batch []parsedRecipient) *txReport {
	w := cn.w.(*smtpwire.Conn)
	m := env.msg
	mopts := &smtp.MailOptions{Size: m.Size, UTF8: env.utf8, Return: m.Return, EnvelopeID: m.EnvelopeID}
	if m.EightBit {
		// Without 8BITMIME the parameter cannot be sent; the body goes as
		// is, as Postfix does by default.
		if _, ok := w.Extension("8BITMIME"); ok {
			mopts.Body = smtp.Body8BitMIME
		}
	}
	rcpts := make([]smtpwire.Recipient, len(batch))
	for i, p := range batch {
		rcpts[i].Addr = p.rcpt.Addr
		if len(p.rcpt.Notify) > 0 || p.rcpt.OriginalRecipient != "" {
			o := &smtp.RcptOptions{Notify: p.rcpt.Notify}
			if p.rcpt.OriginalRecipient != "" {
				o.OriginalRecipient = p.rcpt.OriginalRecipient
				o.OriginalRecipientType = smtp.DSNAddressTypeRFC822
				if !isASCII(p.rcpt.OriginalRecipient) {
					o.OriginalRecipientType = smtp.DSNAddressTypeUTF8
				}
			}
			rcpts[i].Opts = o
		}
	}
	body, err := m.openBody()
	if err != nil {
		return &txReport{mailErr: fmt.Errorf("%w: %w", errLocal, err)}
	}
	defer body.Close()
	res, err := w.Send(ctx, env.from, mopts, rcpts, body)
	return wireReport(res, err, len(batch))
}

// wireReport translates smtpwire's transaction result into the client's.
func wireReport(res *smtpwire.TxResult, err error, n int) *txReport {
	rep := &txReport{}
	var ce *smtpwire.ConnError
	isConn := errors.As(err, &ce)
	var se *smtp.SMTPError
	isReply := errors.As(err, &se)
	rep.broken = isConn || (isReply && se.Code == 421)
	if res == nil {
		// Nothing was sent (invalid input, extension missing) or the
		// connection was already unusable.
		switch {
		case isConn || isReply:
			rep.mailErr = err
		case errors.Is(err, smtpwire.ErrNotAdvertised):
			rep.mailErr = fmt.Errorf("%w: %w", errPolicy, err)
		default:
			rep.mailErr = fmt.Errorf("%w: %w", errLocal, err)
		}
		return rep
	}
	rep.mailReply = wireReply(res.Mail)
	if res.Mail == nil || res.Mail.Code/100 != 2 {
		rep.mailErr = err
		if res.Mail != nil {
			rep.mailErr = res.Mail.SMTPError()
		}
		if rep.mailErr == nil {
			rep.mailErr = ErrConnectionLost
		}
		return rep
	}
	accepted := 0
	rep.rcpts = make([]rcptReport, n)
	for i := range n {
		if i >= len(res.Rcpt) {
			rep.rcpts[i] = rcptReport{err: ErrConnectionLost}
			continue
		}
		rr := res.Rcpt[i]
		rep.rcpts[i] = rcptReport{err: rr.Err, reply: wireReply(rr.Reply)}
		if rr.Err == nil && rr.Reply == nil {
			// No reply and no error: the transaction ended before it.
			rep.rcpts[i].err = ErrConnectionLost
		}
		if rep.rcpts[i].err == nil {
			accepted++
		}
	}
	if accepted == 0 {
		return rep
	}
	switch {
	case err == nil:
		rep.final = wireReply(res.Final)
	case isConn:
		switch ce.Stage {
		case smtpwire.StageDataEnd:
			rep.dataStage = StageDataEnd
		case smtpwire.StageBody:
			rep.dataStage = StageBody
		default:
			rep.dataStage = StageData
		}
		rep.dataErr = err
	case isReply:
		rep.dataStage = StageData
		if res.Final != nil {
			rep.dataStage = StageDataEnd
		}
		rep.dataErr = err
	default:
		// Reading the body failed; smtpwire closed the connection, as
		// SMTP has no other way to abandon DATA.
		rep.dataStage = StageBody
		rep.dataErr = fmt.Errorf("%w: reading the body: %w", errLocal, err)
		rep.broken = true
	}
	return rep
}

func wireReply(r *smtpwire.Reply) *Reply {
	if r == nil {
		return nil
	}
	return &Reply{Code: r.Code, Enhanced: r.EnhancedCode, Message: r.Message}
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

var _ io.Closer = (*conn)(nil)

// connectTimeoutError is Timeouts.Connect running out. It deliberately does
// not wrap context.DeadlineExceeded, which means the caller's context ended.
type connectTimeoutError struct {
	addr  string
	after time.Duration
	cause string
}

func (e *connectTimeoutError) Error() string {
	return fmt.Sprintf("connect to %s: no connection after %v (%s)", e.addr, e.after, e.cause)
}

// Timeout and Temporary make it a net.Error, like a dial timeout.
func (e *connectTimeoutError) Timeout() bool   { return true }
func (e *connectTimeoutError) Temporary() bool { return true }

var _ net.Error = (*connectTimeoutError)(nil)
