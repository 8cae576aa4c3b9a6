package smtpclient

import (
	"context"
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/health"
)

// rcptReport is one recipient's part of a transaction.
type rcptReport struct {
	err   error  // nil: accepted by RCPT
	reply *Reply // the RCPT reply, when there was one
}

// txReport is what one MAIL/RCPT/DATA transaction gave.
type txReport struct {
	mailErr   error        // MAIL failed (reply or connection)
	mailReply *Reply       // the reply to MAIL, when there was one
	rcpts     []rcptReport // one per recipient offered, in order
	dataStage Stage        // StageData, StageBody or StageDataEnd when dataErr != nil
	dataErr   error
	final     *Reply // reply after the final dot
	// broken: the connection cannot be used any more.
	broken bool
}

// sessionEnd accumulates what a session's results mean for its host.
type sessionEnd struct {
	site     error // first site failure
	excluded bool  // the context ended
}

func (e *sessionEnd) note(v verdict, err error) {
	if v.site && e.site == nil {
		e.site = err
	}
	if v.excluded {
		e.excluded = true
	}
}

// attempt offers rcpts to one host and returns the recipients that may go
// on to the next host.
func (c *Client) attempt(ctx context.Context, s *sendState, t *target, rcpts []parsedRecipient) []parsedRecipient {
	key := t.key()
	if c.opts.Health != nil && !t.info.Relay && c.opts.Health.State(key) == health.Down {
		err := fmt.Errorf("%s: %w", key, ErrHostDown)
		s.lastSkip = err
		if c.hooks.HostSkipped != nil {
			c.hooks.HostSkipped(t.info, err)
		}
		return rcpts
	}
	done, err := c.br.allow(key)
	if err != nil {
		s.lastSkip = err
		if c.hooks.HostSkipped != nil {
			c.hooks.HostSkipped(t.info, err)
		}
		c.log.Debug("host skipped", "host", key, "err", err)
		return rcpts
	}
	s.attempted = true
	names := make([]string, len(rcpts))
	for i, p := range rcpts {
		names[i] = p.rcpt.Addr
		s.res.Recipients[p.index].Attempts++
	}
	if c.hooks.HostChosen != nil {
		c.hooks.HostChosen(t.info, names)
	}
	t.inflight.Add(1)
	defer t.inflight.Add(-1)
	start := c.now()

	var end sessionEnd
	next, reused, err := c.session(ctx, s, t, rcpts, &end)

	// Tell the breaker and the health checker what the host did.
	switch {
	case end.site != nil:
		done(fmt.Errorf("%w: %w", errSite, end.site))
		if c.opts.Health != nil {
			c.opts.Health.ReportFailure(key, end.site)
		}
	case end.excluded:
		done(errExcluded)
	default:
		done(nil)
		if c.opts.Health != nil {
			c.opts.Health.ReportSuccess(key)
		}
	}
	if err != nil {
		c.log.Warn("attempt failed", "host", key, "recipients", len(rcpts), "err", err)
	} else {
		c.log.Debug("attempt done", "host", key, "recipients", len(rcpts), "pending", len(next))
	}
	if c.hooks.AttemptDone != nil {
		c.hooks.AttemptDone(Attempt{Host: t.info, Recipients: names, Reused: reused, Duration: c.now().Sub(start), Err: err})
	}
	return next
}

