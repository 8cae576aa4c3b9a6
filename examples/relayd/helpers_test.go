package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/hamail/hamail/internal/selfsigned"
	"github.com/hamail/hamail/internal/smtptest"
)

const (
	testUser     = "alice"
	testPassword = "correct horse"
)

// fixture is what a relayd under test needs on disk.
type fixture struct {
	dir       string
	queueDir  string
	usersFile string
	certFile  string
	keyFile   string
	clientTLS *tls.Config
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, queueDir: filepath.Join(dir, "queue"), usersFile: filepath.Join(dir, "users"),
		certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem")}
	h, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.usersFile, []byte("# test users\n"+testUser+":"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := selfSigned("localhost", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	os.WriteFile(f.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	f.clientTLS = &tls.Config{RootCAs: selfsigned.Pool(cert), ServerName: "localhost"}
	return f
}

// args are the flags of a relayd that relays to nextHop with a fast retry
// schedule.
func (f *fixture) args(nextHop string, extra ...string) []string {
	return append([]string{
		"-hostname", "submit.example.test",
		"-listen", "127.0.0.1:0",
		"-http-listen", "127.0.0.1:0",
		"-tls-cert", f.certFile, "-tls-key", f.keyFile,
		"-users-file", f.usersFile,
		"-queue-dir", f.queueDir,
		"-relay", nextHop, "-relay-tls", "encrypt",
		"-retry-min", "200ms", "-retry-max", "500ms",
		"-attempt-timeout", "3s",
		"-breaker-open", "500ms",
		"-pickup-interval", "100ms",
		"-shutdown-timeout", "10s",
		"-log-level", "debug",
	}, extra...)
}

// lineLog is an io.Writer that keeps what was written and lets a test wait
// for a line.
type lineLog struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wait returns the first submatch of re once it appears.
func (l *lineLog) wait(t *testing.T, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		m := re.FindStringSubmatch(l.buf.String())
		ch := l.changed
		l.mu.Unlock()
		if m != nil {
			return m[1]
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("no %q within %v; output:\n%s", re, timeout, l.String())
		}
	}
}

var (
	smtpAddrRE = regexp.MustCompile(`smtp listening on (\S+)`)
	httpAddrRE = regexp.MustCompile(`http listening on (\S+)`)
)

// nextHop starts the relay that relayd delivers to.
func nextHop(t *testing.T) *smtptest.Server {
	return smtptest.NewServer(t, &smtptest.Options{Domain: "next-hop.example.test"})
}

// submit sends one message through addr with STARTTLS and AUTH PLAIN, and
// returns the reply to the final dot.
func submit(addr string, tlsConf *tls.Config, from string, to []string, body string) (string, error) {
	return submitAs(addr, tlsConf, testUser, testPassword, from, to, body)
}

// submitAs is submit with other credentials.
func submitAs(addr string, tlsConf *tls.Config, user, password, from string, to []string, body string) (string, error) {
	c, err := smtp.DialStartTLS(addr, tlsConf)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.CommandTimeout = 20 * time.Second
	c.SubmissionTimeout = 20 * time.Second
	if err := c.Hello("client.example.test"); err != nil {
		return "", err
	}
	if err := c.Auth(sasl.NewPlainClient("", user, password)); err != nil {
		return "", err
	}
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(w, body); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	return resp.StatusText, nil
}

func message(subject string) string {
	return "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: " + subject + "\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@example.org>\r\n\r\nHello Bob.\r\n"
}

// rawConn is a line-level SMTP client, for checking exact replies.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	tp *textproto.Conn
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := &rawConn{t: t, c: c, tp: textproto.NewConn(c)}
	r.expect(220)
	return r
}

// cmd sends a line and returns the reply's code and text.
func (r *rawConn) cmd(format string, args ...any) (int, string) {
	r.t.Helper()
	if err := r.tp.PrintfLine(format, args...); err != nil {
		r.t.Fatalf("sending %q: %v", fmt.Sprintf(format, args...), err)
	}
	code, msg, err := r.tp.ReadResponse(0)
	if err != nil && code == 0 {
		r.t.Fatalf("reply to %q: %v", fmt.Sprintf(format, args...), err)
	}
	return code, msg
}

func (r *rawConn) expect(code int) string {
	r.t.Helper()
	got, msg, err := r.tp.ReadResponse(code)
	if err != nil {
		r.t.Fatalf("want %d, got %d %s (%v)", code, got, msg, err)
	}
	return msg
}

// readAll reads what the server sends until it closes the connection.
func (r *rawConn) readToEOF() (string, error) {
	// Through the textproto reader: it may hold what followed the last
	// reply.
	b, err := io.ReadAll(r.tp.R)
	return string(b), err
}

// waitMessages waits until srv has n messages.
func waitMessages(t *testing.T, srv *smtptest.Server, n int, timeout time.Duration) []smtptest.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	msgs, err := srv.WaitMessages(ctx, n)
	if err != nil {
		t.Fatalf("%d of %d messages at the next hop after %v: %v", len(srv.Messages()), n, timeout, err)
	}
	return msgs
}

func regexpQuote(s string) *regexp.Regexp { return regexp.MustCompile("(" + regexp.QuoteMeta(s) + ")") }

// isClosed reports whether err means the peer closed the connection.
func isClosed(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)
}

// startTLS upgrades the connection (RFC 3207) and says EHLO again.
func (r *rawConn) startTLS(conf *tls.Config) {
	r.t.Helper()
	if code, msg := r.cmd("STARTTLS"); code != 220 {
		r.t.Fatalf("STARTTLS: %d %s", code, msg)
	}
	tc := tls.Client(r.c, conf)
	if err := tc.Handshake(); err != nil {
		r.t.Fatalf("TLS handshake: %v", err)
	}
	r.c, r.tp = tc, textproto.NewConn(tc)
	if code, msg := r.cmd("EHLO client.example.test"); code != 250 {
		r.t.Fatalf("EHLO after STARTTLS: %d %s", code, msg)
	}
}

// write sends raw bytes, unbuffered.
func (r *rawConn) write(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}
