package health

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// imapLine is the start of one IMAP response line (RFC 9051 §7): a tag
// ("*" for untagged data, "+" for a continuation request, else the tag of
// a command), a condition or data keyword in upper case ("OK", "NO",
// "BAD", "BYE", "PREAUTH", "CAPABILITY", ...), and the rest.
type imapLine struct {
	tag  string
	cond string
	rest string
}

func parseIMAPLine(line string) (imapLine, error) {
	tag, rest, _ := strings.Cut(line, " ")
	if tag == "" {
		return imapLine{}, fmt.Errorf("%w: IMAP line without a tag: %q", ErrMalformed, line)
	}
	if tag == "+" {
		return imapLine{tag: tag, rest: rest}, nil
	}
	for i := 0; i < len(tag); i++ {
		// tag = 1*<any ASTRING-CHAR except "+"> (RFC 9051 §9); "*" only
		// alone.
		c := tag[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`(){%"\+`, c) >= 0 || (c == '*' && tag != "*") {
			return imapLine{}, fmt.Errorf("%w: bad IMAP tag in %q", ErrMalformed, line)
		}
	}
	cond, rest, _ := strings.Cut(rest, " ")
	if cond == "" {
		return imapLine{}, fmt.Errorf("%w: IMAP line without a keyword: %q", ErrMalformed, line)
	}
	return imapLine{tag: tag, cond: strings.ToUpper(cond), rest: rest}, nil
}

// literalSize returns n when line ends with a literal announcement "{n}"
// (or "{n+}", RFC 7888), meaning n octets and then more of the line follow.
func literalSize(line string) (int, bool, error) {
	if !strings.HasSuffix(line, "}") {
		return 0, false, nil
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false, nil
	}
	digits := strings.TrimSuffix(line[i+1:len(line)-1], "+")
	n, err := strconv.Atoi(digits)
	if err != nil || n < 0 || digits == "" || digits[0] == '+' || digits[0] == '-' {
		return 0, false, nil
	}
	if n > maxProbeRead {
		return 0, false, fmt.Errorf("%w: literal of %d octets", ErrMalformed, n)
	}
	return n, true, nil
}

// readIMAPLine reads one response line, literals included (RFC 9051
// §4.3), so that a literal's content is never taken for a response.
func readIMAPLine(r *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		line, err := readLine(r)
		if err != nil {
			return "", err
		}
		b.WriteString(line)
		n, ok, err := literalSize(line)
		if err != nil {
			return "", err
		}
		if !ok {
			return b.String(), nil
		}
		if b.Len()+n > maxProbeRead {
			return "", fmt.Errorf("%w: response longer than %d octets", ErrMalformed, maxProbeRead)
		}
		b.WriteString("\r\n")
		if _, err := io.CopyN(&b, r, int64(n)); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
	}
}

func (s *session) imapLine(step string) (imapLine, error) {
	line, err := readIMAPLine(s.r)
	if err != nil {
		return imapLine{}, s.fail(step, 0, "", err)
	}
	l, err := parseIMAPLine(line)
	if err != nil {
		return imapLine{}, s.fail(step, 0, "", err)
	}
	return l, nil
}

// imapResult reads responses up to the tagged completion of tag. It
// returns the capabilities of any CAPABILITY response seen. An untagged
// BYE fails the step unless byeOK (LOGOUT).
func (s *session) imapResult(step, tag string, byeOK bool) (map[string]bool, error) {
	var caps map[string]bool
	for {
		l, err := s.imapLine(step)
		if err != nil {
			return nil, err
		}
		switch {
		case l.tag == "*" && l.cond == "BYE":
			if !byeOK {
				return nil, s.fail(step, 0, "BYE "+l.rest, ErrRejected)
			}
		case l.tag == "*" && l.cond == "CAPABILITY":
			caps = parseCaps(l.rest)
		case l.tag == "*":
			// Other untagged data is allowed at any time (§7).
		case l.tag == tag && l.cond == "OK":
			return caps, nil
		case l.tag == tag:
			return nil, s.fail(step, 0, l.cond+" "+l.rest, ErrRejected)
		default:
			return nil, s.fail(step, 0, "", fmt.Errorf("%w: unexpected %q response", ErrMalformed, l.tag))
		}
	}
}

