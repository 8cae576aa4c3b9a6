package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestHeaderCompleter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	const added = "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <20261123100000.abc@submit.example.test>\r\n"
	for _, tc := range []struct{ name, in, want string }{
		{"both missing", "Subject: x\r\n\r\nbody\r\n", "Subject: x\r\n" + added + "\r\nbody\r\n"},
		{"both present", "date: Sun, 1 Jan 2026 00:00:00 +0000\r\nMESSAGE-ID: <a@b>\r\n\r\nbody\r\n", "date: Sun, 1 Jan 2026 00:00:00 +0000\r\nMESSAGE-ID: <a@b>\r\n\r\nbody\r\n"},
		{"only Date missing", "Message-ID: <a@b>\r\nSubject: folded\r\n and continued\r\n\r\n", "Message-ID: <a@b>\r\nSubject: folded\r\n and continued\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"},
		{"no header", "just a body line\r\n\r\nmore\r\n", "just a body line\r\n\r\nmore\r\n"},
		{"no empty line", "Subject: x\r\n", "Subject: x\r\n"},
		{"empty", "", ""},
		{"header too long", "X-Long: " + strings.Repeat("a", 70<<10) + "\r\n\r\nb\r\n", "X-Long: " + strings.Repeat("a", 70<<10) + "\r\n\r\nb\r\n"},
	} {
		got, err := io.ReadAll(iotest.OneByteReader(newHeaderCompleter(strings.NewReader(tc.in), "submit.example.test", "abc", now)))
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: %q, %v\nwant %q", tc.name, got, err, tc.want)
		}
	}
	// A read error of the client's stream reaches the queue, which then
	// stores nothing.
	boom := errors.New("connection lost")
	_, err := io.ReadAll(newHeaderCompleter(io.MultiReader(strings.NewReader("Subject: x\r\n"), iotest.ErrReader(boom)), "h", "i", now))
	if !errors.Is(err, boom) {
		t.Errorf("read error: %v, want it passed on", err)
	}
}
