package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"regexp"
	"strings"
	"time"

	"github.com/hamail/hamail/smtpclient"
)

// errTooBig: the message on standard input is larger than the limit.
var errTooBig = errors.New("message exceeds the size limit")

// readMessage reads the message from r as sendmail does: lines end with LF or
// CRLF and leave as CRLF (RFC 5322 §2.1); unless ignoreDots is set, a line
// holding a single dot ends the input (sendmail without -i). A message
// larger than max octets fails with errTooBig.
func readMessage(r io.Reader, ignoreDots bool, max int64) ([]byte, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, max+1), 64<<10)
	var out bytes.Buffer
	var read int64
	for {
		line, err := br.ReadBytes('\n')
		read += int64(len(line))
		if read > max {
			return nil, errTooBig
		}
		if len(line) > 0 {
			content := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
			if !ignoreDots && string(content) == "." {
				return out.Bytes(), nil
			}
			out.Write(content)
			out.WriteString("\r\n")
			if int64(out.Len()) > max {
				return nil, errTooBig
			}
		}
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// field is one header field as it was written: its name and its raw lines,
// continuation lines included, each ending in CRLF.
type field struct {
	name string
	raw  []byte
}

// value is the field body unfolded (RFC 5322 §2.2.3) and trimmed.
func (f field) value() string {
	v := f.raw[len(f.name)+1:]
	v = bytes.ReplaceAll(v, []byte("\r\n"), nil)
	return strings.TrimSpace(string(v))
}

// is reports whether the field is named name, compared without regard to
// case (RFC 5322 §1.2.2).
func (f field) is(name string) bool { return strings.EqualFold(f.name, name) }

// message is a message split into its header fields and its body.
type message struct {
	fields []field
	// body is everything after the header: the blank line that separates
	// it and the body itself, or, when the header ended at a line that is
	// not a header field, the body without a separator (one is inserted
	// when the message is written back).
	body         []byte
	hasSeparator bool
}

// splitMessage splits CRLF-terminated data into header fields and body
// (RFC 5322 §2.1, §2.2). A leading mbox "From " line is dropped. The header
// ends at the first empty line, or at the first line that is neither a
// field nor a continuation; that line and the rest are the body.
func splitMessage(data []byte) *message {
	m := &message{}
	rest := data
	if bytes.HasPrefix(rest, []byte("From ")) {
		if i := bytes.Index(rest, []byte("\r\n")); i >= 0 {
			rest = rest[i+2:]
		}
	}
	for len(rest) > 0 {
		end := bytes.Index(rest, []byte("\r\n"))
		if end < 0 {
			end = len(rest)
		} else {
			end += 2
		}
		line := rest[:end]
		switch {
		case bytes.Equal(line, []byte("\r\n")):
			m.body, m.hasSeparator = rest, true
			return m
		case (line[0] == ' ' || line[0] == '\t') && len(m.fields) > 0:
			last := &m.fields[len(m.fields)-1]
			last.raw = append(last.raw, line...)
		default:
			name, ok := fieldName(line)
			if !ok {
				m.body = rest
				return m
			}
			m.fields = append(m.fields, field{name: name, raw: append([]byte(nil), line...)})
		}
		rest = rest[end:]
	}
	return m
}

// fieldName returns the name of a header field line: printable US-ASCII
// except the colon, followed by a colon (RFC 5322 §2.2, §3.6.8).
func fieldName(line []byte) (string, bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return "", false
	}
	for _, c := range line[:i] {
		if c < 33 || c > 126 {
			return "", false
		}
	}
	return string(line[:i]), true
}

// bytes writes the message back with CRLF line endings.
func (m *message) bytes() []byte {
	var b bytes.Buffer
	for _, f := range m.fields {
		b.Write(f.raw)
		if !bytes.HasSuffix(f.raw, []byte("\r\n")) {
			b.WriteString("\r\n")
		}
	}
	if !m.hasSeparator {
		b.WriteString("\r\n")
	}
	b.Write(m.body)
	return b.Bytes()
}

// has reports whether a field named name is present.
func (m *message) has(name string) bool {
	for _, f := range m.fields {
		if f.is(name) {
			return true
		}
	}
	return false
}

// remove drops every field named name.
func (m *message) remove(name string) {
	kept := m.fields[:0]
	for _, f := range m.fields {
		if !f.is(name) {
			kept = append(kept, f)
		}
	}
	m.fields = kept
}

// add appends a field at the end of the header.
func (m *message) add(name, value string) {
	m.fields = append(m.fields, field{name: name, raw: []byte(name + ": " + value + "\r\n")})
}

// addressError is a malformed address, in a header or an argument.
type addressError struct {
	where string // "To header", "argument", "-f"
	addr  string
	err   error
}

func (e *addressError) Error() string {
	return fmt.Sprintf("%s: bad address %q: %v", e.where, e.addr, e.err)
}

func (e *addressError) Unwrap() error { return e.err }

// localPart matches a bare local part (RFC 5322 §3.4.1 dot-atom text), such
// as cron's "root", which is qualified with the local domain.
var localPart = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")

