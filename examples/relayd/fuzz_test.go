package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

// FuzzParseUsers: any users file either loads, with every hash a bcrypt
// hash that verify can use, or gives an error; it never panics.
func FuzzParseUsers(f *testing.F) {
	f.Add("alice:$2a$04$abcdefghijklmnopqrstuuJ7b7r8VZy0e5Yx3Gm0bqk8T3B1c4mHe\n")
	f.Add("# c\n\nbob:x\n")
	f.Add("a:b:c\n")
	f.Fuzz(func(t *testing.T, content string) {
		u, err := parseUsers("users", strings.NewReader(content))
		if err != nil {
			return
		}
		for name := range u.hashes {
			if name == "" || strings.ContainsAny(name, ":\n") {
				t.Fatalf("user name %q accepted", name)
			}
			// A wrong password never verifies (and nothing panics on
			// the stored hash).
			if u.verify(name, "\x00not the password\x00") == nil {
				t.Fatalf("user %q verified with a wrong password", name)
			}
		}
	})
}

// FuzzConfig: any JSON over the defaults either decodes and then passes or
// fails check with an error, never a panic; a configuration check accepted
// has a queue, a route, users and positive limits.
func FuzzConfig(f *testing.F) {
	f.Add(`{"queue_dir":"/q","users_file":"/u","tls_self_signed":true,"relays":[{"addr":"r:25"}]}`)
	f.Add(`{"read_timeout":"-1s"}`)
	f.Add(`{"relays":[{"addr":"r","tls":"bogus"}],"mx":true}`)
	f.Add(`{} {}`)
	f.Fuzz(func(t *testing.T, content string) {
		c := defaultConfig()
		if err := decodeConfig([]byte(content), c); err != nil {
			return
		}
		if err := c.check(); err != nil {
			return
		}
		if c.QueueDir == "" || c.UsersFile == "" || (len(c.Relays) == 0 && !c.MX) ||
			c.MaxMessageBytes <= 0 || c.MaxRecipients <= 0 || c.ReadTimeout <= 0 || c.ShutdownTimeout <= 0 {
			t.Fatalf("check accepted %+v", c)
		}
		if _, err := smtpRelays(c.Relays); err != nil && !strings.Contains(err.Error(), "relay") {
			t.Fatalf("relays that passed check fail to build: %v", err)
		}
	})
}

// FuzzHeaderCompleter: whatever the message, the output is the input with at
// most a Date and a Message-ID field inserted in one place, and a message
// that already has both comes out unchanged.
func FuzzHeaderCompleter(f *testing.F) {
	f.Add("Subject: x\r\n\r\nbody\r\n")
	f.Add("Date: x\r\nMessage-ID: <a@b>\r\n\r\n")
	f.Add("From: a\r\n folded\r\nno colon here\r\n\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		now := time.Unix(0, 0)
		b, err := io.ReadAll(newHeaderCompleter(strings.NewReader(in), "h.example", "id", now))
		if err != nil {
			t.Fatal(err)
		}
		out := string(b)
		i := 0
		for i < len(in) && i < len(out) && in[i] == out[i] {
			i++
		}
		if len(out) < len(in) || out[len(out)-(len(in)-i):] != in[i:] {
			t.Fatalf("input lost or reordered:\nin  %q\nout %q", in, out)
		}
		inserted := out[i : len(out)-(len(in)-i)]
		for _, line := range strings.SplitAfter(inserted, "\r\n") {
			if line != "" && !strings.HasPrefix(line, "Date: ") && !strings.HasPrefix(line, "Message-ID: <") {
				t.Fatalf("inserted %q", inserted)
			}
		}
	})
}