func parseCaps(s string) map[string]bool {
	caps := make(map[string]bool)
	for _, c := range strings.Fields(s) {
		caps[strings.ToUpper(c)] = true
	}
	return caps
}

func (s *session) imapCommand(step, tag, cmd string, byeOK bool) (map[string]bool, error) {
	if err := s.write(step, tag+" "+cmd+"\r\n"); err != nil {
		return nil, err
	}
	return s.imapResult(step, tag, byeOK)
}

// imapString encodes an astring argument (RFC 9051 §4.3): a quoted string
// when it is 7-bit text, else (8-bit) a literal, returned as its octets.
func imapString(v string) (quoted string, literal bool) {
	for i := 0; i < len(v); i++ {
		if v[i] >= 0x80 {
			return v, true
		}
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(v) + `"`, false
}

// login sends LOGIN (RFC 9051 §6.2.3), using synchronizing literals for
// 8-bit credentials: each waits for the server's "+" before its octets.
func (s *session) login(tag string) error {
	const step = "login"
	line := tag + " LOGIN"
	for _, arg := range []string{s.t.Username, s.t.Password} {
		v, lit := imapString(arg)
		if !lit {
			line += " " + v
			continue
		}
		if err := s.write(step, line+" {"+strconv.Itoa(len(v))+"}\r\n"); err != nil {
			return err
		}
		l, err := s.imapLine(step)
		if err != nil {
			return err
		}
		if l.tag != "+" {
			return s.fail(step, 0, l.cond+" "+l.rest, ErrRejected)
		}
		line = v
	}
	if err := s.write(step, line+"\r\n"); err != nil {
		return err
	}
	_, err := s.imapResult(step, tag, false)
	return err
}

// probeIMAP: greeting "* OK" or "* PREAUTH" ("* BYE" is a refusal, RFC
// 9051 §7.1.5), CAPABILITY, STARTTLS when asked (then CAPABILITY again, as
// §6.2.1 requires), LOGIN when credentials are given, LOGOUT.
func (p *NetProber) probeIMAP(ctx context.Context, t Target) error {
	s, err := p.connect(ctx, t)
	if err != nil {
		return err
	}
	defer s.close()
	g, err := s.imapLine("greeting")
	if err != nil {
		return err
	}
	if g.tag != "*" || (g.cond != "OK" && g.cond != "PREAUTH") {
		return s.fail("greeting", 0, strings.TrimSpace(g.cond+" "+g.rest), ErrBadGreeting)
	}
	preauth := g.cond == "PREAUTH"
	caps, err := s.imapCommand("capability", "h1", "CAPABILITY", false)
	if err != nil {
		return err
	}
	if t.TLS == StartTLS {
		// STARTTLS is only valid before authentication (§6.2.1).
		if preauth || !caps["STARTTLS"] {
			return s.fail("starttls", 0, "", ErrNoStartTLS)
		}
		if _, err := s.imapCommand("starttls", "h2", "STARTTLS", false); err != nil {
			return err
		}
		if s.r.Buffered() > 0 {
			return s.fail("starttls", 0, "", fmt.Errorf("%w: data after the STARTTLS reply", ErrMalformed))
		}
		if err := s.startTLS(ctx); err != nil {
			return err
		}
		if caps, err = s.imapCommand("capability", "h3", "CAPABILITY", false); err != nil {
			return err
		}
	}
	if t.Username != "" && !preauth {
		if caps["LOGINDISABLED"] {
			return s.fail("login", 0, "", ErrLoginDisabled)
		}
		if err := s.login("h4"); err != nil {
			return err
		}
	}
	if err := s.write("logout", "h5 LOGOUT\r\n"); err != nil {
		return err
	}
	// The server answers "* BYE" and the tagged OK (§6.1.3); one that
	// just closes has still served the probe.
	_, err = s.imapResult("logout", "h5", true)
	var pe *ProbeError
	if errors.As(err, &pe) && errors.Is(pe.Err, io.EOF) {
		return nil
	}
	return err
}