// addressParser parses address lists (RFC 5322 §3.4) with net/mail. Display
// names are not used, so encoded words in any charset are accepted as they
// are instead of failing the whole list.
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// parseAddressList returns the envelope forms of the mailboxes in an address
// list (groups included, RFC 5322 §3.4). Bare local parts ("root") are
// qualified with domain, as sendmail and Postfix do. An empty list (an empty
// Bcc field, an empty group) gives nothing.
func parseAddressList(where, list, domain string) ([]string, error) {
	list = strings.TrimSpace(list)
	if list == "" {
		return nil, nil
	}
	addrs, err := addressParser.ParseList(list)
	if err != nil {
		parts := strings.Split(list, ",")
		qualified := make([]string, 0, len(parts))
		for _, p := range parts {
			p = strings.TrimSpace(p)
			if !localPart.MatchString(p) || domain == "" {
				return nil, &addressError{where: where, addr: list, err: err}
			}
			qualified = append(qualified, p+"@"+domain)
		}
		if addrs, err = addressParser.ParseList(strings.Join(qualified, ", ")); err != nil {
			return nil, &addressError{where: where, addr: list, err: err}
		}
	}
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		env, err := envelopeAddress(a.Address)
		if err != nil {
			return nil, &addressError{where: where, addr: a.Address, err: err}
		}
		out = append(out, env)
	}
	return out, nil
}

// envelopeAddress turns the addr-spec net/mail returns (local part unquoted)
// into an RFC 5321 §4.1.2 mailbox, quoting the local part again when needed,
// and checks it as smtpclient will.
func envelopeAddress(spec string) (string, error) {
	s := strings.TrimSuffix(strings.TrimPrefix((&mail.Address{Address: spec}).String(), "<"), ">")
	a, err := smtpclient.ParseAddress(s)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

// prepareOptions say how to turn the input into an envelope and a message.
type prepareOptions struct {
	// extract: take recipients from the header (-t).
	extract bool
	// args are the recipients given as arguments.
	args []string
	// sender is the envelope sender (-f), "" for the default; nullSender
	// is "-f <>".
	sender     string
	nullSender bool
	// fullName is the display name of an added From field (-F).
	fullName string
	// user and domain make the default sender and qualify bare names.
	user, domain string
	now          time.Time
}

// prepared is the envelope and the message ready to send.
type prepared struct {
	from     string // "" is the null reverse-path
	rcpts    []string
	data     []byte
	eightBit bool
}

// prepare extracts the recipients and completes the header: the Bcc fields
// are removed (their recipients stay in the envelope), and From, Date and
// Message-ID are added when missing (RFC 5322 §3.6).
func prepare(input []byte, o prepareOptions) (*prepared, error) {
	m := splitMessage(input)
	p := &prepared{}

	defaultSender := o.user + "@" + o.domain
	switch {
	case o.nullSender:
		p.from = ""
	case o.sender != "":
		list, err := parseAddressList("-f", o.sender, o.domain)
		if err != nil {
			return nil, err
		}
		if len(list) != 1 {
			return nil, &addressError{where: "-f", addr: o.sender, err: errors.New("one address expected")}
		}
		p.from = list[0]
	default:
		a, err := envelopeAddress(defaultSender)
		if err != nil {
			return nil, &addressError{where: "default sender (set -f)", addr: defaultSender, err: err}
		}
		p.from = a
	}

	seen := map[string]bool{}
	addRcpt := func(a string) {
		key := a
		if i := strings.LastIndexByte(a, '@'); i >= 0 {
			key = a[:i] + strings.ToLower(a[i:])
		}
		if !seen[key] {
			seen[key] = true
			p.rcpts = append(p.rcpts, a)
		}
	}
	for _, arg := range o.args {
		list, err := parseAddressList("argument", arg, o.domain)
		if err != nil {
			return nil, err
		}
		for _, a := range list {
			addRcpt(a)
		}
	}
	if o.extract {
		// With resent fields, the message is being re-sent to the
		// addresses they name (RFC 5322 §3.6.6), not to the original ones.
		names := []string{"To", "Cc", "Bcc"}
		if m.has("Resent-To") || m.has("Resent-Cc") || m.has("Resent-Bcc") {
			names = []string{"Resent-To", "Resent-Cc", "Resent-Bcc"}
		}
		for _, f := range m.fields {
			for _, n := range names {
				if !f.is(n) {
					continue
				}
				list, err := parseAddressList(f.name+" header", f.value(), o.domain)
				if err != nil {
					return nil, err
				}
				for _, a := range list {
					addRcpt(a)
				}
			}
		}
	}
	// Blind copies must not show the other recipients (RFC 5322 §3.6.3).
	m.remove("Bcc")
	m.remove("Resent-Bcc")

	if !m.has("From") {
		addr := p.from
		if addr == "" {
			addr = defaultSender
		}
		from := addr
		if o.fullName != "" {
			from = (&mail.Address{Name: o.fullName, Address: addr}).String()
		}
		m.add("From", from)
	}
	if !m.has("Date") {
		m.add("Date", o.now.Format(time.RFC1123Z))
	}
	if !m.has("Message-ID") {
		var r [12]byte
		_, _ = rand.Read(r[:])
		m.add("Message-ID", fmt.Sprintf("<%s.%s@%s>", o.now.UTC().Format("20060102150405"), hex.EncodeToString(r[:]), o.domain))
	}
	p.data = m.bytes()
	for _, c := range p.data {
		if c >= 0x80 {
			p.eightBit = true
			break
		}
	}
	return p, nil
}
