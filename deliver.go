package hamail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/mxresolve"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/smtpclient"
)

// sender is what the deliverer needs of *smtpclient.Client.
type sender interface {
	Send(ctx context.Context, m *smtpclient.Message) (*smtpclient.Result, error)
}

var _ sender = (*smtpclient.Client)(nil)

// deliverer is the queue.Deliverer of a Mailer: it hands one queued attempt
// to the SMTP client and translates the per-recipient results back.
type deliverer struct {
	client sender
	// hardStop, when set, is the only cancellation the attempt obeys
	// besides its deadline: the runner cancels its context as soon as a
	// graceful shutdown begins, and the attempts in flight should still
	// finish (see Mailer.Shutdown).
	hardStop context.Context
}

var _ queue.Deliverer = (*deliverer)(nil)

// Deliver implements queue.Deliverer.
func (a *deliverer) Deliver(ctx context.Context, d *queue.Delivery) ([]queue.RecipientResult, error) {
	if a.hardStop != nil {
		var cancel context.CancelFunc
		ctx, cancel = detach(ctx, a.hardStop)
		defer cancel()
	}
	results := make([]queue.RecipientResult, len(d.Recipients))
	env := &d.Envelope
	if env.From != "" {
		if _, err := smtpclient.ParseAddress(env.From); err != nil {
			// A reverse path no server can be given: every recipient
			// fails for good (RFC 3463 X.1.7, bad sender's address).
			for i := range results {
				results[i] = queue.RecipientResult{Outcome: queue.OutcomePermanent,
					Reply: queue.Reply{Code: 553, Enhanced: "5.1.7", Text: err.Error()}}
			}
			return results, nil
		}
	}
	msg := &smtpclient.Message{
		From:       env.From,
		EnvelopeID: env.EnvID,
		Return:     dsnReturn(env.Ret),
		SMTPUTF8:   env.SMTPUTF8,
	}
	if d.Body != nil {
		msg.Body, msg.Size = d.Body, d.Body.Size()
		eight, err := has8bit(d.Body)
		if err != nil {
			return nil, fmt.Errorf("hamail: reading the body of %s: %w", d.ID, err)
		}
		msg.EightBit = eight
	}
	// Recipients no server may be given fail for good here (RFC 3463
	// X.1.3, bad destination mailbox syntax); the others are sent.
	var sent []int
	for i, r := range d.Recipients {
		if _, err := smtpclient.ParseAddress(r.Address); err != nil {
			results[i] = queue.RecipientResult{Outcome: queue.OutcomePermanent,
				Reply: queue.Reply{Code: 553, Enhanced: "5.1.3", Text: err.Error()}}
			continue
		}
		sent = append(sent, i)
		msg.To = append(msg.To, smtpRecipient(r))
	}
	if len(sent) == 0 {
		return results, nil
	}
	res, err := a.client.Send(ctx, msg)
	for j, i := range sent {
		if res != nil && j < len(res.Recipients) {
			results[i] = queueResult(res.Recipients[j])
			continue
		}
		// Nothing was attempted for it (no host, closed client, a refused
		// message): a temporary failure, never a guess at delivery.
		results[i] = queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: localReply(queue.OutcomeTemporary, err)}
	}
	return results, err
}

// detach returns a context that keeps ctx's deadline and values but ends only
// at that deadline or when stop ends, not when ctx is cancelled.
func detach(ctx, stop context.Context) (context.Context, context.CancelFunc) {
	dctx := context.WithoutCancel(ctx)
	var cancel context.CancelFunc
	if dl, ok := ctx.Deadline(); ok {
		dctx, cancel = context.WithDeadline(dctx, dl)
	} else {
		dctx, cancel = context.WithCancel(dctx)
	}
	unhook := context.AfterFunc(stop, cancel)
	return dctx, func() {
		unhook()
		cancel()
	}
}

// smtpRecipient converts a queued recipient with its DSN parameters.
func smtpRecipient(r queue.Recipient) smtpclient.Recipient {
	out := smtpclient.Recipient{Addr: r.Address}
	if r.Notify&queue.NotifyNever != 0 {
		out.Notify = []smtp.DSNNotify{smtp.DSNNotifyNever}
	} else {
		if r.Notify&queue.NotifySuccess != 0 {
			out.Notify = append(out.Notify, smtp.DSNNotifySuccess)
		}
		if r.Notify&queue.NotifyFailure != 0 {
			out.Notify = append(out.Notify, smtp.DSNNotifyFailure)
		}
		if r.Notify&queue.NotifyDelay != 0 {
			out.Notify = append(out.Notify, smtp.DSNNotifyDelayed)
		}
	}
	// ORCPT is "addr-type;address" (RFC 3461 §4.2). smtpclient writes the
	// address as rfc822, or utf-8 when it is not ASCII (RFC 6533 §3), so
	// only those types can be passed on without changing their meaning.
	if typ, addr, ok := strings.Cut(r.ORcpt, ";"); ok && addr != "" &&
		(strings.EqualFold(typ, "rfc822") || strings.EqualFold(typ, "utf-8")) {
		out.OriginalRecipient = addr
	}
	return out
}

