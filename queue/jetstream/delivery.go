package jetstream

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// delivery is one message handed out by the consumer, with the
// acknowledgements of the JetStream protocol sent on its reply subject.
type delivery struct {
	nc  *nats.Conn
	msg *nats.Msg
	md  *nats.MsgMetadata
}

func (d *delivery) Subject() string { return d.msg.Subject }
func (d *delivery) Data() []byte    { return d.msg.Data }

// DoubleAck acknowledges and waits for the server to confirm, so that a
// completed item does not come back.
func (d *delivery) DoubleAck(ctx context.Context) error {
	_, err := d.nc.RequestWithContext(ctx, d.msg.Reply, []byte("+ACK"))
	return err
}

// InProgress restarts the server's AckWait and waits for the server to
// confirm that it received the request.
func (d *delivery) InProgress(ctx context.Context) error {
	_, err := d.nc.RequestWithContext(ctx, d.msg.Reply, []byte("+WPI"))
	return err
}

// Nak hands the message back for redelivery at once.
func (d *delivery) Nak() error { return d.nc.Publish(d.msg.Reply, []byte("-NAK")) }

// NakWithDelay hands the message back for redelivery after delay.
func (d *delivery) NakWithDelay(delay time.Duration) error {
	return d.nc.Publish(d.msg.Reply, fmt.Appendf(nil, `-NAK {"delay": %d}`, delay.Nanoseconds()))
}

// pullRequest is the body of $JS.API.CONSUMER.MSG.NEXT. With NoWait and
// Expires together the server sends what is available at once and, only
// when nothing is, waits up to Expires for the first message; either way it
// ends the request without waiting for a full batch. The client library's
// Fetch waits for a full batch, FetchNoWait does not wait at all, and a
// message published a moment ago may not have reached the consumer yet.
type pullRequest struct {
	Batch   int           `json:"batch"`
	NoWait  bool          `json:"no_wait"`
	Expires time.Duration `json:"expires"`
}

// fetch pulls up to max messages, waiting at most wait for the first.
func (s *Store) fetch(ctx context.Context, max int, wait time.Duration) ([]*delivery, error) {
	inbox := s.nc.NewInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	req, _ := json.Marshal(pullRequest{Batch: max, NoWait: true, Expires: wait})
	subj := fmt.Sprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s", s.opts.Stream, consumerName)
	if err := s.nc.PublishRequest(subj, inbox, req); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, wait+2*time.Second)
	defer cancel()
	var out []*delivery
	for len(out) < max {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if len(out) > 0 || ctx.Err() != nil {
				// The request ended on our side; what arrived is leased
				// and what did not stays with the server.
				return out, nil
			}
			return nil, err
		}
		if status := m.Header.Get("Status"); status != "" && len(m.Data) == 0 {
			if status == "100" {
				continue // heartbeat
			}
			// 404 no messages, 408 expired or other requests pending,
			// 409 consumer changes: the request is over.
			return out, nil
		}
		md, err := m.Metadata()
		if err != nil {
			continue // not a JetStream delivery
		}
		out = append(out, &delivery{nc: s.nc, msg: m, md: md})
	}
	return out, nil
}
