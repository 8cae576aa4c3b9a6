package smtpwire

import (
	"context"
	"fmt"
	"io"

	"github.com/emersion/go-smtp"
)

// Recipient is one RCPT TO: an address and its parameters (nil for none).
type Recipient struct {
	Addr string
	Opts *smtp.RcptOptions
}

// RcptResult is the outcome of one RCPT TO.
type RcptResult struct {
	Recipient
	// Reply is the server's reply to this RCPT, nil if none arrived.
	Reply *Reply
	// Err is nil when the server accepted the recipient. Otherwise it is
	// the *smtp.SMTPError that refused it: the RCPT reply, or the MAIL
	// reply when MAIL was refused, or a 421 that ended the session; or the
	// *ConnError when the connection failed before the reply.
	Err error
}

// TxResult reports every reply of one mail transaction. Fields of steps
// that did not happen are nil.
//
// A recipient is delivered when its Err is nil and Final is a 2xx reply.
type TxResult struct {
	Mail *Reply       // reply to MAIL FROM
	Rcpt []RcptResult // one per recipient, in the order given
	Data *Reply       // reply to DATA (354 when the server took the body)
	// Final is the reply after the final dot. When every recipient was
	// refused but a pipelining server still answered DATA with 354, the
	// lone dot RFC 2920 §3.1 requires is sent and its reply is here too.
	Final *Reply
	// Pipelined is true when MAIL, RCPT and DATA went in one write (RFC
	// 2920); false when each waited for the previous reply.
	Pipelined bool
	// BodyBytes counts the bytes written for the message, dot-stuffing
	// and the terminating dot included.
	BodyBytes int64
}

// Accepted returns the number of recipients the server accepted at RCPT.
func (r *TxResult) Accepted() int {
	n := 0
	for _, rr := range r.Rcpt {
		if rr.Err == nil && rr.Reply != nil {
			n++
		}
	}
	return n
}

// Send runs one mail transaction: MAIL FROM, RCPT TO for each recipient,
// DATA and the body, streamed from body with dot-stuffing and CRLF
// normalisation (see the package documentation).
//
// When the server offers PIPELINING, MAIL, every RCPT and DATA are sent in
// one write (RFC 2920 §3.1), otherwise one at a time. The body is sent only
// if MAIL and at least one RCPT were accepted and DATA got 354. Each step
// has its timeout from Options.Timeouts (the body one per write); ctx bounds
// the whole call and cancelling it closes the connection.
//
// The result holds every reply received, also when an error is returned:
//
//   - nil: the server accepted the message (2xx after the dot) for the
//     recipients whose RcptResult.Err is nil;
//   - wrapping ErrInvalidInput or ErrNotAdvertised: nothing was sent;
//   - ErrNoRecipients: every RCPT was refused (see TxResult.Rcpt);
//   - *smtp.SMTPError: MAIL, DATA or the end of data was refused with that
//     reply, or the server sent 421 (the Conn is then closed);
//   - *ConnError: the connection failed; errors.Is(err,
//     ErrUnknownAfterDot) when that happened after the final dot was sent,
//     in which case the message may have been delivered;
//   - any other error: reading body failed; the transaction was aborted by
//     closing the connection, since SMTP has no other way to abandon DATA.
//
// Unless a *ConnError or a 421 was returned, the connection is ready for
// the next Send: a transaction left open by a refusal is ended with RSET.
func (c *Conn) Send(ctx context.Context, from string, mopts *smtp.MailOptions, rcpts []Recipient, body io.Reader) (*TxResult, error) {
	if len(rcpts) == 0 {
		return nil, invalid("no recipients")
	}
	if err := validateMail(from, mopts); err != nil {
		return nil, err
	}
	for i, r := range rcpts {
		if err := validateRcpt(i, r); err != nil {
			return nil, err
		}
	}
	if err := c.usable(ctx, StageMail); err != nil {
		return nil, err
	}
	if !c.helloDone {
		if err := c.Hello(ctx); err != nil {
			return nil, err
		}
	}
	utf8 := !isASCII(from)
	for _, r := range rcpts {
		utf8 = utf8 || !isASCII(r.Addr)
	}
	mailCmd, err := c.mailCommand(from, mopts, utf8)
	if err != nil {
		return nil, err
	}
	rcptCmds := make([]string, len(rcpts))
	for i, r := range rcpts {
		if rcptCmds[i], err = c.rcptCommand(r); err != nil {
			return nil, err
		}
	}

	res := &TxResult{Rcpt: make([]RcptResult, len(rcpts))}
	for i, r := range rcpts {
		res.Rcpt[i].Recipient = r
	}
	_, res.Pipelined = c.Extension("PIPELINING")

	stop := c.watch(ctx)
	defer stop()
	tx := &txState{c: c, ctx: ctx, res: res}
	return tx.run(mailCmd, rcptCmds, body)
}

type txState struct {
	c     *Conn
	ctx   context.Context
	res   *TxResult
	stage Stage
	// queuedReset: an RSET (ResetNext) went out with the first group and
	// its reply comes before MAIL's.
	queuedReset bool
}