// session runs the transactions for rcpts on one host: take or open a
// connection, check the message against the host's capabilities, send in
// batches of MaxRecipients. It returns the recipients that may go on, and
// the error that ended the session early, if any.
func (c *Client) session(ctx context.Context, s *sendState, t *target, rcpts []parsedRecipient, end *sessionEnd) (next []parsedRecipient, reused bool, err error) {
	key := t.key()
	// failAll applies one failure to every recipient not yet decided.
	// It returns the *Error the recipients got.
	failAll := func(ps []parsedRecipient, stage Stage, err error, r *Reply) error {
		v := classify(stage, err)
		end.note(v, err)
		e := &Error{Host: key, Stage: stage, Reply: r, Outcome: v.outcome, Err: err}
		for _, p := range ps {
			s.set(p, v.outcome, key, r, e)
			if v.next {
				next = append(next, p)
			}
		}
		return e
	}
	// batchErr is the *Error a recipient of batch got, for Hooks.AttemptDone.
	batchErr := func(batch []parsedRecipient, cause error) error {
		for _, p := range batch {
			if e := s.res.Recipients[p.index].Err; e != nil {
				return e
			}
		}
		return &Error{Host: key, Stage: StageMail, Outcome: Temporary, Err: cause}
	}

	pc, stage, err := c.getConn(ctx, t)
	if err != nil {
		return next, false, failAll(rcpts, stage, err, replyOf(err))
	}
	reused = pc.reused
	if perr, r := c.checkPolicy(pc.c, s.env); perr != nil {
		c.pool.put(key, pc)
		return next, reused, failAll(rcpts, StagePolicy, perr, r)
	}

	for start := 0; start < len(rcpts); start += c.opts.MaxRecipients {
		batch := rcpts[start:min(start+c.opts.MaxRecipients, len(rcpts))]
		rep, terr := c.transactOnce(ctx, s, t, &pc, batch)
		if terr != nil {
			// No connection for this batch: it and the rest fail alike.
			stage := StageConnect
			var se *stageError
			if errors.As(terr, &se) {
				stage, terr = se.stage, se.err
			}
			return next, reused, failAll(rcpts[start:], stage, terr, replyOf(terr))
		}
		next = append(next, c.applyReport(s, t, batch, rep, end)...)
		if rep.broken {
			c.pool.discard(key, pc)
			rest := rcpts[start+len(batch):]
			if len(rest) > 0 {
				failAll(rest, StageMail, ErrConnectionLost, nil)
			}
			return next, reused, batchErr(batch, firstErr(rep))
		}
		if ctx.Err() != nil {
			c.pool.discard(key, pc)
			rest := rcpts[start+len(batch):]
			if len(rest) > 0 {
				return next, reused, failAll(rest, StageMail, ctx.Err(), nil)
			}
			// The context ended after the last transaction ran: it
			// decided every recipient, so the attempt did not fail
			// (Attempt.Err is nil when the transaction ran).
			return next, reused, nil
		}
	}
	c.pool.put(key, pc)
	return next, reused, nil
}

// transactOnce runs one transaction. On a reused connection, a 421 or a
// lost connection before any recipient was accepted means the server had
// quietly dropped the idle session: the transaction is repeated once on a
// new connection, transparently (nothing was accepted, so nothing can be
// duplicated).
func (c *Client) transactOnce(ctx context.Context, s *sendState, t *target, pcp **pooled[*conn], batch []parsedRecipient) (*txReport, error) {
	pc := *pcp
	rep := c.tr.transact(ctx, pc.c, t, s.env, batch)
	if !pc.reused || !rep.broken || !staleBeforeData(rep) || ctx.Err() != nil {
		return rep, nil
	}
	c.log.Debug("pooled connection was stale, reconnecting", "host", t.key())
	// A new connection, not another idle one: with PIPELINING an idle
	// session is not checked before use, and the server that dropped this
	// one has likely dropped its siblings too.
	c.pool.redial(t.key(), pc)
	npc, stage, err := c.dialConn(ctx, t)
	if err != nil {
		return nil, &stageError{stage: stage, err: err}
	}
	*pcp = npc
	return c.tr.transact(ctx, npc.c, t, s.env, batch), nil
}

// staleBeforeData reports whether a broken transaction died before any
// recipient was accepted, with a 421 or a lost connection.
func staleBeforeData(rep *txReport) bool {
	if rep.mailErr != nil {
		return isSiteNoReplyOr421(rep.mailErr)
	}
	for _, r := range rep.rcpts {
		if r.err == nil {
			return false
		}
	}
	return len(rep.rcpts) > 0 && isSiteNoReplyOr421(rep.rcpts[0].err)
}

func isSiteNoReplyOr421(err error) bool {
	if errorsIsAny(err, context.Canceled, context.DeadlineExceeded) {
		return false
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code == 421
	}
	return true
}

// stageError carries the stage of a failure to open a connection.
type stageError struct {
	stage Stage
	err   error
}

