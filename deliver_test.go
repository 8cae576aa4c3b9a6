package hamail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/mxresolve"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/smtpclient"
)

func TestQueueResult(t *testing.T) {
	t.Parallel()
	lost := &smtpclient.Error{Host: "relay", Stage: smtpclient.StageDataEnd, Outcome: smtpclient.Unknown, Err: smtpclient.ErrConnectionLost}
	cases := []struct {
		name string
		in   smtpclient.RecipientResult
		want queue.RecipientResult
	}{
		{"delivered",
			smtpclient.RecipientResult{Outcome: smtpclient.Delivered, Host: "relay", Reply: &smtpclient.Reply{Code: 250, Enhanced: smtp.EnhancedCode{2, 0, 0}, Message: "queued as 1"}},
			queue.RecipientResult{Outcome: queue.OutcomeDelivered, Host: "relay", Reply: queue.Reply{Code: 250, Enhanced: "2.0.0", Text: "queued as 1"}}},
		{"delivered without enhanced code",
			smtpclient.RecipientResult{Outcome: smtpclient.Delivered, Host: "relay", Reply: &smtpclient.Reply{Code: 250, Enhanced: smtp.NoEnhancedCode, Message: "ok"}},
			queue.RecipientResult{Outcome: queue.OutcomeDelivered, Host: "relay", Reply: queue.Reply{Code: 250, Text: "ok"}}},
		{"refused at RCPT",
			smtpclient.RecipientResult{Outcome: smtpclient.Permanent, Host: "mx1.example.com [192.0.2.1]:25", Reply: &smtpclient.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}},
			queue.RecipientResult{Outcome: queue.OutcomePermanent, Host: "mx1.example.com [192.0.2.1]:25", Reply: queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}}},
		{"greylisted",
			smtpclient.RecipientResult{Outcome: smtpclient.Temporary, Host: "relay", Reply: &smtpclient.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted"}},
			queue.RecipientResult{Outcome: queue.OutcomeTemporary, Host: "relay", Reply: queue.Reply{Code: 451, Enhanced: "4.7.1", Text: "greylisted"}}},
		{"reply only in the error",
			smtpclient.RecipientResult{Outcome: smtpclient.Permanent, Err: &smtpclient.Error{Stage: smtpclient.StageResolve, Outcome: smtpclient.Permanent,
				Reply: &smtpclient.Reply{Code: 556, Enhanced: smtp.EnhancedCode{5, 1, 10}, Message: "null MX"}, Err: mxresolve.ErrNullMX}},
			queue.RecipientResult{Outcome: queue.OutcomePermanent, Reply: queue.Reply{Code: 556, Enhanced: "5.1.10", Text: "null MX"}}},
		{"DNS failure",
			smtpclient.RecipientResult{Outcome: smtpclient.Temporary, Err: &smtpclient.Error{Stage: smtpclient.StageResolve, Outcome: smtpclient.Temporary,
				Err: &mxresolve.Error{Domain: "example.com", Code: 451, EnhancedCode: [3]int{4, 4, 3}, Err: mxresolve.ErrServerFailure}}},
			queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: queue.Reply{Code: 451, Enhanced: "4.4.3"}}},
		{"lost after the final dot",
			smtpclient.RecipientResult{Outcome: smtpclient.Unknown, Host: "relay", Err: lost},
			queue.RecipientResult{Outcome: queue.OutcomeUnknown, Host: "relay", Reply: queue.Reply{Enhanced: "4.4.2"}}},
		{"cut while waiting for the final reply, reported temporary",
			smtpclient.RecipientResult{Outcome: smtpclient.Temporary, Host: "relay", Err: &smtpclient.Error{Stage: smtpclient.StageDataEnd, Outcome: smtpclient.Temporary, Err: context.Canceled}},
			queue.RecipientResult{Outcome: queue.OutcomeUnknown, Host: "relay", Reply: queue.Reply{Enhanced: "4.4.2"}}},
		{"cut before the body",
			smtpclient.RecipientResult{Outcome: smtpclient.Temporary, Err: &smtpclient.Error{Stage: smtpclient.StageRcpt, Outcome: smtpclient.Temporary, Err: context.Canceled}},
			queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: queue.Reply{Enhanced: "4.4.2"}}},
		{"connection refused",
			smtpclient.RecipientResult{Outcome: smtpclient.Temporary, Err: &smtpclient.Error{Host: "relay", Stage: smtpclient.StageConnect, Outcome: smtpclient.Temporary, Err: syscall.ECONNREFUSED}},
			queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: queue.Reply{Enhanced: "4.4.1"}}},
		{"every host skipped",
			smtpclient.RecipientResult{Outcome: smtpclient.Temporary, Err: fmt.Errorf("x: %w", smtpclient.ErrNoHostAvailable)},
			queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: queue.Reply{Enhanced: "4.4.1"}}},
		{"connection lost at MAIL",
			smtpclient.RecipientResult{Outcome: smtpclient.Temporary, Host: "relay", Err: &smtpclient.Error{Stage: smtpclient.StageMail, Outcome: smtpclient.Temporary, Err: io.ErrUnexpectedEOF}},
			queue.RecipientResult{Outcome: queue.OutcomeTemporary, Host: "relay", Reply: queue.Reply{Enhanced: "4.4.2"}}},
		{"STARTTLS required",
			smtpclient.RecipientResult{Outcome: smtpclient.Temporary, Err: &smtpclient.Error{Stage: smtpclient.StagePolicy, Outcome: smtpclient.Temporary, Err: smtpclient.ErrTLSRequired}},
			queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: queue.Reply{Enhanced: "4.7.4"}}},
		{"too big for every host",
			smtpclient.RecipientResult{Outcome: smtpclient.Permanent, Err: &smtpclient.Error{Stage: smtpclient.StagePolicy, Outcome: smtpclient.Permanent, Err: smtpclient.ErrMessageTooBig}},
			queue.RecipientResult{Outcome: queue.OutcomePermanent, Reply: queue.Reply{Enhanced: "5.3.4"}}},
		{"no SMTPUTF8 anywhere",
			smtpclient.RecipientResult{Outcome: smtpclient.Permanent, Err: &smtpclient.Error{Stage: smtpclient.StagePolicy, Outcome: smtpclient.Permanent, Err: smtpclient.ErrSMTPUTF8Required}},
			queue.RecipientResult{Outcome: queue.OutcomePermanent, Reply: queue.Reply{Enhanced: "5.6.7"}}},
		{"permanent without a reply",
			smtpclient.RecipientResult{Outcome: smtpclient.Permanent, Err: errors.New("odd")},
			queue.RecipientResult{Outcome: queue.OutcomePermanent, Reply: queue.Reply{Enhanced: "5.0.0"}}},
		{"outcome out of range",
			smtpclient.RecipientResult{Outcome: smtpclient.Outcome(42)},
			queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: queue.Reply{Enhanced: "4.4.1"}}},
	}
	seen := map[queue.Outcome]bool{}
	for _, c := range cases {
		got := queueResult(c.in)
		seen[got.Outcome] = true
		// Local reasons carry the error text; compare it separately.
		text := got.Reply.Text
		if c.want.Reply.Text == "" && c.in.Reply == nil {
			got.Reply.Text = ""
			if text == "" {
				t.Errorf("%s: a local reason without text", c.name)
			}
		}
		if got != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, c.want)
		}
	}
	for _, o := range []queue.Outcome{queue.OutcomeDelivered, queue.OutcomeTemporary, queue.OutcomePermanent, queue.OutcomeUnknown} {
		if !seen[o] {
			t.Errorf("no case produces %v", o)
		}
	}
}

