package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPrepare(t *testing.T) {
	t.Parallel()
	base := prepareOptions{user: "u", domain: "host.example.org", now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	for _, tc := range []struct {
		name    string
		input   string
		extract bool
		args    []string
		rcpts   []string
		has     []string // substrings of the prepared message
		hasNot  []string
	}{
		{
			name: "folded Bcc removed with its continuation lines", extract: true,
			input: "To: a@example.org\r\nBcc: b@example.org,\r\n\tc@example.org\r\nSubject: s\r\n\r\nbody\r\n",
			rcpts: []string{"a@example.org", "b@example.org", "c@example.org"},
			has:   []string{"To: a@example.org\r\nSubject: s\r\n"}, hasNot: []string{"c@example.org", "Bcc"},
		},
		{
			name: "resent fields replace the original recipients", extract: true,
			input: "Resent-To: new@example.org\r\nResent-Bcc: hidden@example.org\r\nTo: old@example.org\r\nFrom: s@example.org\r\n\r\nb\r\n",
			rcpts: []string{"new@example.org", "hidden@example.org"},
			has:   []string{"To: old@example.org\r\n", "From: s@example.org\r\n"}, hasNot: []string{"hidden"},
		},
		{
			name: "groups and an empty Bcc", extract: true,
			input: "To: team: a@example.org, \"b c\"@example.org;, undisclosed-recipients:;\r\nBcc:\r\n\r\n",
			rcpts: []string{"a@example.org", "\"b c\"@example.org"},
		},
		{
			name: "duplicates across arguments and header", extract: true, args: []string{"A@EXAMPLE.ORG"},
			input: "To: A@example.org, a@Example.Org\r\n\r\n",
			rcpts: []string{"A@EXAMPLE.ORG", "a@Example.Org"},
		},
		{
			name: "without -t the header is not read", args: []string{"x@example.org"},
			input: "To: a@example.org\r\n\r\n",
			rcpts: []string{"x@example.org"},
		},
		{
			name: "no header at all: everything is body", args: []string{"x@example.org"},
			input: "just text\r\nmore\r\n",
			rcpts: []string{"x@example.org"},
			has:   []string{"From: u@host.example.org\r\n", "Date: Fri, 02 Jan 2026 03:04:05 +0000\r\n", "Message-ID: <20260102030405.", "@host.example.org>\r\n\r\njust text\r\nmore\r\n"},
		},
		{
			name: "mbox From line dropped", extract: true,
			input: "From someone Mon Jan  1 00:00:00 2024\r\nTo: a@example.org\r\n\r\nb\r\n",
			rcpts: []string{"a@example.org"}, hasNot: []string{"From someone"},
		},
		{
			name: "existing Date and Message-ID kept", extract: true,
			input:  "To: a@example.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\n",
			rcpts:  []string{"a@example.org"},
			hasNot: []string{"2026"},
		},
	} {
		o := base
		o.extract, o.args = tc.extract, tc.args
		p, err := prepare([]byte(tc.input), o)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !slices.Equal(p.rcpts, tc.rcpts) {
			t.Errorf("%s: recipients %q, want %q", tc.name, p.rcpts, tc.rcpts)
		}
		for _, s := range tc.has {
			if !strings.Contains(string(p.data), s) {
				t.Errorf("%s: message lacks %q:\n%s", tc.name, s, p.data)
			}
		}
		for _, s := range tc.hasNot {
			if strings.Contains(string(p.data), s) {
				t.Errorf("%s: message still has %q:\n%s", tc.name, s, p.data)
			}
		}
	}
}

func TestReadMessageLimit(t *testing.T) {
	t.Parallel()
	if _, err := readMessage(strings.NewReader(strings.Repeat("x", 100)+"\n"), true, 50); !errors.Is(err, errTooBig) {
		t.Errorf("over the limit: %v, want errTooBig", err)
	}
	// The end-of-input dot comes before the limit: fine.
	got, err := readMessage(strings.NewReader("a\n.\n"+strings.Repeat("x", 100)), false, 50)
	if err != nil || string(got) != "a\r\n" {
		t.Errorf("dot before the limit: %q, %v", got, err)
	}
	got, err = readMessage(strings.NewReader("no newline at the end"), true, 50)
	if err != nil || string(got) != "no newline at the end\r\n" {
		t.Errorf("last line without LF: %q, %v", got, err)
	}
}
