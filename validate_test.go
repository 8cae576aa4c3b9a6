package hamail

import (
	"errors"
	"strings"
	"testing"
)

// FuzzQueueMessage: whatever addresses a caller passes, Send either refuses
// them with a *MessageError or builds an envelope that the queue accepts
// and that cannot carry a second SMTP command (no CR, LF or NUL).
func FuzzQueueMessage(f *testing.F) {
	f.Add("app@example.org", "bob@example.com")
	f.Add("", "jürgen@example.com")
	f.Add("a@b", "\"quoted local\"@[192.0.2.1]")
	f.Add("x@example.org>\r\nRCPT TO:<evil@example.net", "bob@example.com")
	f.Add("app@example.org", "bob@example.com\x00")
	f.Fuzz(func(t *testing.T, from, to string) {
		qm, err := queueMessage(&Message{From: from, To: []string{to}, Body: strings.NewReader("x\r\n")})
		if err != nil {
			var me *MessageError
			if !errors.As(err, &me) || !errors.Is(err, ErrInvalidMessage) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if err := qm.Envelope.Validate(); err != nil {
			t.Fatalf("accepted an envelope the queue refuses: %v", err)
		}
		for _, a := range []string{qm.Envelope.From, qm.Envelope.Recipients[0].Address} {
			if strings.ContainsAny(a, "\r\n\x00") {
				t.Fatalf("accepted %q", a)
			}
		}
		nonASCII := strings.IndexFunc(from+to, func(r rune) bool { return r > 127 }) >= 0
		if nonASCII && !qm.Envelope.SMTPUTF8 {
			t.Fatalf("UTF-8 address without SMTPUTF8: %q %q", from, to)
		}
	})
}