// TestUnknownNeverTemporary: whatever smtpclient reports, a recipient
// whose session ended at the final reply comes out Unknown or definite.
func TestUnknownNeverTemporary(t *testing.T) {
	t.Parallel()
	for o := smtpclient.Temporary; o <= smtpclient.Unknown; o++ {
		for _, cause := range []error{context.Canceled, context.DeadlineExceeded, smtpclient.ErrConnectionLost, io.EOF} {
			rr := smtpclient.RecipientResult{Outcome: o, Err: &smtpclient.Error{Stage: smtpclient.StageDataEnd, Outcome: o, Err: cause}}
			got := queueResult(rr).Outcome
			if got == queue.OutcomeTemporary {
				t.Errorf("%v after the dot (%v) mapped to temporary", o, cause)
			}
		}
	}
}

func TestSMTPRecipient(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   queue.Recipient
		want smtpclient.Recipient
	}{
		{queue.Recipient{Address: "a@example.com"}, smtpclient.Recipient{Addr: "a@example.com"}},
		{queue.Recipient{Address: "a@example.com", Notify: queue.NotifyNever}, smtpclient.Recipient{Addr: "a@example.com", Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}}},
		{queue.Recipient{Address: "a@example.com", Notify: queue.NotifySuccess | queue.NotifyFailure | queue.NotifyDelay},
			smtpclient.Recipient{Addr: "a@example.com", Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed}}},
		{queue.Recipient{Address: "a@example.com", Notify: queue.NotifyDelay}, smtpclient.Recipient{Addr: "a@example.com", Notify: []smtp.DSNNotify{smtp.DSNNotifyDelayed}}},
		{queue.Recipient{Address: "a@example.com", ORcpt: "rfc822;b@example.org"}, smtpclient.Recipient{Addr: "a@example.com", OriginalRecipient: "b@example.org"}},
		{queue.Recipient{Address: "a@example.com", ORcpt: "RFC822;b@example.org"}, smtpclient.Recipient{Addr: "a@example.com", OriginalRecipient: "b@example.org"}},
		{queue.Recipient{Address: "a@example.com", ORcpt: "utf-8;jürgen@example.org"}, smtpclient.Recipient{Addr: "a@example.com", OriginalRecipient: "jürgen@example.org"}},
		{queue.Recipient{Address: "a@example.com", ORcpt: "x400;c=de;a=x"}, smtpclient.Recipient{Addr: "a@example.com"}},
		{queue.Recipient{Address: "a@example.com", ORcpt: "rfc822;"}, smtpclient.Recipient{Addr: "a@example.com"}},
	}
	for _, c := range cases {
		if got := smtpRecipient(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%+v: got %+v, want %+v", c.in, got, c.want)
		}
	}
	for r, want := range map[queue.Ret]smtp.DSNReturn{queue.RetUnset: "", queue.RetFull: smtp.DSNReturnFull, queue.RetHeaders: smtp.DSNReturnHeaders} {
		if got := dsnReturn(r); got != want {
			t.Errorf("RET %v: %q", r, got)
		}
	}
}

