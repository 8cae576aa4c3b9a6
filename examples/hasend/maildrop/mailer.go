package maildrop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hamail/hamail"
	"github.com/hamail/hamail/queue"
)

// Sender is the part of *hamail.Mailer that picking up needs.
type Sender interface {
	Send(ctx context.Context, m *hamail.Message) (string, error)
}

var _ Sender = (*hamail.Mailer)(nil)

// MailerSubmitter submits picked-up files to a Mailer, under the file's key:
// a Mailer whose store remembers keys (bbolt.Options.KeyRetention) then
// queues a file submitted twice only once. A message the Mailer refuses as
// invalid (hamail.ErrInvalidMessage, a bad address for one) is reported as
// ErrRejected, so that Pickup sets it aside instead of retrying it ahead of
// every later file.
func MailerSubmitter(m Sender) Submitter {
	return SubmitFunc(func(ctx context.Context, key string, env Envelope, body io.Reader) error {
		msg, err := env.message(body)
		if err != nil {
			return err
		}
		msg.Key = key
		_, err = m.Send(ctx, msg)
		if errors.Is(err, hamail.ErrInvalidMessage) {
			return fmt.Errorf("%w: %w", ErrRejected, err)
		}
		return err
	})
}

// message converts the envelope; its fields were checked by readHeader.
func (env Envelope) message(body io.Reader) (*hamail.Message, error) {
	msg := &hamail.Message{From: env.From, To: env.To, Body: body, EnvID: env.EnvID, SMTPUTF8: env.SMTPUTF8}
	switch env.Ret {
	case "FULL":
		msg.Ret = queue.RetFull
	case "HDRS":
		msg.Ret = queue.RetHeaders
	}
	if env.Notify != "" {
		for kw := range strings.SplitSeq(env.Notify, ",") {
			switch kw {
			case "NEVER":
				msg.Notify |= queue.NotifyNever
			case "SUCCESS":
				msg.Notify |= queue.NotifySuccess
			case "FAILURE":
				msg.Notify |= queue.NotifyFailure
			case "DELAY":
				msg.Notify |= queue.NotifyDelay
			default:
				return nil, fmt.Errorf("maildrop: bad NOTIFY %q", env.Notify)
			}
		}
	}
	return msg, nil
}