// resetReply reads the reply to an RSET sent by ResetNext. Anything but
// 2xx ends the session: the commands pipelined behind it cannot be
// trusted to have run in a clean state.
func (tx *txState) resetReply() error {
	rep, err := tx.read(StageReset)
	if err != nil {
		_, err = tx.fail(err)
		return err
	}
	if rep.Code == 421 {
		_, err = tx.closing(rep)
		return err
	}
	if rep.Code/100 != 2 {
		_, err = tx.fail(protocolErr("RSET answered %d", rep.Code))
		return err
	}
	return nil
}

// fail records a connection failure for the recipients without a reply.
func (tx *txState) fail(err error) (*TxResult, error) {
	ce := tx.c.fail(tx.ctx, tx.stage, err)
	for i := range tx.res.Rcpt {
		if tx.res.Rcpt[i].Reply == nil && tx.res.Rcpt[i].Err == nil {
			tx.res.Rcpt[i].Err = ce
		}
	}
	return tx.res, ce
}

// closing handles a 421 at any point: the server is closing the session
// (RFC 5321 §3.8), so every recipient not yet refused gets it.
func (tx *txState) closing(rep *Reply) (*TxResult, error) {
	tx.c.checkClosing(rep)
	se := rep.SMTPError()
	for i := range tx.res.Rcpt {
		if tx.res.Rcpt[i].Err == nil {
			tx.res.Rcpt[i].Err = se
		}
	}
	return tx.res, se
}

func (tx *txState) read(stage Stage) (*Reply, error) {
	tx.stage = stage
	c := tx.c
	var timeout = c.t.Mail
	switch stage {
	case StageRcpt:
		timeout = c.t.Rcpt
	case StageData:
		timeout = c.t.DataInit
	case StageDataEnd:
		timeout = c.t.DataEnd
	case StageReset:
		timeout = c.t.Reset
	}
	c.deadline(tx.ctx, timeout)
	return c.readReply()
}

func (tx *txState) flush(stage Stage) error {
	tx.stage = stage
	return tx.c.bw.Flush()
}

// maxPipelineGroup bounds the commands written before their replies are
// read. A client that writes without reading can deadlock with a server
// whose replies fill the connection's buffers (RFC 2920 §3.1, "the client
// SMTP must not ... deadlock"); a hundred RCPT replies fit in any buffer.
const maxPipelineGroup = 100

func (tx *txState) run(mailCmd string, rcptCmds []string, body io.Reader) (*TxResult, error) {
	c, res := tx.c, tx.res
	n := len(rcptCmds)
	// Commands: 0 is MAIL, 1..n are RCPT, n+1 is DATA. Lockstep sends one
	// per group, PIPELINING up to maxPipelineGroup, DATA last (RFC 2920
	// §3.1: DATA ends a group).
	group := 1
	if res.Pipelined {
		group = maxPipelineGroup
	}
	var mailErr error
	accepted := 0
	if c.resetNext {
		c.resetNext = false
		tx.stage = StageReset
		c.deadline(tx.ctx, c.t.Reset)
		c.queue("RSET", "RSET")
		tx.queuedReset = res.Pipelined
		if !res.Pipelined {
			if err := tx.flush(StageReset); err != nil {
				return tx.fail(err)
			}
			if err := tx.resetReply(); err != nil {
				return res, err
			}
		}
	}
	for i := 0; i <= n+1; {
		j := min(i+group, n+2)
		switch i {
		case 0:
			tx.stage = StageMail
			c.deadline(tx.ctx, c.t.Mail)
		case n + 1:
			tx.stage = StageData
			c.deadline(tx.ctx, c.t.DataInit)
		default:
			tx.stage = StageRcpt
			c.deadline(tx.ctx, c.t.Rcpt)
		}
		for k := i; k < j; k++ {
			switch {
			case k == 0:
				c.queue(mailCmd, mailCmd)
			case k <= n:
				c.queue(rcptCmds[k-1], rcptCmds[k-1])
			default:
				c.queue("DATA", "DATA")
			}
		}
		if err := tx.flush(tx.stage); err != nil {
			return tx.fail(err)
		}
		if i == 0 && tx.queuedReset {
			tx.queuedReset = false
			if err := tx.resetReply(); err != nil {
				return res, err
			}
		}
		for k := i; k < j; k++ {
			stage := StageRcpt
			switch {
			case k == 0:
				stage = StageMail
			case k == n+1:
				stage = StageData
			}
			rep, err := tx.read(stage)
			if err != nil {
				return tx.fail(err)
			}
			if rep.Code == 421 {
				switch stage {
				case StageMail:
					res.Mail = rep
				case StageRcpt:
					res.Rcpt[k-1].Reply = rep
				default:
					res.Data = rep
				}
				return tx.closing(rep)
			}
			switch stage {
			case StageMail:
				res.Mail = rep
				if rep.Code/100 != 2 {
					if rep.Positive() {
						return tx.fail(protocolErr("unexpected reply %d to MAIL", rep.Code))
					}
					mailErr = rep.SMTPError()
				}
			case StageRcpt:
				r := &res.Rcpt[k-1]
				r.Reply = rep
				switch {
				case mailErr != nil:
					r.Err = mailErr
				case rep.Code/100 == 2:
					accepted++
				case rep.Positive():
					// Not an acceptance: the recipient fails with the
					// session, its odd reply kept for the record.
					res, err := tx.fail(protocolErr("unexpected reply %d to RCPT", rep.Code))
					r.Err = err
					return res, err
				default:
					r.Err = rep.SMTPError()
				}
			default:
				res.Data = rep
			}
		}
		i = j
		if i <= n+1 {
			// More to send: stop early when it cannot lead anywhere.
			if mailErr != nil {
				for k := range res.Rcpt {
					if res.Rcpt[k].Err == nil {
						res.Rcpt[k].Err = mailErr
					}
				}
				return res, mailErr // no transaction is open
			}
			if i == n+1 && accepted == 0 {
				return tx.abandon(ErrNoRecipients)
			}
		}
	}

	rep := res.Data
	tx.stage = StageData
	switch {
	case rep.Code != 354 && rep.Positive():
		return tx.fail(protocolErr("unexpected reply %d to DATA", rep.Code))
	case rep.Code != 354:
		switch {
		case mailErr != nil:
			return res, mailErr // no transaction is open
		case accepted == 0:
			return tx.abandon(ErrNoRecipients)
		}
		return tx.abandon(rep.SMTPError())
	case mailErr != nil || accepted == 0:
		// RFC 2920 §3.1: the server took DATA although nobody can receive
		// the message; end it with a lone dot, which it must refuse.
		return tx.loneDot(mailErr)
	}

	// Body.
	if err := tx.body(body); err != nil {
		return res, err
	}
	rep, err := tx.read(StageDataEnd)
	if err != nil {
		return tx.fail(err)
	}
	res.Final = rep
	if rep.Code == 421 {
		return tx.closing(rep)
	}
	if rep.Code/100 != 2 {
		if rep.Positive() {
			return tx.fail(protocolErr("unexpected reply %d after the final dot", rep.Code))
		}
		return res, rep.SMTPError()
	}
	return res, nil
}