// fakeSender records the message and answers with a script.
type fakeSender struct {
	got  *smtpclient.Message
	ctx  context.Context
	send func(ctx context.Context, m *smtpclient.Message) (*smtpclient.Result, error)
}

func (f *fakeSender) Send(ctx context.Context, m *smtpclient.Message) (*smtpclient.Result, error) {
	f.got, f.ctx = m, ctx
	return f.send(ctx, m)
}

func allDelivered(_ context.Context, m *smtpclient.Message) (*smtpclient.Result, error) {
	res := &smtpclient.Result{}
	for _, r := range m.To {
		res.Recipients = append(res.Recipients, smtpclient.RecipientResult{Recipient: r.Addr, Outcome: smtpclient.Delivered, Host: "relay",
			Reply: &smtpclient.Reply{Code: 250, Enhanced: smtp.EnhancedCode{2, 0, 0}, Message: "ok"}})
	}
	return res, nil
}

func delivery(from string, rcpts ...string) *queue.Delivery {
	d := &queue.Delivery{ID: "id1", Envelope: queue.Envelope{From: from}, Body: queue.BytesBody([]byte("Subject: x\r\n\r\nx\r\n")), Attempt: 1}
	for _, r := range rcpts {
		d.Recipients = append(d.Recipients, queue.Recipient{Address: r})
	}
	d.Envelope.Recipients = d.Recipients
	return d
}

func TestDeliverMessage(t *testing.T) {
	t.Parallel()
	f := &fakeSender{send: allDelivered}
	a := &deliverer{client: f}
	d := delivery("app@example.org", "a@example.com", "b@example.com")
	d.Envelope.EnvID, d.Envelope.Ret, d.Envelope.SMTPUTF8 = "env-7", queue.RetFull, true
	d.Body = queue.BytesBody([]byte("Subject: caf\xc3\xa9\r\n\r\nx\r\n"))
	d.Recipients[1].Notify = queue.NotifyNever
	res, err := a.Deliver(t.Context(), d)
	if err != nil || len(res) != 2 || res[0].Outcome != queue.OutcomeDelivered || res[1].Outcome != queue.OutcomeDelivered {
		t.Fatalf("%+v %v", res, err)
	}
	m := f.got
	if m.From != "app@example.org" || m.EnvelopeID != "env-7" || m.Return != smtp.DSNReturnFull || !m.SMTPUTF8 || !m.EightBit ||
		m.Size != d.Body.Size() || m.Body == nil || len(m.To) != 2 || !reflect.DeepEqual(m.To[1].Notify, []smtp.DSNNotify{smtp.DSNNotifyNever}) {
		t.Fatalf("message: %+v", m)
	}
	if _, err := a.Deliver(t.Context(), delivery("", "a@example.com")); err != nil || f.got.From != "" || f.got.EightBit {
		t.Fatalf("null reverse path, 7-bit body: %+v %v", f.got, err)
	}
}