func dsnReturn(r queue.Ret) smtp.DSNReturn {
	switch r {
	case queue.RetFull:
		return smtp.DSNReturnFull
	case queue.RetHeaders:
		return smtp.DSNReturnHeaders
	default:
		return ""
	}
}

// queueResult translates one smtpclient result. A recipient whose session
// ended while waiting for the reply to the final dot may have been
// delivered (RFC 5321 §4.5.3.2.6): it is OutcomeUnknown, never temporary,
// so that the queue flags the retry as a possible duplicate.
func queueResult(rr smtpclient.RecipientResult) queue.RecipientResult {
	out := queue.RecipientResult{Host: rr.Host}
	switch rr.Outcome {
	case smtpclient.Delivered:
		out.Outcome = queue.OutcomeDelivered
	case smtpclient.Permanent:
		out.Outcome = queue.OutcomePermanent
	case smtpclient.Unknown:
		out.Outcome = queue.OutcomeUnknown
	default:
		out.Outcome = queue.OutcomeTemporary
	}
	var se *smtpclient.Error
	errors.As(rr.Err, &se)
	if out.Outcome == queue.OutcomeTemporary && se != nil && se.Stage == smtpclient.StageDataEnd {
		out.Outcome = queue.OutcomeUnknown
	}
	reply := rr.Reply
	if reply == nil && se != nil {
		reply = se.Reply
	}
	if reply != nil {
		out.Reply = queue.Reply{Code: reply.Code, Enhanced: enhanced(reply.Enhanced), Text: reply.Message}
	} else {
		out.Reply = localReply(out.Outcome, rr.Err)
	}
	return out
}

// enhanced writes an RFC 3463 status code, or "" when there is none.
func enhanced(e smtp.EnhancedCode) string {
	if (e[0] != 2 && e[0] != 4 && e[0] != 5) || e[1] < 0 || e[2] < 0 {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2])
}

// localReply describes a failure no server replied to, with the enhanced
// status code a notice needs (RFC 3463 §3.5, §3.6, §3.8; the codes Postfix
// uses for the same cases).
func localReply(o queue.Outcome, err error) queue.Reply {
	text := "no host could be tried"
	if err != nil {
		text = err.Error()
	}
	if o == queue.OutcomeUnknown {
		return queue.Reply{Enhanced: "4.4.2", Text: "connection lost after the final dot, before the reply; the message may have been delivered: " + text}
	}
	var me *mxresolve.Error
	if errors.As(err, &me) {
		e := me.EnhancedCode
		return queue.Reply{Code: me.Code, Enhanced: fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2]), Text: text}
	}
	var se *smtpclient.Error
	stage := smtpclient.StageNone
	if errors.As(err, &se) {
		stage = se.Stage
	}
	permanent := o == queue.OutcomePermanent
	switch {
	case errors.Is(err, smtpclient.ErrMessageTooBig):
		return queue.Reply{Enhanced: class(permanent) + ".3.4", Text: text}
	case errors.Is(err, smtpclient.ErrSMTPUTF8Required):
		return queue.Reply{Enhanced: class(permanent) + ".6.7", Text: text}
	case errors.Is(err, smtpclient.ErrTLSRequired), errors.Is(err, smtpclient.ErrAuthInClear), errors.Is(err, smtpclient.ErrAuthUnsupported):
		return queue.Reply{Enhanced: class(permanent) + ".7.4", Text: text}
	case permanent:
		return queue.Reply{Enhanced: "5.0.0", Text: text}
	case errors.Is(err, smtpclient.ErrNoHostAvailable), errors.Is(err, smtpclient.ErrNoRoute), stage == smtpclient.StageConnect, err == nil:
		// No answer from any host.
		return queue.Reply{Enhanced: "4.4.1", Text: text}
	default:
		// A connection that broke or timed out, or the attempt's time
		// running out.
		return queue.Reply{Enhanced: "4.4.2", Text: text}
	}
}

func class(permanent bool) string {
	if permanent {
		return "5"
	}
	return "4"
}

// has8bit reports whether the body holds an octet above 127, which needs
// BODY=8BITMIME (RFC 6152) when the server offers it.
func has8bit(b queue.Body) (bool, error) {
	var buf [32 * 1024]byte
	size := b.Size()
	for off := int64(0); off < size; {
		n, err := b.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		for _, c := range buf[:n] {
			if c >= 0x80 {
				return true, nil
			}
		}
		off += int64(n)
		if err != nil && !(errors.Is(err, io.EOF) && off >= size) {
			return false, err
		}
		if n == 0 && err == nil {
			return false, io.ErrNoProgress
		}
	}
	return false, nil
}