// abandon ends a transaction the server still holds open with RSET and
// returns cause.
func (tx *txState) abandon(cause error) (*TxResult, error) {
	c := tx.c
	tx.stage = StageReset
	c.deadline(tx.ctx, c.t.Reset)
	c.queue("RSET", "RSET")
	if err := tx.flush(StageReset); err != nil {
		return tx.fail(err)
	}
	rep, err := tx.read(StageReset)
	tx.stage = StageReset
	if err != nil {
		return tx.fail(err)
	}
	if rep.Code == 421 {
		c.checkClosing(rep)
	}
	return tx.res, cause
}

func (tx *txState) loneDot(mailErr error) (*TxResult, error) {
	c := tx.c
	c.deadline(tx.ctx, c.t.DataEnd)
	c.queue(".", ".")
	if err := tx.flush(StageData); err != nil {
		return tx.fail(err)
	}
	rep, err := tx.read(StageData)
	if err != nil {
		return tx.fail(err)
	}
	tx.res.Final = rep
	c.checkClosing(rep)
	if mailErr != nil {
		return tx.res, mailErr
	}
	if rep.Code/100 == 2 {
		// Accepted a message without recipients: nothing sensible can
		// follow on this connection.
		return tx.fail(protocolErr("server accepted a message with no recipient"))
	}
	return tx.res, ErrNoRecipients
}

// body streams the message and the final dot.
func (tx *txState) body(body io.Reader) error {
	c := tx.c
	tx.stage = StageBody
	if c.bodyBuf == nil {
		c.bodyBuf = make([]byte, 32*1024)
	}
	if c.opts.Transcript != nil {
		defer func() { c.logf("C: <message, %d bytes>", tx.res.BodyBytes) }()
	}
	cd, _ := tx.ctx.Deadline()
	c.cw.blockTimeout, c.cw.ctxDeadline = c.t.DataBlock, cd
	defer func() { c.cw.blockTimeout = 0 }()
	dw := dotWriter{w: c.bw}
	defer func() { tx.res.BodyBytes = dw.n }()
	for {
		n, rerr := body.Read(c.bodyBuf)
		if n > 0 {
			if _, err := dw.Write(c.bodyBuf[:n]); err != nil {
				_, err = tx.fail(err)
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The message cannot be completed; closing is the only way to
			// abandon DATA without the server taking a truncated message.
			c.broken = fmt.Errorf("message body: %w", rerr)
			c.Close()
			return fmt.Errorf("smtpwire: reading the message body: %w", rerr)
		}
		if err := tx.ctx.Err(); err != nil {
			_, err = tx.fail(err)
			return err
		}
	}
	if err := dw.Close(); err != nil {
		_, err = tx.fail(err)
		return err
	}
	if err := c.bw.Flush(); err != nil {
		_, err = tx.fail(err)
		return err
	}
	return nil
}
