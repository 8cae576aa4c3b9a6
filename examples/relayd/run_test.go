package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/examples/hasend/maildrop"
)

// inProcess is a relayd running in the test process through run.
type inProcess struct {
	smtp, http     string
	stdout, stderr *lineLog
	stop           func() int
}

func startInProcess(t *testing.T, args []string) *inProcess {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := newLineLog(), newLineLog()
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, strings.NewReader(""), stdout, stderr) }()
	p := &inProcess{stdout: stdout, stderr: stderr}
	stopped := false
	code := -1
	p.stop = func() int {
		if stopped {
			return code
		}
		stopped = true
		cancel()
		select {
		case code = <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("relayd did not stop within 30s; log:\n%s", stderr.String())
		}
		return code
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("relayd log:\n%s", stderr.String())
		}
	})
	// Fail fast if run returns at once (bad flags).
	go func() {
		select {
		case c := <-done:
			done <- c
			stdout.Write([]byte("relayd exited\n"))
		case <-ctx.Done():
		}
	}()
	p.smtp = stdout.wait(t, smtpAddrRE, 30*time.Second)
	p.http = stdout.wait(t, httpAddrRE, time.Second)
	return p
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestSubmitWithStartTLSAndAuthArrives(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	f := newFixture(t)
	p := startInProcess(t, f.args(hop.Addr()))

	reply, err := submit(p.smtp, f.clientTLS, "alice@example.org", []string{"bob@example.net", "carol@example.net"}, message("hello"))
	if err != nil {
		t.Fatalf("submission failed: %v", err)
	}
	if !strings.Contains(reply, "queued as") {
		t.Errorf("reply to the final dot %q does not name the queue ID", reply)
	}
	m := waitMessages(t, hop, 1, 30*time.Second)[0]
	if m.From != "alice@example.org" {
		t.Errorf("envelope sender at the next hop %q", m.From)
	}
	var rcpts []string
	for _, r := range m.Rcpts {
		rcpts = append(rcpts, r.Addr)
	}
	if !slices.Equal(rcpts, []string{"bob@example.net", "carol@example.net"}) {
		t.Errorf("recipients at the next hop %q", rcpts)
	}
	body := string(m.Body)
	if !strings.HasPrefix(body, "Received: from client.example.test ([127.0.0.1])\r\n\tby submit.example.test (relayd) with ESMTPSA id ") {
		t.Errorf("no Received field of RFC 5321 §4.4 with ESMTPSA (RFC 3848) first:\n%s", body)
	}
	// The message arrives as sent, with the Date field it lacked added
	// at the end of its header (RFC 6409 §8.2); it had a Message-ID.
	head, rest, _ := strings.Cut(message("hello"), "\r\n\r\n")
	if !strings.Contains(body, "\r\n"+head+"\r\nDate: ") || !strings.HasSuffix(body, "\r\n\r\n"+rest) ||
		strings.Count(body, "Message-ID:") != 1 {
		t.Errorf("message changed on the way:\n%q", body)
	}

	// A file dropped by hasend -queue into the queue directory is picked
	// up and delivered too.
	md, err := maildrop.Open(filepath.Join(f.queueDir, "maildrop"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := md.Drop(maildrop.Envelope{From: "cron@example.org", To: []string{"ops@example.net"}}, strings.NewReader(message("from cron"))); err != nil {
		t.Fatal(err)
	}
	msgs := waitMessages(t, hop, 2, 30*time.Second)
	if msgs[1].From != "cron@example.org" || !strings.Contains(string(msgs[1].Body), "Subject: from cron") {
		t.Errorf("maildrop message arrived as %q %q", msgs[1].From, msgs[1].Body)
	}

	code, hz := httpGet(t, "http://"+p.http+"/healthz")
	var health struct {
		Status string
		Queue  struct{ Items int }
	}
	if err := json.Unmarshal([]byte(hz), &health); code != http.StatusOK || err != nil || health.Status != "ok" {
		t.Errorf("/healthz: %d %s (%v)", code, hz, err)
	}
	// The runner counts the attempt once the next hop's reply is in; wait
	// for the series rather than for time.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, metrics := httpGet(t, "http://"+p.http+"/metrics")
		if strings.Contains(metrics, `relayd_submissions_total{result="queued"} 1`) &&
			strings.Contains(metrics, `hamail_delivery_recipients_total{host="`+hop.Addr()+`",outcome="delivered"} 3`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks the submission and delivery counts:\n%s", metrics)
		}
		time.Sleep(50 * time.Millisecond) // polling a scrape, bounded by the deadline
	}
	if c := p.stop(); c != exOK {
		t.Errorf("exit %d after the context ended, want 0", c)
	}
}

func TestAuthPolicy(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	f := newFixture(t)
	p := startInProcess(t, f.args(hop.Addr()))

	r := dialRaw(t, p.smtp)
	code, ehlo := r.cmd("EHLO client.example.test")
	if code != 250 || strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Errorf("EHLO in clear: %d %q; want STARTTLS offered and no AUTH", code, ehlo)
	}
	// "\0alice\0correct horse"
	if code, msg := r.cmd("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U="); code != 523 && code != 538 {
		t.Errorf("AUTH in clear: %d %s; want it refused for lack of TLS", code, msg)
	}
	if code, msg := r.cmd("MAIL FROM:<alice@example.org>"); code != 530 {
		t.Errorf("MAIL without AUTH: %d %s; want 530 5.7.0 (RFC 4954 §6)", code, msg)
	}

	for _, tc := range []struct{ authz, user, pass string }{
		{"", testUser, "wrong"},
		{"", "mallory", testPassword},
		{"bob", testUser, testPassword}, // acting for someone else
	} {
		c, err := smtp.DialStartTLS(p.smtp, f.clientTLS)
		if err != nil {
			t.Fatal(err)
		}
		err = c.Auth(sasl.NewPlainClient(tc.authz, tc.user, tc.pass))
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 535 {
			t.Errorf("AUTH %q/%q/%q: %v; want 535", tc.authz, tc.user, tc.pass, err)
		}
		c.Close()
	}
	// LOGIN, for the clients that know no other mechanism.
	for _, tc := range []struct {
		pass string
		ok   bool
	}{{testPassword, true}, {"wrong", false}} {
		c, err := smtp.DialStartTLS(p.smtp, f.clientTLS)
		if err != nil {
			t.Fatal(err)
		}
		if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "LOGIN") {
			t.Errorf("AUTH mechanisms under TLS: %q, want LOGIN too", mechs)
		}
		err = c.Auth(sasl.NewLoginClient(testUser, tc.pass))
		var se *smtp.SMTPError
		if tc.ok && err != nil || !tc.ok && (!errors.As(err, &se) || se.Code != 535) {
			t.Errorf("AUTH LOGIN with password %q: %v", tc.pass, err)
		}
		c.Close()
	}
	if n := len(hop.Messages()); n != 0 {
		t.Errorf("%d messages relayed without authentication", n)
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	f := newFixture(t)
	p := startInProcess(t, f.args(hop.Addr(), "-max-recipients", "2", "-max-message-bytes", "4000"))

	_, err := submit(p.smtp, f.clientTLS, "alice@example.org", []string{"a@example.net", "b@example.net", "c@example.net"}, message("many"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 452 {
		t.Errorf("third recipient with max 2: %v; want 452", err)
	}
	big := message("big") + strings.Repeat("0123456789abcdef\r\n", 400)
	_, err = submit(p.smtp, f.clientTLS, "alice@example.org", []string{"a@example.net"}, big)
	if !errors.As(err, &se) || se.Code != 552 {
		t.Errorf("message over the size limit: %v; want 552", err)
	}
	_, err = submit(p.smtp, f.clientTLS, "alice@example.org", []string{"a@example.net"}, message("long line")+strings.Repeat("y", 3000)+"\r\n")
	if !errors.As(err, &se) || se.Code/100 != 5 {
		t.Errorf("line over the limit of RFC 5321 §4.5.3.1.6: %v; want a permanent refusal", err)
	}
	if _, err := submit(p.smtp, f.clientTLS, "alice@example.org", []string{"a@example.net"}, message("bad rcpt")); err != nil {
		t.Fatalf("a message within the limits was refused: %v", err)
	}
	_, err = submit(p.smtp, f.clientTLS, "alice@example.org", []string{"a..b@example.net"}, message("bad rcpt"))
	if !errors.As(err, &se) || se.Code != 553 {
		t.Errorf("malformed recipient: %v; want 553", err)
	}
	// Only the good message was queued and delivered.
	msgs := waitMessages(t, hop, 1, 30*time.Second)
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Body), "Subject: bad rcpt") {
		t.Errorf("next hop got %d messages", len(msgs))
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"no queue dir", []string{"-users-file", f.usersFile, "-tls-self-signed", "-relay", "127.0.0.1:1"}, exConfig},
		{"no route", []string{"-users-file", f.usersFile, "-tls-self-signed", "-queue-dir", f.queueDir}, exConfig},
		{"no users", []string{"-tls-self-signed", "-queue-dir", f.queueDir, "-relay", "127.0.0.1:1"}, exConfig},
		{"no TLS", []string{"-users-file", f.usersFile, "-queue-dir", f.queueDir, "-relay", "127.0.0.1:1"}, exConfig},
		{"bad relay TLS", []string{"-users-file", f.usersFile, "-tls-self-signed", "-queue-dir", f.queueDir, "-relay", "127.0.0.1:1", "-relay-tls", "maybe"}, exConfig},
		{"password in clear", []string{"-users-file", f.usersFile, "-tls-self-signed", "-queue-dir", f.queueDir, "-relay", "127.0.0.1:1", "-relay-tls", "none", "-relay-user", "u", "-relay-password-file", f.usersFile}, exConfig},
		{"bad trusted network", []string{"-tls-self-signed", "-queue-dir", f.queueDir, "-relay", "127.0.0.1:1", "-trusted-networks", "10.0.0.0/33"}, exConfig},
		{"unknown flag", []string{"-frobnicate"}, exUsage},
		{"stray argument", []string{"extra"}, exUsage},
		{"missing config", []string{"-config", filepath.Join(f.dir, "none.json")}, exConfig},
		{"users file not bcrypt", []string{"-users-file", f.certFile, "-tls-self-signed", "-queue-dir", f.queueDir, "-relay", "127.0.0.1:1", "-http-listen", ""}, exConfig},
	} {
		stderr := newLineLog()
		code := run(t.Context(), tc.args, strings.NewReader(""), io.Discard, stderr)
		if code != tc.want {
			t.Errorf("%s: exit %d, want %d; stderr: %s", tc.name, code, tc.want, stderr.String())
		}
	}
}

