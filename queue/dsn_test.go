package queue_test

import (
	"regexp"
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
			rcpt := "bob@example.net"
			if tc.env.SMTPUTF8 {
				rcpt = "joão@example.net" // 8-bit in every part
			}
			n := &queue.Notice{
				Kind: tc.kind, ID: "abc", Envelope: tc.env, Arrival: at, RetryUntil: at.Add(5 * 24 * time.Hour),
				Recipients: []queue.RecipientState{{
					Recipient: queue.Recipient{Address: rcpt},
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
			if r.header.Get("Date") != at.Format(time.RFC1123Z) || !strings.Contains(r.human, rcpt) {
				t.Errorf("header %v / text %q", r.header, r.human)
			}
		})
	}
}

// FuzzNewDSN checks that whatever the envelope, the server's reply and the
// original message hold, the notice parses back as a multipart/report with
// one block of fields per recipient reported, no text escapes the field it
// was put in, and the original comes back as RET asks.
func FuzzNewDSN(f *testing.F) {
	f.Add("alice@example.org", "bob@example.net", "rfc822;bob@example.net", "ENV-1", 550, "5.1.1", "no such user", "mx.example.net [192.0.2.1]", testBody, uint8(0), false, false)
	f.Add("José@example.org", "ñ@example.net", "utf-8;ñ@example.net", "", 451, "4.3.0", "try later\r\nX-Injected: yes", " ", "Subject: ç\r\n\r\nçã\r\n", uint8(2), true, true)
	f.Add("a@b", "c@d", "", "\r\n", 0, "", "", "", "no header, no newline", uint8(1), false, false)
	f.Fuzz(func(t *testing.T, from, rcpt, orcpt, envid string, code int, enhanced, text, host, body string, ret uint8, utf8, delay bool) {
		at := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
		kind := queue.NoticeFailure
		if delay {
			kind = queue.NoticeDelay
		}
		n := &queue.Notice{
			Kind: kind, ID: "0123456789abcdefghij", Arrival: at, RetryUntil: at.Add(time.Hour),
			Envelope: queue.Envelope{From: from, EnvID: envid, Ret: queue.Ret(ret % 3), SMTPUTF8: utf8},
			Recipients: []queue.RecipientState{
				{Recipient: queue.Recipient{Address: rcpt, ORcpt: orcpt}, Status: queue.StatusFailed, Reply: queue.Reply{Code: code, Enhanced: enhanced, Text: text}, Host: host, LastAttempt: at},
				{Recipient: queue.Recipient{Address: "carol@example.net"}, Status: queue.StatusFailed, Reply: queue.Reply{Code: 550, Enhanced: "5.7.1", Text: "refused"}},
			},
		}
		raw, err := queue.NewDSN(n, queue.BytesBody([]byte(body)), &queue.DSNOptions{ReportingMTA: "mta.example.org", Date: at, ReturnLimit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		r := parseDSN(t, string(raw))
		if len(r.rcptFields) != 2 {
			t.Fatalf("%d recipient blocks, want 2", len(r.rcptFields))
		}
		if r.msgFields.Get("Reporting-MTA") != "dns; mta.example.org" || len(r.msgFields) > 3 {
			t.Errorf("per-message fields %v", r.msgFields)
		}
		for i, f := range r.rcptFields {
			action := "failed"
			if delay {
				action = "delayed"
			}
			if f.Get("Action") != action || !strings.Contains(f.Get("Final-Recipient"), ";") {
				t.Errorf("recipient %d fields %v", i, f)
			}
			st := f.Get("Status")
			if !regexp.MustCompile(`^[45]\.\d{1,3}\.\d{1,3}$`).MatchString(st) || delay && st[0] != '4' {
				t.Errorf("recipient %d Status %q for %s", i, st, action)
			}
			for k := range f {
				switch k {
				case "Original-Recipient", "Final-Recipient", "Action", "Status", "Remote-Mta", "Diagnostic-Code", "Last-Attempt-Date", "Will-Retry-Until":
				default:
					t.Errorf("recipient %d has a field %q nobody wrote", i, k)
				}
			}
		}
		for k := range r.header {
			switch k {
			case "From", "To", "Subject", "Date", "Message-Id", "Auto-Submitted", "Mime-Version", "Content-Type":
			default:
				t.Errorf("notice header has a field %q nobody wrote", k)
			}
		}
		full := n.Envelope.Ret == queue.RetFull || n.Envelope.Ret == queue.RetUnset && len(body) <= 1000
		if full && strings.TrimRight(r.original, "\r\n") != strings.TrimRight(body, "\r\n") {
			t.Errorf("original returned as %q, want %q", r.original, body)
		}
		if !full && !strings.HasPrefix(body, strings.TrimRight(r.original, "\r\n")) {
			t.Errorf("headers returned as %q, not a prefix of %q", r.original, body)
		}
	})
}
