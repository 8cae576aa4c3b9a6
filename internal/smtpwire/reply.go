package smtpwire

import (
	"bufio"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// Reply is a complete server reply (RFC 5321 §4.2), possibly multi-line.
type Reply struct {
	Code int
	// EnhancedCode is the RFC 3463 status code found at the start of the
	// reply text (RFC 2034), or smtp.EnhancedCodeNotSet when there is none.
	EnhancedCode smtp.EnhancedCode
	// Message is the text of every line, joined by "\n", with the enhanced
	// code removed from the lines that carried it.
	Message string
}

// Positive reports whether the code is 2xx or 3xx.
func (r *Reply) Positive() bool { return r.Code >= 200 && r.Code < 400 }

// Err returns nil for a positive reply, else the reply as an
// *smtp.SMTPError (whose Temporary method tells 4xx from 5xx).
func (r *Reply) Err() error {
	if r == nil || r.Positive() {
		return nil
	}
	return r.SMTPError()
}

// SMTPError returns the reply as an *smtp.SMTPError, whatever its code.
func (r *Reply) SMTPError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: r.EnhancedCode, Message: r.Message}
}

func (r *Reply) String() string {
	if r.EnhancedCode == smtp.EnhancedCodeNotSet {
		return fmt.Sprintf("%d %s", r.Code, r.Message)
	}
	ec := r.EnhancedCode
	return fmt.Sprintf("%d %d.%d.%d %s", r.Code, ec[0], ec[1], ec[2], r.Message)
}

// replyReader reads replies with bounded memory: no line may exceed
// maxLine bytes (without CRLF) and no reply maxLines lines.
type replyReader struct {
	r        *bufio.Reader // its size is at least maxLine+2
	maxLine  int
	maxLines int
	lines    []string // reused between replies
}

// readReply reads one reply. onLine, if not nil, sees each raw line.
func (rr *replyReader) readReply(onLine func(string)) (*Reply, error) {
	rr.lines = rr.lines[:0]
	code := 0
	for {
		raw, err := rr.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, protocolErr("reply line longer than %d bytes", rr.maxLine)
		}
		if err != nil {
			return nil, err
		}
		line := strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r")
		if len(line) > rr.maxLine {
			return nil, protocolErr("reply line longer than %d bytes", rr.maxLine)
		}
		if onLine != nil {
			onLine(line)
		}
		c, more, text, err := parseReplyLine(line)
		if err != nil {
			return nil, err
		}
		if code != 0 && c != code {
			return nil, protocolErr("reply code changed from %d to %d within a reply", code, c)
		}
		code = c
		rr.lines = append(rr.lines, text)
		if !more {
			break
		}
		if len(rr.lines) >= rr.maxLines {
			return nil, protocolErr("reply longer than %d lines", rr.maxLines)
		}
	}
	return buildReply(code, rr.lines), nil
}

// parseReplyLine splits "250-text" / "250 text" / "250".
func parseReplyLine(line string) (code int, more bool, text string, err error) {
	if len(line) < 3 {
		return 0, false, "", protocolErr("short reply line %q", line)
	}
	if line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' || line[2] < '0' || line[2] > '9' {
		return 0, false, "", protocolErr("invalid reply code in %q", truncate(line))
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if len(line) == 3 {
		return code, false, "", nil
	}
	switch line[3] {
	case ' ':
	case '-':
		more = true
	default:
		return 0, false, "", protocolErr("invalid reply separator in %q", truncate(line))
	}
	return code, more, line[4:], nil
}

func buildReply(code int, lines []string) *Reply {
	r := &Reply{Code: code}
	class := code / 100
	var b strings.Builder
	for i, l := range lines {
		if class != 3 {
			if ec, rest, ok := parseEnhancedCode(l, class); ok {
				if r.EnhancedCode == smtp.EnhancedCodeNotSet {
					r.EnhancedCode = ec
				}
				l = rest
			}
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(l)
	}
	r.Message = b.String()
	return r
}

// parseEnhancedCode recognises "class.subject.detail" (RFC 3463 §2: class
// 2, 4 or 5 matching the reply, subject and detail of 1 to 3 digits)
// followed by a space or the end of the text.
func parseEnhancedCode(s string, class int) (smtp.EnhancedCode, string, bool) {
	var ec smtp.EnhancedCode
	if len(s) < 5 || int(s[0]-'0') != class || s[1] != '.' {
		return ec, s, false
	}
	ec[0] = class
	i := 2
	for part := 1; part <= 2; part++ {
		n, digits := 0, 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' && digits < 4 {
			n = n*10 + int(s[i]-'0')
			i++
			digits++
		}
		if digits == 0 || digits > 3 {
			return smtp.EnhancedCode{}, s, false
		}
		ec[part] = n
		if part == 1 {
			if i >= len(s) || s[i] != '.' {
				return smtp.EnhancedCode{}, s, false
			}
			i++
		}
	}
	switch {
	case i == len(s):
		return ec, "", true
	case s[i] == ' ':
		return ec, s[i+1:], true
	}
	return smtp.EnhancedCode{}, s, false
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