func TestDeliverBadAddresses(t *testing.T) {
	t.Parallel()
	called := 0
	f := &fakeSender{send: func(ctx context.Context, m *smtpclient.Message) (*smtpclient.Result, error) {
		called++
		return allDelivered(ctx, m)
	}}
	a := &deliverer{client: f}
	res, err := a.Deliver(t.Context(), delivery("bad sender", "a@example.com", "b@example.com"))
	if err != nil || called != 0 || res[0].Outcome != queue.OutcomePermanent || res[0].Reply.Enhanced != "5.1.7" || res[1].Reply.Enhanced != "5.1.7" {
		t.Fatalf("bad sender: %+v %v, %d sends", res, err, called)
	}
	res, err = a.Deliver(t.Context(), delivery("app@example.org", "a@example.com", "bad\r\nrcpt@example.com", "c@example.com"))
	if err != nil || called != 1 || len(f.got.To) != 2 || f.got.To[1].Addr != "c@example.com" {
		t.Fatalf("bad recipient: %+v %v", f.got, err)
	}
	if res[0].Outcome != queue.OutcomeDelivered || res[1].Outcome != queue.OutcomePermanent || res[1].Reply.Enhanced != "5.1.3" || res[2].Outcome != queue.OutcomeDelivered {
		t.Fatalf("results out of place: %+v", res)
	}
	res, err = a.Deliver(t.Context(), delivery("app@example.org", "bad"))
	if err != nil || called != 1 || res[0].Outcome != queue.OutcomePermanent {
		t.Fatalf("only bad recipients: %+v %v, %d sends", res, err, called)
	}
}

func TestDeliverNothingAttempted(t *testing.T) {
	t.Parallel()
	noHost := fmt.Errorf("hosts skipped: %w", smtpclient.ErrNoHostAvailable)
	for _, c := range []struct {
		name string
		res  *smtpclient.Result
	}{
		{"nil result", nil},
		{"short result", &smtpclient.Result{Recipients: []smtpclient.RecipientResult{{Outcome: smtpclient.Delivered, Reply: &smtpclient.Reply{Code: 250}}}}},
	} {
		a := &deliverer{client: &fakeSender{send: func(context.Context, *smtpclient.Message) (*smtpclient.Result, error) { return c.res, noHost }}}
		res, err := a.Deliver(t.Context(), delivery("app@example.org", "a@example.com", "b@example.com"))
		if !errors.Is(err, smtpclient.ErrNoHostAvailable) || len(res) != 2 {
			t.Fatalf("%s: %+v %v", c.name, res, err)
		}
		if res[1].Outcome != queue.OutcomeTemporary || res[1].Reply.Enhanced != "4.4.1" || !strings.Contains(res[1].Reply.Text, "no host available") {
			t.Fatalf("%s: %+v", c.name, res[1])
		}
	}
}

// TestDeliverDetached: the runner's context is cancelled when a graceful
// shutdown begins; the attempt goes on until its deadline or the hard
// stop, and then returns promptly.
func TestDeliverDetached(t *testing.T) {
	t.Parallel()
	hard, stop := context.WithCancel(t.Context())
	defer stop()
	started := make(chan context.Context, 1)
	f := &fakeSender{send: func(ctx context.Context, m *smtpclient.Message) (*smtpclient.Result, error) {
		started <- ctx
		<-ctx.Done()
		// What smtpclient reports when cut while waiting for the reply to
		// the final dot.
		return &smtpclient.Result{Recipients: []smtpclient.RecipientResult{{Outcome: smtpclient.Unknown, Host: "relay",
			Err: &smtpclient.Error{Stage: smtpclient.StageDataEnd, Outcome: smtpclient.Unknown, Err: ctx.Err()}}}}, ctx.Err()
	}}
	a := &deliverer{client: f, hardStop: hard}
	deadline := time.Now().Add(time.Hour)
	runCtx, cancelRun := context.WithDeadline(t.Context(), deadline)
	type out struct {
		res []queue.RecipientResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := a.Deliver(runCtx, delivery("app@example.org", "a@example.com"))
		done <- out{res, err}
	}()
	ctx := <-started
	if dl, ok := ctx.Deadline(); !ok || !dl.Equal(deadline) {
		t.Fatalf("deadline %v %v, want %v", dl, ok, deadline)
	}
	cancelRun()
	select {
	case <-ctx.Done():
		t.Fatal("the attempt ended with the runner's context")
	case <-done:
		t.Fatal("Deliver returned with the runner's context")
	default:
	}
	stop()
	select {
	case o := <-done:
		if o.res[0].Outcome != queue.OutcomeUnknown || !errors.Is(o.err, context.Canceled) {
			t.Fatalf("%+v %v", o.res, o.err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Deliver did not return after the hard stop")
	}
}

func TestHas8bit(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 100_000)
	for in, want := range map[string]bool{"": false, "plain\r\n": false, long: false, long + "\xff": true, "\x80" + long: true} {
		got, err := has8bit(queue.BytesBody([]byte(in)))
		if err != nil || got != want {
			t.Errorf("len %d: %v %v, want %v", len(in), got, err, want)
		}
	}
}
