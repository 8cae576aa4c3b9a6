package main

import (
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestConfigFileAndFlags(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	conf := filepath.Join(f.dir, "relayd.json")
	os.WriteFile(conf, []byte(`{
		"hostname": "file.example.test",
		"listen": "127.0.0.1:2525",
		"tls_self_signed": true,
		"users_file": "`+f.usersFile+`",
		"queue_dir": "`+f.queueDir+`",
		"relays": [{"addr": "relay1.example.net:587", "priority": 0, "tls": "may"}, {"addr": "relay2.example.net:25", "priority": 1}],
		"max_recipients": 50,
		"read_timeout": "90s"
	}`), 0o600)
	stdout, stderr := newLineLog(), newLineLog()
	code := run(t.Context(), []string{"-config", conf, "-max-recipients", "7", "-print-config"}, strings.NewReader(""), stdout, stderr)
	if code != exOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var c Config
	if err := json.Unmarshal([]byte(stdout.String()), &c); err != nil {
		t.Fatalf("-print-config output is not the JSON config: %v\n%s", err, stdout.String())
	}
	if c.Hostname != "file.example.test" || c.Listen != "127.0.0.1:2525" || len(c.Relays) != 2 || c.Relays[1].Priority != 1 {
		t.Errorf("file values lost: %+v", c)
	}
	if c.MaxRecipients != 7 {
		t.Errorf("max_recipients %d: the flag must override the file", c.MaxRecipients)
	}
	if time.Duration(c.ReadTimeout) != 90*time.Second || c.MaxMessageBytes != defaultMaxMessageBytes {
		t.Errorf("read_timeout %v, max_message_bytes %d: want the file's and the default", time.Duration(c.ReadTimeout), c.MaxMessageBytes)
	}

	os.WriteFile(conf, []byte(`{"queue_dri": "/tmp/x"}`), 0o600)
	if code := run(t.Context(), []string{"-config", conf}, strings.NewReader(""), stdout, stderr); code != exConfig ||
		!strings.Contains(stderr.String(), "queue_dri") {
		t.Errorf("misspelt key: exit %d, stderr %s", code, stderr.String())
	}
}

func TestHashPassword(t *testing.T) {
	t.Parallel()
	stdout, stderr := newLineLog(), newLineLog()
	// The lowest cost keeps the test fast under the race detector.
	if code := run(t.Context(), []string{"-hash-password", "-bcrypt-cost", "4"}, strings.NewReader("s3cret pass\n"), stdout, stderr); code != exOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	hash := strings.TrimSpace(stdout.String())
	if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cret pass")); err != nil {
		t.Fatalf("printed hash %q does not match the password: %v", hash, err)
	}
	u, err := parseUsers("users", strings.NewReader("bob:"+hash+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if u.verify("bob", "s3cret pass") != nil || u.verify("bob", "s3cret") == nil || u.verify("eve", "s3cret pass") == nil {
		t.Error("the users file does not check the password as written")
	}
	if code := run(t.Context(), []string{"-hash-password"}, strings.NewReader("\n"), stdout, stderr); code != exUsage {
		t.Errorf("empty password: exit %d, want 64", code)
	}
	if code := run(t.Context(), []string{"-hash-password", "-bcrypt-cost", "20"}, strings.NewReader("pw\n"), stdout, stderr); code != exUsage {
		t.Errorf("cost 20: exit %d, want 64", code)
	}
}

func TestSelfSignedCertificate(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	f := newFixture(t)
	args := f.args(hop.Addr())
	for i, a := range args {
		if a == "-tls-cert" {
			args = append(args[:i], args[i+4:]...) // drop -tls-cert X -tls-key Y
			break
		}
	}
	p := startInProcess(t, append(args, "-tls-self-signed"))
	// The client cannot verify a throw-away certificate; it still gets
	// an encrypted session and AUTH.
	reply, err := submit(p.smtp, &tls.Config{InsecureSkipVerify: true}, "alice@example.org", []string{"bob@example.net"}, message("self-signed"))
	if err != nil || !strings.Contains(reply, "queued as") {
		t.Fatalf("submission over the self-signed certificate: %q, %v", reply, err)
	}
	if _, err := submit(p.smtp, f.clientTLS, "alice@example.org", []string{"bob@example.net"}, message("verified")); err == nil {
		t.Error("a client verifying against another CA accepted the self-signed certificate")
	}
	waitMessages(t, hop, 1, 30*time.Second)
}

func TestUsersFile(t *testing.T) {
	t.Parallel()
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	for _, tc := range []struct {
		name, content string
		ok            bool
	}{
		{"good", "# comment\n\nalice:" + string(h) + "\n", true},
		{"htpasswd $2y$", "alice:" + strings.Replace(string(h), "$2a$", "$2y$", 1) + "\n", true},
		{"plain text", "alice:pw\n", false},
		{"sha-crypt", "alice:$6$salt$abcdefghijklmnop\n", false},
		{"cost too high", "alice:" + strings.Replace(string(h), "$04$", "$31$", 1) + "\n", false},
		{"no colon", "alice\n", false},
		{"empty name", ":" + string(h) + "\n", false},
		{"twice", "alice:" + string(h) + "\nalice:" + string(h) + "\n", false},
		{"empty", "# nobody\n", false},
		{"senders", "alice:" + string(h) + ":alice@example.org, @example.net,<>\n", true},
		{"empty senders", "alice:" + string(h) + ":\n", false},
		{"bad sender", "alice:" + string(h) + ":not an address\n", false},
	} {
		_, err := parseUsers("users", strings.NewReader(tc.content))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