func (e *stageError) Error() string { return e.stage.String() + ": " + e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

// applyReport turns a transaction's replies into recipient outcomes, using
// the classification table, and returns the recipients that may go on.
func (c *Client) applyReport(s *sendState, t *target, batch []parsedRecipient, rep *txReport, end *sessionEnd) (next []parsedRecipient) {
	key := t.key()
	fail := func(p parsedRecipient, stage Stage, err error, r *Reply) {
		v := classify(stage, err)
		end.note(v, err)
		s.set(p, v.outcome, key, r, &Error{Host: key, Stage: stage, Reply: r, Outcome: v.outcome, Err: err})
		if v.next {
			next = append(next, p)
		}
	}
	if rep.mailReply != nil && c.hooks.Reply != nil {
		c.hooks.Reply(t.info, StageMail, "", *rep.mailReply)
	}
	if rep.mailErr != nil {
		for _, p := range batch {
			fail(p, StageMail, rep.mailErr, rep.mailReply)
		}
		return next
	}
	var accepted []parsedRecipient
	for i, p := range batch {
		rr := rcptReport{err: ErrConnectionLost}
		if i < len(rep.rcpts) {
			rr = rep.rcpts[i]
		}
		if rr.reply != nil && c.hooks.Reply != nil {
			c.hooks.Reply(t.info, StageRcpt, p.rcpt.Addr, *rr.reply)
		}
		if rr.err != nil {
			fail(p, StageRcpt, rr.err, rr.reply)
			continue
		}
		accepted = append(accepted, p)
	}
	if len(accepted) == 0 {
		return next
	}
	if rep.dataErr != nil {
		r := replyOf(rep.dataErr)
		if r != nil && c.hooks.Reply != nil {
			c.hooks.Reply(t.info, rep.dataStage, "", *r)
		}
		for _, p := range accepted {
			fail(p, rep.dataStage, rep.dataErr, r)
		}
		return next
	}
	if rep.final != nil && c.hooks.Reply != nil {
		c.hooks.Reply(t.info, StageDataEnd, "", *rep.final)
	}
	for _, p := range accepted {
		s.set(p, Delivered, key, rep.final, nil)
	}
	return next
}

func firstErr(rep *txReport) error {
	switch {
	case rep.mailErr != nil:
		return rep.mailErr
	case rep.dataErr != nil:
		return rep.dataErr
	}
	for _, r := range rep.rcpts {
		if r.err != nil {
			return r.err
		}
	}
	return ErrConnectionLost
}

// replyOf extracts the server's reply from an error, if any.
func replyOf(err error) *Reply {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return &Reply{Code: se.Code, Enhanced: se.EnhancedCode, Message: se.Message}
	}
	return nil
}

// checkPolicy checks the message against what the server offers, before
// anything is sent: SMTPUTF8 (RFC 6531 §3.4) and SIZE (RFC 1870 §6.1).
func (c *Client) checkPolicy(cn *conn, env *envelope) (error, *Reply) {
	if env.utf8 {
		if _, ok := cn.w.Extension("SMTPUTF8"); !ok {
			return ErrSMTPUTF8Required, &Reply{Code: 553, Enhanced: smtp.EnhancedCode{5, 6, 7},
				Message: "non-ASCII address and the server does not offer SMTPUTF8"}
		}
	}
	if max, ok := cn.w.MaxMessageSize(); ok && max > 0 && env.msg.Size > max {
		return fmt.Errorf("%w (%d > %d octets)", ErrMessageTooBig, env.msg.Size, max),
			&Reply{Code: 552, Enhanced: smtp.EnhancedCode{5, 3, 4}, Message: "message too big for the server's SIZE"}
	}
	return nil, nil
}

// getConn returns a ready session for t: a pooled one that answers RSET,
// or a new one (connected, greeted, EHLO, STARTTLS and AUTH as the policy
// says). On failure it returns the stage where it failed.
func (c *Client) getConn(ctx context.Context, t *target) (*pooled[*conn], Stage, error) {
	key := t.key()
	for {
		pc, err := c.pool.acquire(ctx, key)
		if err != nil {
			return nil, StageConnect, err
		}
		if pc == nil {
			break
		}
		// RSET proves the idle session is alive and clears any state
		// (RFC 5321 §4.1.1.5); a failure just means it went stale. With
		// PIPELINING it travels with the transaction, and transactOnce
		// handles a stale session.
		if err := c.tr.reset(ctx, pc.c); err == nil {
			return pc, StageNone, nil
		} else {
			c.log.Debug("idle connection failed RSET", "host", key, "err", err)
		}
		c.pool.discard(key, pc)
		if ctx.Err() != nil {
			return nil, StageReset, ctx.Err()
		}
	}
	return c.dialConn(ctx, t)
}

// dialConn opens a new session for t in a pool slot already taken for it.
func (c *Client) dialConn(ctx context.Context, t *target) (*pooled[*conn], Stage, error) {
	key := t.key()
	cn, stage, err := c.tr.dial(ctx, t)
	if c.hooks.Connected != nil {
		c.hooks.Connected(t.info, err)
	}
	if err != nil {
		c.pool.dialFailed(key)
		return nil, stage, err
	}
	return c.pool.opened(key, cn), StageNone, nil
}
