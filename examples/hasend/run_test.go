package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/internal/dnstest"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/internal/syncbuf"
)

// relay starts an smtptest relay that offers STARTTLS and AUTH PLAIN only
// under TLS, with one user.
func relay(t *testing.T) *smtptest.Server {
	t.Helper()
	caps := smtptest.DefaultCapabilities()
	caps.Auth = []string{"PLAIN"}
	caps.AuthTLSOnly = true
	return smtptest.NewServer(t, &smtptest.Options{Capabilities: &caps, Users: map[string]string{"cron": "s3cret"}})
}

// env returns a getenv over m.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

type result struct {
	code           int
	stdout, stderr string
}

func runHasend(t *testing.T, args []string, environ map[string]string, stdin string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if environ == nil {
		environ = map[string]string{}
	}
	if _, ok := environ["HASEND_CONFIG"]; !ok {
		// Never read the machine's /etc/hasend.conf in tests.
		environ["HASEND_CONFIG"] = filepath.Join(t.TempDir(), "none.conf")
		os.WriteFile(environ["HASEND_CONFIG"], nil, 0o600)
	}
	var out, errb bytes.Buffer
	code := run(ctx, args, env(environ), strings.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// relayEnv points hasend at srv with credentials from the environment.
func relayEnv(srv *smtptest.Server) map[string]string {
	return map[string]string{
		"HASEND_RELAY":    srv.Addr(),
		"HASEND_USER":     "cron",
		"HASEND_PASSWORD": "s3cret",
		"HASEND_TLS":      "encrypt", // smtptest's certificate is self-signed
		"HASEND_DOMAIN":   "host.example.org",
		"USER":            "cron",
	}
}

func rcptAddrs(m smtptest.Message) []string {
	var out []string
	for _, r := range m.Rcpts {
		out = append(out, r.Addr)
	}
	return out
}

func waitOne(t *testing.T, srv *smtptest.Server) smtptest.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	msgs, err := srv.WaitMessages(ctx, 1)
	if err != nil {
		t.Fatalf("no message arrived: %v", err)
	}
	if len(msgs) != 1 {
		t.Fatalf("%d messages arrived, want 1", len(msgs))
	}
	return msgs[0]
}

func TestExtractRecipientsWithBcc(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	msg := "Subject: nightly backup\n" +
		"To: Ops <ops@example.org>\n" +
		"Cc: dba@example.org,\n" +
		"  \"Night Shift\" <night@example.net>\n" +
		"Bcc: auditor@example.com\n" +
		"\n" +
		"backup done\n"
	r := runHasend(t, []string{"-t", "-i", "-f", "backup@host.example.org", "-F", "Backup Job"}, relayEnv(srv), msg)
	if r.code != exOK {
		t.Fatalf("exit %d, stderr: %s", r.code, r.stderr)
	}
	m := waitOne(t, srv)
	if m.From != "backup@host.example.org" {
		t.Errorf("envelope sender %q, want backup@host.example.org (-f)", m.From)
	}
	want := []string{"ops@example.org", "dba@example.org", "night@example.net", "auditor@example.com"}
	if got := rcptAddrs(m); !slices.Equal(got, want) {
		t.Errorf("recipients %q, want %q", got, want)
	}
	body := string(m.Body)
	if strings.Contains(strings.ToLower(body), "bcc:") || strings.Contains(body, "auditor@example.com") {
		t.Errorf("the Bcc field reached the message:\n%s", body)
	}
	for _, h := range []string{"Subject: nightly backup\r\n", "Cc: dba@example.org,\r\n  \"Night Shift\" <night@example.net>\r\n",
		"From: \"Backup Job\" <backup@host.example.org>\r\n", "Date: ", "Message-ID: <"} {
		if !strings.Contains(body, h) {
			t.Errorf("message lacks %q:\n%s", h, body)
		}
	}
	if !strings.HasSuffix(body, "\r\n\r\nbackup done\r\n") {
		t.Errorf("body not kept with CRLF line endings:\n%q", body)
	}
	if m.TLS == nil || m.AuthUser != "cron" {
		t.Errorf("TLS %v, AUTH user %q: want STARTTLS and AUTH as cron", m.TLS != nil, m.AuthUser)
	}
}

func TestArgumentsAndBareNames(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	// cron runs "sendmail -FCronDaemon -i -odi -oem -oi -t -f root" with
	// "To: root" in the header.
	msg := "To: root\nSubject: Cron <root@host> /usr/local/bin/job\n\noutput\n"
	r := runHasend(t, []string{"-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root", "extra@example.org"}, relayEnv(srv), msg)
	if r.code != exOK {
		t.Fatalf("exit %d, stderr: %s", r.code, r.stderr)
	}
	m := waitOne(t, srv)
	if m.From != "root@host.example.org" {
		t.Errorf("envelope sender %q, want root qualified with the domain", m.From)
	}
	if got, want := rcptAddrs(m), []string{"extra@example.org", "root@host.example.org"}; !slices.Equal(got, want) {
		t.Errorf("recipients %q, want %q", got, want)
	}
	if !strings.Contains(string(m.Body), "From: \"CronDaemon\" <root@host.example.org>\r\n") {
		t.Errorf("From field with -F name missing:\n%s", m.Body)
	}
}

func TestLoneDot(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	input := "Subject: dots\n\nbefore\n.\nafter\n"

	r := runHasend(t, []string{"-i", "to@example.org"}, relayEnv(srv), input)
	if r.code != exOK {
		t.Fatalf("-i: exit %d, stderr: %s", r.code, r.stderr)
	}
	m := waitOne(t, srv)
	if !strings.HasSuffix(string(m.Body), "\r\n\r\nbefore\r\n.\r\nafter\r\n") {
		t.Errorf("-i: the lone dot line was not kept:\n%q", m.Body)
	}

	srv.Reset()
	r = runHasend(t, []string{"to@example.org"}, relayEnv(srv), input)
	if r.code != exOK {
		t.Fatalf("without -i: exit %d, stderr: %s", r.code, r.stderr)
	}
	m = waitOne(t, srv)
	if !strings.HasSuffix(string(m.Body), "\r\n\r\nbefore\r\n") || strings.Contains(string(m.Body), "after") {
		t.Errorf("without -i: input did not end at the lone dot:\n%q", m.Body)
	}
}

func TestTemporaryFailureExits75(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	f := smtptest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "try later")
	srv.SetFault(smtptest.StageMail, f)
	r := runHasend(t, []string{"to@example.org"}, relayEnv(srv), "Subject: x\n\nbody\n")
	if r.code != exTempFail {
		t.Fatalf("exit %d, want 75; stderr: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "to@example.org: deferred") {
		t.Errorf("stderr does not say the recipient was deferred: %s", r.stderr)
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("%d messages recorded after a 451 to MAIL", n)
	}
}

func TestRelayDownExits75(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	environ := relayEnv(srv)
	srv.Stop()
	r := runHasend(t, []string{"to@example.org"}, environ, "Subject: x\n\nbody\n")
	if r.code != exTempFail {
		t.Fatalf("exit %d, want 75; stderr: %s", r.code, r.stderr)
	}
}

func TestPermanentRecipientFailure(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	srv.SetRcptFault("gone@example.org", smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
	r := runHasend(t, []string{"gone@example.org", "here@example.org"}, relayEnv(srv), "Subject: x\n\nbody\n")
	if r.code != exNoUser {
		t.Fatalf("exit %d, want 67; stderr: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "gone@example.org: refused") || strings.Contains(r.stderr, "here@example.org") {
		t.Errorf("stderr should name only the refused recipient: %s", r.stderr)
	}
	m := waitOne(t, srv)
	if got := rcptAddrs(m); !slices.Equal(got, []string{"here@example.org"}) {
		t.Errorf("recipients %q, want the accepted one", got)
	}
}

func TestBadAddressExits65(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	for _, tc := range []struct {
		name  string
		args  []string
		input string
	}{
		{"header", []string{"-t"}, "To: Bob <bob@@example.org>\n\nx\n"},
		{"argument", []string{"not an address@"}, "Subject: x\n\nx\n"},
		{"sender", []string{"-f", "a b c", "to@example.org"}, "Subject: x\n\nx\n"},
		{"injection", []string{"to@example.org>\r\nRCPT TO:<evil@example.net"}, "Subject: x\n\nx\n"},
	} {
		r := runHasend(t, tc.args, relayEnv(srv), tc.input)
		if r.code != exDataErr {
			t.Errorf("%s: exit %d, want 65; stderr: %s", tc.name, r.code, r.stderr)
		}
	}
	if st := srv.Stats(); st.Connections != 0 {
		t.Errorf("%d connections to the relay for malformed input", st.Connections)
	}
}

func TestUsageAndConfigErrors(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want int
	}{
		{"no recipients", []string{}, relayEnv(srv), exUsage},
		{"-t without recipients", []string{"-t"}, relayEnv(srv), exUsage},
		{"-bs", []string{"-bs"}, relayEnv(srv), exUsage},
		{"-bp", []string{"-bp"}, relayEnv(srv), exUsage},
		{"-q", []string{"-q"}, relayEnv(srv), exUsage},
		{"unknown letter", []string{"-Z", "to@example.org"}, relayEnv(srv), exUsage},
		{"unknown long", []string{"--frobnicate", "to@example.org"}, relayEnv(srv), exUsage},
		{"password flag", []string{"-password", "x", "to@example.org"}, relayEnv(srv), exUsage},
		{"-f without value", []string{"to@example.org", "-f"}, relayEnv(srv), exUsage},
		{"bad -tls flag", []string{"-tls", "sometimes", "to@example.org"}, relayEnv(srv), exUsage},
		{"no relay", []string{"to@example.org"}, map[string]string{}, exConfig},
		{"bad env", []string{"to@example.org"}, map[string]string{"HASEND_RELAY": srv.Addr(), "HASEND_TIMEOUT": "soon"}, exConfig},
		{"user without password", []string{"to@example.org"}, map[string]string{"HASEND_RELAY": srv.Addr(), "HASEND_USER": "cron"}, exConfig},
		{"password in clear", []string{"-tls", "none", "to@example.org"}, relayEnv(srv), exConfig},
		{"missing config file", []string{"-config", "/nonexistent/hasend.conf", "to@example.org"}, relayEnv(srv), exConfig},
		{"-run without -queue", []string{"-run"}, relayEnv(srv), exUsage},
	} {
		r := runHasend(t, tc.args, tc.env, "Subject: x\n\nx\n")
		if r.code != tc.want {
			t.Errorf("%s: exit %d, want %d; stderr: %s", tc.name, r.code, tc.want, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "hasend: ") {
			t.Errorf("%s: stderr does not explain: %q", tc.name, r.stderr)
		}
	}
	if st := srv.Stats(); st.Connections != 0 {
		t.Errorf("%d connections to the relay after refused invocations", st.Connections)
	}
	if r := runHasend(t, []string{"-bi"}, nil, ""); r.code != exOK || r.stderr != "" {
		t.Errorf("-bi (newaliases): exit %d, stderr %q; want a silent 0", r.code, r.stderr)
	}
	r := runHasend(t, []string{"-help"}, nil, "")
	if r.code != exOK || !strings.Contains(r.stdout, "Exit statuses") {
		t.Errorf("-help: exit %d, output %q", r.code, r.stdout)
	}
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "password")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	conf := filepath.Join(dir, "hasend.conf")
	// The file names a dead relay and a wrong user; the environment fixes
	// the user, the command line the relay.
	os.WriteFile(conf, []byte("# test\nrelay = 127.0.0.1:1\nuser = wrong\npassword_file = "+pw+"\ntls encrypt\ndomain = file.example.org\n"), 0o600)
	environ := map[string]string{"HASEND_CONFIG": conf, "HASEND_USER": "cron"}
	r := runHasend(t, []string{"--relay=" + srv.Addr(), "-f", "me", "to@example.org"}, environ, "Subject: x\n\nx\n")
	if r.code != exOK {
		t.Fatalf("exit %d, stderr: %s", r.code, r.stderr)
	}
	m := waitOne(t, srv)
	if m.AuthUser != "cron" || m.From != "me@file.example.org" {
		t.Errorf("AUTH user %q, sender %q: want cron from the environment and the file's domain", m.AuthUser, m.From)
	}
	if !strings.Contains(string(m.Body), "\r\nFrom: me@file.example.org\r\n") {
		t.Errorf("the From field added without -F should be the sender's address:\n%s", m.Body)
	}

	os.WriteFile(conf, []byte("relay = "+srv.Addr()+"\nno_such_key = 1\n"), 0o600)
	if r := runHasend(t, []string{"to@example.org"}, environ, "x\n"); r.code != exConfig || !strings.Contains(r.stderr, "no_such_key") {
		t.Errorf("unknown config key: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestQueueModeThenRun(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	dir := filepath.Join(t.TempDir(), "spool")
	environ := relayEnv(srv)
	environ["HASEND_QUEUE"] = dir

	msg := "To: ops@example.org\nBcc: hidden@example.org\nSubject: queued\n\nbody\n"
	r := runHasend(t, []string{"-t", "-f", "cron@host.example.org"}, environ, msg)
	if r.code != exOK {
		t.Fatalf("exit %d, stderr: %s", r.code, r.stderr)
	}
	files, _ := os.ReadDir(filepath.Join(dir, "maildrop", "new"))
	if len(files) != 1 {
		t.Fatalf("%d files in the maildrop after exit 0, want the message durable there", len(files))
	}
	if st := srv.Stats(); st.Connections != 0 {
		t.Fatalf("queue mode connected to the relay (%d connections)", st.Connections)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var runErr syncbuf.Buffer
	go func() {
		done <- run(ctx, []string{"-queue", dir, "-run"}, env(environ), strings.NewReader(""), io.Discard, &runErr)
	}()
	m := waitOne(t, srv)
	if got, want := rcptAddrs(m), []string{"ops@example.org", "hidden@example.org"}; !slices.Equal(got, want) || m.From != "cron@host.example.org" {
		t.Errorf("queued message arrived from %q to %q, want cron@host.example.org to %q", m.From, got, want)
	}
	if strings.Contains(string(m.Body), "hidden@example.org") {
		t.Errorf("Bcc reached the message:\n%s", m.Body)
	}

	// While the queue runs, a new drop is picked up too.
	if r := runHasend(t, []string{"late@example.org"}, environ, "Subject: late\n\nx\n"); r.code != exOK {
		t.Fatalf("second drop: exit %d, stderr: %s", r.code, r.stderr)
	}
	wctx, wcancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer wcancel()
	msgs, err := srv.WaitMessages(wctx, 2)
	if err != nil || rcptAddrs(msgs[1])[0] != "late@example.org" {
		t.Fatalf("second message: %v", err)
	}

	cancel()
	select {
	case code := <-done:
		if code != exOK {
			t.Errorf("-run exit %d after its context ended, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("-run did not stop within 30s")
	}
	if files, _ := os.ReadDir(filepath.Join(dir, "maildrop", "new")); len(files) != 0 {
		t.Errorf("%d files left in the maildrop after pickup", len(files))
	}
}

// TestQueueModeNeedsNoCredentials: a user who cannot read the relay's
// password file can still queue (the queue's owner has the credentials),
// but not deliver directly.
func TestQueueModeNeedsNoCredentials(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "hasend.conf")
	os.WriteFile(conf, []byte("relay = "+srv.Addr()+"\nuser = cron\npassword_file = "+filepath.Join(dir, "unreadable")+"\n"), 0o600)
	environ := map[string]string{"HASEND_CONFIG": conf, "HASEND_DOMAIN": "host.example.org", "USER": "app"}
	if r := runHasend(t, []string{"-queue", filepath.Join(dir, "spool"), "to@example.org"}, environ, "Subject: x\n\nx\n"); r.code != exOK {
		t.Errorf("queue mode without access to the password: exit %d, stderr %s", r.code, r.stderr)
	}
	if r := runHasend(t, []string{"to@example.org"}, environ, "Subject: x\n\nx\n"); r.code != exConfig || !strings.Contains(r.stderr, "password_file") {
		t.Errorf("direct mode without the password: exit %d, stderr %s; want 78 naming password_file", r.code, r.stderr)
	}
}

func TestQueueDirUnwritableExits75(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	environ := relayEnv(srv)
	r := runHasend(t, []string{"-queue", filepath.Join(file, "spool"), "to@example.org"}, environ, "Subject: x\n\nx\n")
	if r.code != exTempFail {
		t.Fatalf("exit %d, want 75; stderr: %s", r.code, r.stderr)
	}
}

func TestDSNOptions(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	r := runHasend(t, []string{"-N", "success,failure", "-R", "hdrs", "-V", "job-42", "-v", "to@example.org"}, relayEnv(srv), "Subject: x\n\nx\n")
	if r.code != exOK {
		t.Fatalf("exit %d, stderr: %s", r.code, r.stderr)
	}
	m := waitOne(t, srv)
	if m.MailOpts.Return != smtp.DSNReturnHeaders || m.MailOpts.EnvelopeID != "job-42" {
		t.Errorf("MAIL parameters RET=%q ENVID=%q, want HDRS and job-42 (RFC 3461)", m.MailOpts.Return, m.MailOpts.EnvelopeID)
	}
	if got := m.Rcpts[0].Opts.Notify; !slices.Equal(got, []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}) {
		t.Errorf("NOTIFY %q, want SUCCESS,FAILURE", got)
	}
	if !strings.Contains(r.stderr, "to@example.org: delivered via") || strings.Contains(r.stderr, "s3cret") || strings.Contains(r.stderr, "AGNyb24AczNjcmV0") {
		t.Errorf("-v output should report the delivery and never the password:\n%s", r.stderr)
	}
}

func TestDirectToMX(t *testing.T) {
	t.Parallel()
	mx := smtptest.NewServer(t, &smtptest.Options{Domain: "mx1.example.org"})
	_, port, _ := net.SplitHostPort(mx.Addr())
	zone := dnstest.Start(t)
	zone.AddMX("example.org.", 300, 10, "mx1.example.org.")
	zone.AddA("mx1.example.org.", 300, "127.0.0.1")
	zone.AddMX("null.example.", 300, 0, ".") // RFC 7505
	zone.AddSOA("example.", 300, 60)
	environ := map[string]string{"HASEND_DOMAIN": "host.example.org", "USER": "cron"}
	args := []string{"-mx", "-nameserver", zone.Addr(), "-mx-port", port}

	r := runHasend(t, append(args, "ops@example.org"), environ, "Subject: direct\n\nx\n")
	if r.code != exOK {
		t.Fatalf("exit %d, stderr: %s", r.code, r.stderr)
	}
	if m := waitOne(t, mx); rcptAddrs(m)[0] != "ops@example.org" {
		t.Errorf("MX got %q", rcptAddrs(m))
	}
	for _, rcpt := range []string{"someone@null.example", "someone@nxdomain.example"} {
		if r := runHasend(t, append(args, rcpt), environ, "Subject: x\n\nx\n"); r.code != exNoHost {
			t.Errorf("%s: exit %d, want 68; stderr: %s", rcpt, r.code, r.stderr)
		}
	}
}

func TestBackupRelay(t *testing.T) {
	t.Parallel()
	primary, backup := relay(t), relay(t)
	environ := relayEnv(primary)
	environ["HASEND_RELAY"] = primary.Addr() + "," + backup.Addr()
	primary.Stop()
	r := runHasend(t, []string{"to@example.org"}, environ, "Subject: x\n\nx\n")
	if r.code != exOK {
		t.Fatalf("exit %d with the primary relay down and the backup up; stderr: %s", r.code, r.stderr)
	}
	waitOne(t, backup)
}

// TestVerifiedTLS: the default TLS policy checks the relay's certificate; a
// relay signed by a private authority is trusted through -ca-file only.
func TestVerifiedTLS(t *testing.T) {
	t.Parallel()
	srv := relay(t)
	// The relay's self-signed certificate, fetched over STARTTLS, is the
	// authority to trust.
	conn, err := net.DialTimeout("tcp", srv.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	tp := textproto.NewConn(conn)
	for _, step := range []struct {
		cmd  string
		code int
	}{{"", 220}, {"EHLO client.example.test", 250}, {"STARTTLS", 220}} {
		if step.cmd != "" {
			tp.PrintfLine("%s", step.cmd)
		}
		if _, _, err := tp.ReadResponse(step.code); err != nil {
			t.Fatalf("%q: %v", step.cmd, err)
		}
	}
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	state := tc.ConnectionState()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: state.PeerCertificates[0].Raw}), 0o600)

	environ := relayEnv(srv)
	delete(environ, "HASEND_TLS") // the default: verify
	if r := runHasend(t, []string{"to@example.org"}, environ, "Subject: x\n\nx\n"); r.code != exTempFail {
		t.Errorf("unverifiable certificate: exit %d, want 75; stderr: %s", r.code, r.stderr)
	}
	if n := len(srv.Messages()); n != 0 {
		t.Fatalf("%d messages sent to a relay whose certificate was not checked", n)
	}
	environ["HASEND_CA_FILE"] = ca
	if r := runHasend(t, []string{"to@example.org"}, environ, "Subject: x\n\nx\n"); r.code != exOK {
		t.Fatalf("with -ca-file: exit %d; stderr: %s", r.code, r.stderr)
	}
	waitOne(t, srv)
}