func TestConnectionAndAuthLimits(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	f := newFixture(t)
	p := startInProcess(t, f.args(hop.Addr(), "-max-connections", "2", "-insecure-auth", "-probe"))

	// Password guessing: three refusals, then the connection may not try
	// again.
	r := dialRaw(t, p.smtp)
	r.cmd("EHLO guesser.example.test")
	for i := range 3 {
		if code, msg := r.cmd("AUTH PLAIN AGFsaWNlAHdyb25n"); code != 535 { // \0alice\0wrong
			t.Fatalf("guess %d: %d %s, want 535", i+1, code, msg)
		}
	}
	if code, msg := r.cmd("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U="); code != 421 {
		t.Errorf("AUTH after 3 failures, even with the right password: %d %s; want 421", code, msg)
	}

	// Two connections are open (r and this one); a third is turned away.
	r2 := dialRaw(t, p.smtp)
	c3, err := net.DialTimeout("tcp", p.smtp, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	c3.SetDeadline(time.Now().Add(20 * time.Second))
	line, _ := bufio.NewReader(c3).ReadString('\n')
	if !strings.HasPrefix(line, "421 ") {
		t.Errorf("connection beyond max-connections got %q, want a 421", line)
	}
	r2.cmd("QUIT")

	// With -probe the relays' health is served.
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := httpGet(t, "http://"+p.http+"/healthz/relays")
		if code == http.StatusOK && strings.Contains(body, hop.Addr()) && strings.Contains(body, `"up"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz/relays never reported the next hop up: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond) // polling the probe's result, bounded by the deadline
	}
}

// TestReadTimeout: an idle client is dropped after read-timeout with a 421
// (RFC 5321 §4.5.3.2.7), while a slow message whose every pause is shorter
// than the timeout is received even though it takes longer in all.
func TestReadTimeout(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	f := newFixture(t)
	const timeout = 2 * time.Second
	p := startInProcess(t, f.args(hop.Addr(), "-read-timeout", timeout.String()))

	idle := dialRaw(t, p.smtp)
	start := time.Now()
	rest, err := idle.readToEOF()
	if !isClosed(err) || !strings.HasPrefix(rest, "421 ") {
		t.Errorf("idle client: %q, %v; want a 421 and the end", rest, err)
	}
	// Not a measurement, a sanity check: the drop came from the timeout,
	// not from something that closed the connection at once.
	if waited := time.Since(start); waited < timeout/2 {
		t.Errorf("idle client dropped after %v, long before the %v timeout", waited, timeout)
	}

	r := dialRaw(t, p.smtp)
	r.cmd("EHLO client.example.test")
	r.startTLS(f.clientTLS)
	for _, step := range []struct {
		cmd  string
		want int
	}{
		{"AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=", 235},
		{"MAIL FROM:<alice@example.org>", 250},
		{"RCPT TO:<bob@example.net>", 250},
		{"DATA", 354},
	} {
		if code, msg := r.cmd("%s", step.cmd); code != step.want {
			t.Fatalf("%s: %d %s", step.cmd, code, msg)
		}
	}
	msg := message("slow")
	parts := 4
	for i := range parts {
		r.write(msg[i*len(msg)/parts : (i+1)*len(msg)/parts])
		// A slow client, on purpose: each pause is well under the
		// timeout, all of them together exceed it.
		time.Sleep(timeout / 3)
	}
	if code, msg := r.cmd("."); code != 250 {
		t.Fatalf("slow message: %d %s, want 250", code, msg)
	}
	waitMessages(t, hop, 1, 30*time.Second)
}

func TestImplicitTLSAndSenderRestrictions(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	f := newFixture(t)
	// alice may send as herself and for example.net only.
	users, _ := os.ReadFile(f.usersFile)
	// The fixture's last line is alice's: add the third field to it.
	restricted := strings.TrimRight(string(users), "\n") + ":alice@example.org,@Example.NET\n"
	if err := os.WriteFile(f.usersFile, []byte(restricted), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startInProcess(t, f.args(hop.Addr(), "-listen-tls", "127.0.0.1:0"))
	smtps := regexp.MustCompile(`smtps listening on (\S+)`)
	addr := p.stdout.wait(t, smtps, 10*time.Second)

	c, err := smtp.DialTLS(addr, f.clientTLS)
	if err != nil {
		t.Fatalf("implicit TLS (RFC 8314): %v", err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatalf("AUTH over implicit TLS: %v", err)
	}
	for _, tc := range []struct {
		from string
		ok   bool
	}{
		{"alice@example.org", true},
		{"ALICE@example.org", true},
		{"ops@example.net", true},
		{"eve@example.com", false},
		{"alice@example.org.evil.test", false},
		{"", false}, // the null sender is not in her list
	} {
		err := c.Mail(tc.from, nil)
		var se *smtp.SMTPError
		switch {
		case tc.ok && err != nil:
			t.Errorf("MAIL FROM:<%s>: %v, want accepted", tc.from, err)
		case !tc.ok && (!errors.As(err, &se) || se.Code != 553):
			t.Errorf("MAIL FROM:<%s>: %v, want 553 5.7.1", tc.from, err)
		}
		if err == nil {
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.Mail("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@example.net", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, message("implicit"))
	if err := w.Close(); err != nil {
		t.Fatalf("message over implicit TLS: %v", err)
	}
	m := waitMessages(t, hop, 1, 30*time.Second)[0]
	if !strings.Contains(string(m.Body), "with ESMTPSA") {
		t.Errorf("Received field does not say ESMTPSA:\n%s", m.Body)
	}
}

// TestQueueFull: with the next hop down and a capped queue, submissions are
// acknowledged until the queue is full, then deferred with 452 4.3.1; none
// acknowledged is lost once the next hop is back.
func TestQueueFull(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	hopAddr := hop.Addr()
	hop.Stop()
	f := newFixture(t)
	p := startInProcess(t, f.args(hopAddr, "-max-queue-bytes", "262144"))
	body := message("filler") + strings.Repeat(strings.Repeat("z", 998)+"\r\n", 16) // about 16 KB, stored inline
	accepted := 0
	var se *smtp.SMTPError
	for i := range 200 {
		_, err := submit(p.smtp, f.clientTLS, "alice@example.org", []string{"bob@example.net"}, body)
		if err == nil {
			accepted++
			continue
		}
		if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) {
			t.Fatalf("submission %d: %v; want 250 or 452 4.3.1", i, err)
		}
		break
	}
	if se == nil || accepted == 0 {
		t.Fatalf("%d accepted, last refusal %v: want some accepted, then 452", accepted, se)
	}
	if err := hop.Start(); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, hop, accepted, 60*time.Second)
}
