package health

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxReplyLines bounds the lines of one SMTP reply (an EHLO reply has one
// per extension).
const maxReplyLines = 128

// parseReplyLine splits one SMTP reply line (RFC 5321 §4.2): three digits,
// then "-" if more lines follow, or " " (or nothing) on the last line.
func parseReplyLine(line string) (code int, more bool, text string, err error) {
	if len(line) < 3 {
		return 0, false, "", fmt.Errorf("%w: short reply line %q", ErrMalformed, line)
	}
	for i := range 3 {
		c := line[i]
		// §4.2: the first digit is 2-5, the second 0-5; be lenient and
		// take any digits, but a code starts with 1-5.
		if c < '0' || c > '9' || (i == 0 && (c < '1' || c > '5')) {
			return 0, false, "", fmt.Errorf("%w: bad reply code in %q", ErrMalformed, line)
		}
		code = code*10 + int(c-'0')
	}
	switch {
	case len(line) == 3:
		return code, false, "", nil
	case line[3] == ' ':
		return code, false, line[4:], nil
	case line[3] == '-':
		return code, true, line[4:], nil
	default:
		return 0, false, "", fmt.Errorf("%w: bad separator in %q", ErrMalformed, line)
	}
}

// readReply reads one possibly multi-line SMTP reply.
func readReply(r *bufio.Reader) (code int, lines []string, err error) {
	for {
		line, err := readLine(r)
		if err != nil {
			return 0, nil, err
		}
		c, more, text, err := parseReplyLine(line)
		if err != nil {
			return 0, nil, err
		}
		if code != 0 && c != code {
			return 0, nil, fmt.Errorf("%w: reply code changed from %d to %d", ErrMalformed, code, c)
		}
		code = c
		lines = append(lines, text)
		if !more {
			return code, lines, nil
		}
		if len(lines) >= maxReplyLines {
			return 0, nil, fmt.Errorf("%w: more than %d reply lines", ErrMalformed, maxReplyLines)
		}
	}
}

func (s *session) reply(step string) (int, []string, error) {
	code, lines, err := readReply(s.r)
	if err != nil {
		return 0, nil, s.fail(step, 0, "", err)
	}
	return code, lines, nil
}

// command sends line and reads the reply; a reply outside 2xx fails the
// step with ErrRejected.
func (s *session) command(step, line string) (int, []string, error) {
	if err := s.write(step, line+"\r\n"); err != nil {
		return 0, nil, err
	}
	code, lines, err := s.reply(step)
	if err != nil {
		return 0, nil, err
	}
	if code/100 != 2 {
		return code, lines, s.fail(step, code, strings.Join(lines, " "), ErrRejected)
	}
	return code, lines, nil
}

// ehlo says EHLO and returns the extension keywords (RFC 5321 §4.1.1.1).
// A server that rejects EHLO with 500/502 (command not recognized) gets
// HELO instead (§3.2) unless TLS is required, which needs extensions.
func (s *session) ehlo() (map[string]bool, error) {
	name := s.t.EHLOName
	code, lines, err := s.command("ehlo", "EHLO "+name)
	if err != nil {
		if (code == 500 || code == 502) && s.t.TLS != StartTLS {
			_, _, err = s.command("helo", "HELO "+name)
			return nil, err
		}
		return nil, err
	}
	exts := make(map[string]bool, len(lines))
	for _, l := range lines[1:] {
		kw, _, _ := strings.Cut(l, " ")
		exts[strings.ToUpper(kw)] = true
	}
	return exts, nil
}

// probeSMTP: greeting 220 (RFC 5321 §4.3.1: 554 means no service, and 421
// is a closing transmission channel, both down), EHLO, STARTTLS when asked
// (RFC 3207: the EHLO after the handshake is required, §4.2), QUIT.
func (p *NetProber) probeSMTP(ctx context.Context, t Target) error {
	s, err := p.connect(ctx, t)
	if err != nil {
		return err
	}
	defer s.close()
	code, lines, err := s.reply("greeting")
	if err != nil {
		return err
	}
	if code != 220 {
		return s.fail("greeting", code, strings.Join(lines, " "), ErrBadGreeting)
	}
	exts, err := s.ehlo()
	if err != nil {
		return err
	}
	if t.TLS == StartTLS {
		if !exts["STARTTLS"] {
			return s.fail("starttls", 0, "", ErrNoStartTLS)
		}
		if _, _, err := s.command("starttls", "STARTTLS"); err != nil {
			return err
		}
		// Nothing the server sent before the handshake may be used
		// (RFC 3207 §4.2); the reader is replaced by startTLS.
		if s.r.Buffered() > 0 {
			return s.fail("starttls", 0, "", fmt.Errorf("%w: data after the STARTTLS reply", ErrMalformed))
		}
		if err := s.startTLS(ctx); err != nil {
			return err
		}
		if _, err := s.ehlo(); err != nil {
			return err
		}
	}
	if err := s.write("quit", "QUIT\r\n"); err != nil {
		return err
	}
	// RFC 5321 §4.1.1.10 requires 221, but a server that closes at once
	// has still served the probe.
	code, lines, err = readReply(s.r)
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return s.fail("quit", 0, "", err)
	case code/100 != 2:
		return s.fail("quit", code, strings.Join(lines, " "), ErrRejected)
	}
	return nil
}
