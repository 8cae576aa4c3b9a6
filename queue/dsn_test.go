package queue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
)

func TestDSNVariants(t *testing.T) {
	t.Parallel()
	big := "Subject: big\r\nFrom: a@example.org\r\n\r\n" + strings.Repeat("body line\r\n", 10000)
	at := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		env      queue.Envelope
		body     string
		kind     queue.NoticeKind
		wantType string
		wantBody bool
		status   string
	}{
		{"ret unset small", queue.Envelope{From: "a@example.org"}, testBody, queue.NoticeFailure, "message/rfc822", true, "5.1.1"},
		{"ret unset large", queue.Envelope{From: "a@example.org"}, big, queue.NoticeFailure, "text/rfc822-headers", false, "5.1.1"},
		{"ret full large", queue.Envelope{From: "a@example.org", Ret: queue.RetFull}, big, queue.NoticeFailure, "message/rfc822", true, "5.1.1"},
		{"smtputf8", queue.Envelope{From: "José@example.org", SMTPUTF8: true}, "Subject: olá\r\n\r\nçã\r\n", queue.NoticeFailure, "message/global", true, "5.1.1"},
		{"smtputf8 headers", queue.Envelope{From: "José@example.org", SMTPUTF8: true, Ret: queue.RetHeaders}, "Subject: olá\r\n\r\nçã\r\n", queue.NoticeFailure, "message/global-headers", false, "5.1.1"},
		{"delay", queue.Envelope{From: "a@example.org"}, testBody, queue.NoticeDelay, "message/rfc822", true, "4.0.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &queue.Notice{
				Kind: tc.kind, ID: "abc", Envelope: tc.env, Arrival: at, RetryUntil: at.Add(5 * 24 * time.Hour),
				Recipients: []queue.RecipientState{{
					Recipient: queue.Recipient{Address: "bob@example.net"},
					Status:    queue.StatusFailed,
					Reply:     queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user\r\nInjected: header"},
					Host:      "mx.example.net [192.0.2.9]", LastAttempt: at,
				}},
			}
			if tc.kind == queue.NoticeDelay {
				n.Recipients[0].Reply = queue.Reply{Code: 421, Text: "busy"}
			}
			raw, err := queue.NewDSN(n, queue.BytesBody([]byte(tc.body)), &queue.DSNOptions{ReportingMTA: "mta.example.org", Date: at})
			if err != nil {
				t.Fatal(err)
			}
			r := parseDSN(t, string(raw))
			if r.originalType != tc.wantType {
				t.Errorf("original part %s, want %s", r.originalType, tc.wantType)
			}
			if got := strings.Contains(r.original, "\r\n\r\n"); got != tc.wantBody {
				t.Errorf("original includes the body: %v, want %v", got, tc.wantBody)
			}
			if tc.wantBody && strings.TrimRight(r.original, "\r\n") != strings.TrimRight(tc.body, "\r\n") {
				t.Errorf("returned message differs")
			}
			f := r.rcptFields[0]
			if f.Get("Status") != tc.status {
				t.Errorf("Status %q, want %q", f.Get("Status"), tc.status)
			}
			if f.Get("Injected") != "" || r.header.Get("Injected") != "" {
				t.Error("reply text broke out of its field")
			}
			if tc.env.SMTPUTF8 && !strings.HasPrefix(f.Get("Final-Recipient"), "utf-8;") {
				t.Errorf("Final-Recipient %q in a global DSN", f.Get("Final-Recipient"))
			}
			if r.header.Get("Date") != at.Format(time.RFC1123Z) || !strings.Contains(r.human, "bob@example.net") {
				t.Errorf("header %v / text %q", r.header, r.human)
			}
		})
	}
}
