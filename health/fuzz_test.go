package health

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzSMTPReply feeds arbitrary server output to the SMTP reply reader: it
// must never panic, and what it accepts must be a well-formed reply.
func FuzzSMTPReply(f *testing.F) {
	for _, s := range []string{
		"220 mx.example.test ESMTP\r\n",
		"220-mx.example.test\r\n220 ready\r\n",
		"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n",
		"421 4.3.2 closing\r\n",
		"220\n",
		"220-a\r\n421 b\r\n",
		"2200 x\r\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(data), maxLine)
		code, lines, err := readReply(r)
		if err != nil {
			if code != 0 || lines != nil {
				t.Fatalf("error %v with code %d lines %q", err, code, lines)
			}
			return
		}
		if code < 100 || code > 599 || len(lines) == 0 || len(lines) > maxReplyLines {
			t.Fatalf("accepted code %d with %d lines", code, len(lines))
		}
		for _, l := range lines {
			if strings.ContainsAny(l, "\n") {
				t.Fatalf("line %q holds a newline", l)
			}
		}
	})
}

// FuzzIMAPResponse feeds arbitrary server output to the IMAP line reader
// and parser: no panic, literals are consumed whole, and a parsed line has
// a valid tag.
func FuzzIMAPResponse(f *testing.F) {
	for _, s := range []string{
		"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n",
		"* PREAUTH welcome\r\n",
		"* BYE too many connections\r\n",
		"* CAPABILITY IMAP4rev1 LOGINDISABLED\r\nh1 OK done\r\n",
		"* ID (\"name\" {13}\r\nh1 OK trapped)\r\n",
		"+ go ahead\r\n",
		"h1 NO [AUTHENTICATIONFAILED] bad\r\n",
		"* X {999999999}\r\n",
		"* X {3+}\r\nabc\r\n",
		"a*b OK\r\n",
		"\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(data), maxLine)
		for range 64 {
			line, err := readIMAPLine(r)
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrMalformed) {
					return
				}
				t.Fatalf("unexpected error class: %v", err)
			}
			if len(line) > maxProbeRead {
				t.Fatalf("line of %d bytes", len(line))
			}
			l, err := parseIMAPLine(line)
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("parse error %v is not ErrMalformed", err)
				}
				continue
			}
			if l.tag == "" || (l.tag != "+" && l.cond == "") || strings.ContainsAny(l.tag, " \r\n") {
				t.Fatalf("parsed %q as %+v", line, l)
			}
			if l.cond != strings.ToUpper(l.cond) {
				t.Fatalf("condition %q not upper case", l.cond)
			}
		}
	})
}
