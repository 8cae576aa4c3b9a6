package smtpwire

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// maxPath is the longest reverse-path or forward-path, angle brackets
// included (RFC 5321 §4.5.3.1.3).
const maxPath = 256

// checkLine rejects what would end or corrupt a command line.
func checkLine(what, s string) error {
	if i := strings.IndexAny(s, "\r\n\x00"); i >= 0 {
		return invalid("%s contains CR, LF or NUL at byte %d", what, i)
	}
	return nil
}

// checkPath validates an address put between angle brackets.
func checkPath(what, addr string) error {
	if err := checkLine(what, addr); err != nil {
		return err
	}
	if strings.ContainsAny(addr, "<>") {
		return invalid("%s %q contains '<' or '>'", what, addr)
	}
	if len(addr)+2 > maxPath {
		return invalid("%s is %d bytes, longer than the %d allowed", what, len(addr), maxPath-2)
	}
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// validateMail checks the sender and options without the server's
// extensions (so before any I/O).
func validateMail(from string, o *smtp.MailOptions) error {
	if from != "" {
		if err := checkPath("sender", from); err != nil {
			return err
		}
	}
	if o == nil {
		return nil
	}
	switch o.Body {
	case "", smtp.Body7Bit, smtp.Body8BitMIME:
	case smtp.BodyBinaryMIME:
		return invalid("BODY=BINARYMIME needs BDAT, which is not implemented")
	default:
		return invalid("BODY=%q", o.Body)
	}
	switch o.Return {
	case "", smtp.DSNReturnFull, smtp.DSNReturnHeaders:
	default:
		return invalid("RET=%q", o.Return)
	}
	if o.Size < 0 {
		return invalid("negative SIZE")
	}
	if o.EnvelopeID != "" && !isPrintableASCII(o.EnvelopeID) {
		return invalid("ENVID must be printable ASCII (RFC 3461 §4.4)")
	}
	if o.Auth != nil {
		if err := checkPath("AUTH= mailbox", *o.Auth); err != nil {
			return err
		}
	}
	return nil
}

func validateRcpt(i int, r Recipient) error {
	what := "recipient " + strconv.Itoa(i)
	if r.Addr == "" {
		return invalid("%s is empty", what)
	}
	if err := checkPath(what, r.Addr); err != nil {
		return err
	}
	o := r.Opts
	if o == nil {
		return nil
	}
	seen := map[smtp.DSNNotify]bool{}
	for _, n := range o.Notify {
		switch n {
		case smtp.DSNNotifyNever, smtp.DSNNotifyDelayed, smtp.DSNNotifyFailure, smtp.DSNNotifySuccess:
		default:
			return invalid("%s: NOTIFY=%q", what, n)
		}
		if seen[n] {
			return invalid("%s: NOTIFY lists %s twice", what, n)
		}
		seen[n] = true
	}
	if seen[smtp.DSNNotifyNever] && len(seen) > 1 {
		return invalid("%s: NOTIFY=NEVER with other values (RFC 3461 §4.1)", what)
	}
	if o.OriginalRecipient != "" {
		if err := checkLine(what+" ORCPT", o.OriginalRecipient); err != nil {
			return err
		}
		switch o.OriginalRecipientType {
		case smtp.DSNAddressTypeRFC822:
			if !isPrintableASCII(o.OriginalRecipient) {
				return invalid("%s: ORCPT rfc822 address must be printable ASCII", what)
			}
		case smtp.DSNAddressTypeUTF8:
		default:
			return invalid("%s: ORCPT address type %q", what, o.OriginalRecipientType)
		}
	}
	if o.MTPriority != nil && (*o.MTPriority < -9 || *o.MTPriority > 9) {
		return invalid("%s: MT-PRIORITY outside -9..9", what)
	}
	return nil
}

// mailCommand builds MAIL FROM with the parameters the server supports.
// Parameters whose extension is missing are an ErrNotAdvertised error when
// the message cannot be sent correctly without them (SMTPUTF8, 8BITMIME,
// REQUIRETLS) and are left out when they are only advisory (SIZE, DSN
// parameters, AUTH=; RFC 3461 §4 leaves DSN to the relay).
//
// utf8 says that some address of the transaction is not ASCII, which needs
// SMTPUTF8 on MAIL (RFC 6531 §3.4).
func (c *Conn) mailCommand(from string, o *smtp.MailOptions, utf8 bool) (string, error) {
	var b strings.Builder
	b.Grow(64 + len(from))
	b.WriteString("MAIL FROM:<")
	b.WriteString(from)
	b.WriteByte('>')
	if o == nil {
		o = &smtp.MailOptions{}
	}
	if o.Body != "" {
		if _, ok := c.Extension("8BITMIME"); ok {
			b.WriteString(" BODY=" + string(o.Body))
		} else if o.Body == smtp.Body8BitMIME {
			return "", fmt.Errorf("%w: 8BITMIME (BODY=8BITMIME)", ErrNotAdvertised)
		}
	}
	if o.Size > 0 {
		if _, ok := c.Extension("SIZE"); ok {
			b.WriteString(" SIZE=" + strconv.FormatInt(o.Size, 10))
		}
	}
	if o.UTF8 || utf8 {
		if _, ok := c.Extension("SMTPUTF8"); !ok {
			return "", fmt.Errorf("%w: SMTPUTF8 (RFC 6531), needed for a non-ASCII address", ErrNotAdvertised)
		}
		b.WriteString(" SMTPUTF8")
	}
	if o.RequireTLS {
		if _, ok := c.Extension("REQUIRETLS"); !ok {
			return "", fmt.Errorf("%w: REQUIRETLS (RFC 8689)", ErrNotAdvertised)
		}
		b.WriteString(" REQUIRETLS")
	}
	if _, ok := c.Extension("DSN"); ok {
		if o.Return != "" {
			b.WriteString(" RET=" + string(o.Return))
		}
		if o.EnvelopeID != "" {
			b.WriteString(" ENVID=" + encodeXtext(o.EnvelopeID))
		}
	}
	if o.Auth != nil {
		if _, ok := c.Extension("AUTH"); ok {
			v := "<>"
			if *o.Auth != "" {
				v = encodeXtext(*o.Auth)
			}
			b.WriteString(" AUTH=" + v)
		}
	}
	return b.String(), nil
}

// rcptCommand builds RCPT TO; like mailCommand, DSN and other advisory
// parameters are left out when the server lacks the extension.
func (c *Conn) rcptCommand(r Recipient) (string, error) {
	var b strings.Builder
	b.Grow(32 + len(r.Addr))
	b.WriteString("RCPT TO:<")
	b.WriteString(r.Addr)
	b.WriteByte('>')
	if !isASCII(r.Addr) {
		if _, ok := c.Extension("SMTPUTF8"); !ok {
			return "", fmt.Errorf("%w: SMTPUTF8 (RFC 6531), needed for a non-ASCII address", ErrNotAdvertised)
		}
	}
	o := r.Opts
	if o == nil {
		return b.String(), nil
	}
	if _, ok := c.Extension("DSN"); ok {
		if len(o.Notify) > 0 {
			b.WriteString(" NOTIFY=")
			for i, n := range o.Notify {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString(string(n))
			}
		}
		if o.OriginalRecipient != "" {
			var enc string
			if o.OriginalRecipientType == smtp.DSNAddressTypeUTF8 {
				if _, ok := c.Extension("SMTPUTF8"); ok {
					enc = encodeUTF8AddrUnitext(o.OriginalRecipient)
				} else {
					enc = encodeUTF8AddrXtext(o.OriginalRecipient)
				}
			} else {
				enc = encodeXtext(o.OriginalRecipient)
			}
			b.WriteString(" ORCPT=" + string(o.OriginalRecipientType) + ";" + enc)
		}
	}
	if _, ok := c.Extension("RRVS"); ok && !o.RequireRecipientValidSince.IsZero() {
		b.WriteString(" RRVS=" + o.RequireRecipientValidSince.Format(time.RFC3339))
	}
	if _, ok := c.Extension("DELIVERBY"); ok && o.DeliverBy != nil {
		fmt.Fprintf(&b, " BY=%d;%s", int(o.DeliverBy.Time.Seconds()), o.DeliverBy.Mode)
		if o.DeliverBy.Trace {
			b.WriteByte('T')
		}
	}
	if _, ok := c.Extension("MT-PRIORITY"); ok && o.MTPriority != nil {
		b.WriteString(" MT-PRIORITY=" + strconv.Itoa(*o.MTPriority))
	}
	return b.String(), nil
}

// encodeXtext encodes per RFC 3461 §4: "+", "=" and anything outside
// printable ASCII become "+XX".
func encodeXtext(raw string) string {
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		ch := raw[i]
		if ch >= '!' && ch <= '~' && ch != '+' && ch != '=' {
			b.WriteByte(ch)
			continue
		}
		fmt.Fprintf(&b, "+%02X", ch)
	}
	return b.String()
}

// encodeUTF8AddrXtext encodes per RFC 6533 §3 (utf-8-addr-xtext).
func encodeUTF8AddrXtext(raw string) string {
	var b strings.Builder
	for _, ch := range raw {
		if ch >= '!' && ch <= '~' && ch != '+' && ch != '=' {
			b.WriteRune(ch)
			continue
		}
		fmt.Fprintf(&b, `\x{%X}`, ch)
	}
	return b.String()
}

// encodeUTF8AddrUnitext encodes per RFC 6533 §3 (utf-8-addr-unitext).
func encodeUTF8AddrUnitext(raw string) string {
	var b strings.Builder
	for _, ch := range raw {
		switch {
		case ch >= '!' && ch <= '~' && ch != '+' && ch != '=':
			b.WriteRune(ch)
		case ch <= 0x7F:
			fmt.Fprintf(&b, `\x{%X}`, ch)
		default:
			b.WriteRune(ch)
		}
	}
	return b.String()
}
