package queue

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/textproto"
	"regexp"
	"strings"
	"time"
)

// NoticeKind says what a delivery status notification reports.
type NoticeKind uint8

const (
	// NoticeFailure: the recipients were given up (Action: failed).
	NoticeFailure NoticeKind = iota + 1
	// NoticeDelay: the recipients are still being retried (Action: delayed).
	NoticeDelay
)

func (k NoticeKind) String() string {
	switch k {
	case NoticeFailure:
		return "failure"
	case NoticeDelay:
		return "delay"
	default:
		return "notice(?)"
	}
}

// Notice is a delivery status notification about some recipients of an
// item, before it is written as a message.
type Notice struct {
	Kind NoticeKind
	// ID is the item's ID.
	ID string
	// Envelope is the item's envelope; the notice goes to its From.
	Envelope Envelope
	// Arrival is when the item was queued (RFC 3464 §2.2.5).
	Arrival time.Time
	// Recipients are the recipients reported on, with their last reply.
	Recipients []RecipientState
	// RetryUntil is the end of the lifetime, for delay notices
	// (Will-Retry-Until, RFC 3464 §2.3.9).
	RetryUntil time.Time
}

// DSNOptions configures NewDSN. A nil *DSNOptions means the defaults.
type DSNOptions struct {
	// ReportingMTA is this host's name (Reporting-MTA, RFC 3464 §2.2.2,
	// and the From and Message-ID domains); "" means "localhost".
	ReportingMTA string
	// Date is the notice's date; zero means time.Now().
	Date time.Time
	// ReturnLimit: with RET unset, the original message is returned whole
	// if it is at most this long and by its headers otherwise. 0 means
	// 50,000 octets (Postfix bounce_size_limit).
	ReturnLimit int64
}

