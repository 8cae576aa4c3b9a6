package main

import (
	"strings"
	"testing"
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