// NewDSN writes a notice as a delivery status notification: a
// multipart/report message (RFC 6522) of report-type delivery-status with a
// human-readable part, a message/delivery-status part (RFC 3464), and the
// original message or its header as RET asks (RFC 3461 §4.3). For an
// SMTPUTF8 message the parts are message/global-delivery-status and
// message/global or message/global-headers (RFC 6533). body may be nil,
// then nothing of the original is returned.
func NewDSN(n *Notice, body Body, o *DSNOptions) ([]byte, error) {
	var opt DSNOptions
	if o != nil {
		opt = *o
	}
	if opt.ReportingMTA == "" {
		opt.ReportingMTA = "localhost"
	}
	if opt.Date.IsZero() {
		opt.Date = time.Now()
	}
	if opt.ReturnLimit == 0 {
		opt.ReturnLimit = 50000
	}
	mta := sanitize(opt.ReportingMTA, false)
	utf8 := n.Envelope.SMTPUTF8

	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	subject := "Undelivered Mail Returned to Sender"
	if n.Kind == NoticeDelay {
		subject = "Delayed Mail (still being retried)"
	}
	fmt.Fprintf(&buf, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", mta)
	fmt.Fprintf(&buf, "To: <%s>\r\n", sanitize(n.Envelope.From, utf8))
	fmt.Fprintf(&buf, "Subject: %s\r\n", subject)
	fmt.Fprintf(&buf, "Date: %s\r\n", opt.Date.Format(time.RFC1123Z))
	fmt.Fprintf(&buf, "Message-ID: <%s.%s.%d@%s>\r\n", sanitize(n.ID, false), n.Kind, opt.Date.UnixNano(), mta)
	// RFC 3834 §5: automatic responses say so, and nothing answers them.
	buf.WriteString("Auto-Submitted: auto-replied\r\n")
	buf.WriteString("MIME-Version: 1.0\r\n")
	fmt.Fprintf(&buf, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n\r\n", mw.Boundary())
	buf.WriteString("This is a MIME-encapsulated message.\r\n\r\n")

	// Part 1: for people.
	h := textproto.MIMEHeader{}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Description", "Notification")
	var part bytes.Buffer
	w := &part
	if n.Kind == NoticeDelay {
		fmt.Fprintf(w, "This is the mail system at host %s.\r\n\r\nYour message could not be delivered yet to the recipients below.\r\nIt will be retried until %s.\r\n\r\n", mta, n.RetryUntil.UTC().Format(time.RFC1123Z))
	} else {
		fmt.Fprintf(w, "This is the mail system at host %s.\r\n\r\nYour message could not be delivered to the recipients below.\r\nThis is a permanent error; it has been given up.\r\n\r\n", mta)
	}
	for _, r := range n.Recipients {
		fmt.Fprintf(w, "<%s>", sanitize(r.Address, true))
		if r.Host != "" {
			fmt.Fprintf(w, ": host %s said:", sanitize(r.Host, true))
		} else {
			w.Write([]byte(":"))
		}
		fmt.Fprintf(w, " %s\r\n", sanitize(replyText(r, n.Kind), true))
	}
	if err := writePart(mw, h, part.Bytes()); err != nil {
		return nil, err
	}

	// Part 2: for programs (RFC 3464 §2).
	part.Reset()
	h = textproto.MIMEHeader{}
	if utf8 {
		h.Set("Content-Type", "message/global-delivery-status")
	} else {
		h.Set("Content-Type", "message/delivery-status")
	}
	h.Set("Content-Description", "Delivery report")
	fmt.Fprintf(w, "Reporting-MTA: dns; %s\r\n", mta)
	if n.Envelope.EnvID != "" {
		fmt.Fprintf(w, "Original-Envelope-Id: %s\r\n", sanitize(n.Envelope.EnvID, utf8))
	}
	if !n.Arrival.IsZero() {
		fmt.Fprintf(w, "Arrival-Date: %s\r\n", n.Arrival.Format(time.RFC1123Z))
	}
	for _, r := range n.Recipients {
		w.Write([]byte("\r\n"))
		if r.ORcpt != "" {
			fmt.Fprintf(w, "Original-Recipient: %s\r\n", sanitize(r.ORcpt, utf8))
		}
		addrType := "rfc822"
		if utf8 {
			addrType = "utf-8" // RFC 6533 §3
		}
		fmt.Fprintf(w, "Final-Recipient: %s; %s\r\n", addrType, sanitize(r.Address, utf8))
		if n.Kind == NoticeDelay {
			w.Write([]byte("Action: delayed\r\n"))
		} else {
			w.Write([]byte("Action: failed\r\n"))
		}
		fmt.Fprintf(w, "Status: %s\r\n", dsnStatus(r, n.Kind))
		if host := strings.Fields(sanitize(r.Host, false)); len(host) > 0 {
			// "mx.example.net [192.0.2.1]": the name is the first word.
			fmt.Fprintf(w, "Remote-MTA: dns; %s\r\n", host[0])
		}
		if r.Reply.Code != 0 {
			fmt.Fprintf(w, "Diagnostic-Code: smtp; %s\r\n", sanitize(r.Reply.String(), utf8))
		} else if r.Reply.Text != "" {
			fmt.Fprintf(w, "Diagnostic-Code: X-hamail; %s\r\n", sanitize(r.Reply.Text, utf8))
		}
		if !r.LastAttempt.IsZero() {
			fmt.Fprintf(w, "Last-Attempt-Date: %s\r\n", r.LastAttempt.Format(time.RFC1123Z))
		}
		if n.Kind == NoticeDelay && !n.RetryUntil.IsZero() {
			fmt.Fprintf(w, "Will-Retry-Until: %s\r\n", n.RetryUntil.Format(time.RFC1123Z))
		}
	}
	if err := writePart(mw, h, part.Bytes()); err != nil {
		return nil, err
	}

	// Part 3: the original, as RET asks.
	if body != nil {
		full := n.Envelope.Ret == RetFull || (n.Envelope.Ret == RetUnset && body.Size() <= opt.ReturnLimit)
		content, err := originalContent(body, full)
		if err != nil {
			return nil, fmt.Errorf("reading the original message: %w", err)
		}
		h = textproto.MIMEHeader{}
		switch {
		case full && utf8:
			h.Set("Content-Type", "message/global")
		case full:
			h.Set("Content-Type", "message/rfc822")
		case utf8:
			h.Set("Content-Type", "message/global-headers")
		default:
			h.Set("Content-Type", "text/rfc822-headers")
		}
		h.Set("Content-Description", "Undelivered Message")
		if err := writePart(mw, h, content); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writePart adds a part to the report, declaring 8bit content (RFC 2045
// §6.2: without the header a part is taken as 7bit). Reply texts and
// addresses of an SMTPUTF8 message may carry UTF-8.
func writePart(mw *multipart.Writer, h textproto.MIMEHeader, content []byte) error {
	if has8bit(content) {
		h.Set("Content-Transfer-Encoding", "8bit")
	}
	w, err := mw.CreatePart(h)
	if err != nil {
		return err
	}
	_, err = w.Write(content)
	return err
}

var enhancedRe = regexp.MustCompile(`^[245]\.\d{1,3}\.\d{1,3}$`)

// dsnStatus picks the Status field (RFC 3464 §2.3.4, codes of RFC 3463):
// the reply's enhanced code when its class fits the action (a delay is
// never reported with a 2 or 5, nor a failure with a 2).
func dsnStatus(r RecipientState, kind NoticeKind) string {
	if e := r.Reply.Enhanced; enhancedRe.MatchString(e) && (e[0] == '4' || e[0] == '5' && kind == NoticeFailure) {
		return e
	}
	switch {
	case kind == NoticeDelay:
		return "4.0.0"
	case r.Reply.Code >= 500:
		return "5.0.0"
	default:
		// Given up at the end of the lifetime: 4.4.7, delivery time expired.
		return "4.4.7"
	}
}

func replyText(r RecipientState, kind NoticeKind) string {
	if !r.Reply.IsZero() {
		return r.Reply.String()
	}
	if kind == NoticeDelay {
		return "delivery temporarily deferred"
	}
	return "delivery time expired"
}

// sanitize makes s safe inside one header field: no line breaks or control
// characters, and 8-bit characters only where allowed.
func sanitize(s string, allow8bit bool) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\r' || r == '\n' || r == '\t':
			return ' '
		case r < 0x20 || r == 0x7f:
			return -1
		case r >= 0x80 && !allow8bit:
			return '?'
		}
		return r
	}, s)
}

func has8bit(p []byte) bool {
	for _, c := range p {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// originalContent reads the whole message, or only its header section
// (RFC 5322 §2.1, up to the first empty line).
func originalContent(body Body, full bool) ([]byte, error) {
	r := NewBodyReader(body)
	if full {
		p, err := io.ReadAll(r)
		if err != nil {
			return nil, err
		}
		if len(p) > 0 && !bytes.HasSuffix(p, []byte("\n")) {
			p = append(p, '\r', '\n')
		}
		return p, nil
	}
	var out bytes.Buffer
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimRight(line, "\r\n")) == 0 && len(line) > 0 {
			break
		}
		out.Write(line)
		if err == io.EOF {
			if len(line) > 0 {
				out.WriteString("\r\n")
			}
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return out.Bytes(), nil
}
