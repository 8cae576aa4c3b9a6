package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/imaptest"
	"github.com/hamail/hamail/internal/syncbuf"
)

// lines collects what mailwatch writes to stdout, one JSON record a line.
type lines struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	records []record
	changed chan struct{}
	t       *testing.T
}

func newLines(t *testing.T) *lines { return &lines{t: t, changed: make(chan struct{}, 1)} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadBytes('\n')
		if err != nil {
			// Keep the partial line for the next write.
			rest := append([]byte(nil), line...)
			l.buf.Reset()
			l.buf.Write(rest)
			break
		}
		var r record
		if err := json.Unmarshal(line, &r); err != nil {
			l.t.Errorf("stdout line is not a JSON record: %q: %v", line, err)
			continue
		}
		l.records = append(l.records, r)
	}
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

// wait returns the records once there are at least n, failing the test
// after a generous deadline.
func (l *lines) wait(n int) []record {
	l.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		l.mu.Lock()
		got := append([]record(nil), l.records...)
		l.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-l.changed:
		case <-deadline:
			l.t.Fatalf("waited for %d records, have %d: %+v", n, len(got), got)
		}
	}
}

func message(n int) []byte {
	return fmt.Appendf(nil, "From: Shop <orders@example.org>\r\nTo: alice@example.org\r\nSubject: order %d\r\n"+
		"Message-ID: <order-%d@example.org>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nOrder %d.\r\n", n, n, n)
}

func appendMessages(t *testing.T, s *imaptest.Set, from, to int) {
	t.Helper()
	for n := from; n <= to; n++ {
		if _, err := s.Append("INBOX", message(n), nil); err != nil {
			t.Fatal(err)
		}
	}
}

// start runs mailwatch in a goroutine; stop cancels it and returns its
// exit status.
func start(t *testing.T, args []string, env []string, stdout io.Writer) (stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	stderr := &syncbuf.Buffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, env, stdout, stderr) }()
	var once sync.Once
	var code int
	stop = func() int {
		once.Do(func() {
			cancel()
			select {
			case code = <-done:
			case <-time.After(20 * time.Second):
				t.Fatalf("mailwatch did not stop after cancel; log:\n%s", stderr)
			}
			if t.Failed() {
				t.Logf("mailwatch log:\n%s", stderr)
			}
		})
		return code
	}
	t.Cleanup(func() { stop() })
	return stop
}

func watchArgs(s *imaptest.Set, stateDir string, extra ...string) []string {
	var addrs []string
	for _, r := range s.Replicas() {
		addrs = append(addrs, r.Addr())
	}
	return append([]string{"-replicas", strings.Join(addrs, ","), "-user", s.Username(), "-tls", "none",
		"-state", stateDir, "-timeout", "5s", "-heartbeat", "2s"}, extra...)
}

func messageIDs(rs []record) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		m[r.MessageID]++
	}
	return m
}

func TestEachMessageOnceAcrossReplicaKillAndRestart(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendMessages(t, s, 1, 3)
	state := t.TempDir()
	env := []string{"MAILWATCH_PASSWORD=" + s.Password()}

	out := newLines(t)
	stop := start(t, watchArgs(s, state, "-existing"), env, out)
	got := out.wait(3)
	primary := s.Replica(0)
	for _, r := range got {
		if r.Replica != primary.Addr() {
			t.Errorf("message %s read from %s, want the preferred replica %s", r.MessageID, r.Replica, primary.Addr())
		}
		if r.Subject == "" || len(r.From) != 1 || r.From[0].Address != "orders@example.org" || r.From[0].Name != "Shop" || r.UIDValidity == 0 {
			t.Errorf("incomplete record: %+v", r)
		}
	}

	// Kill the replica mailwatch follows, then mail arrives: it must come
	// from the other replica, once.
	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	appendMessages(t, s, 4, 6)
	got = out.wait(6)
	for _, r := range got[3:] {
		if r.Replica != s.Replica(1).Addr() {
			t.Errorf("message %s read from %s after the kill, want %s", r.MessageID, r.Replica, s.Replica(1).Addr())
		}
	}
	if code := stop(); code != exitStopped {
		t.Errorf("exit status %d after cancel, want %d", code, exitStopped)
	}
	got = out.wait(6)
	ids := messageIDs(got)
	for n := 1; n <= 6; n++ {
		if c := ids[fmt.Sprintf("order-%d@example.org", n)]; c != 1 {
			t.Errorf("order %d emitted %d times, want once", n, c)
		}
	}
	if len(got) != 6 {
		t.Errorf("emitted %d records, want 6", len(got))
	}

	// Restart mailwatch on the same state: the preferred replica is back,
	// one new message arrives, and it must be the first thing emitted
	// (a re-emitted old message would come first, in UID order).
	if err := primary.Start(); err != nil {
		t.Fatal(err)
	}
	appendMessages(t, s, 7, 7)
	out2 := newLines(t)
	stop2 := start(t, watchArgs(s, state, "-existing"), env, out2)
	got2 := out2.wait(1)
	if got2[0].MessageID != "order-7@example.org" {
		t.Errorf("first record after restart is %s, want order-7 (old messages re-emitted?)", got2[0].MessageID)
	}
	stop2()
	if got2 = out2.wait(1); len(got2) != 1 {
		t.Errorf("restart emitted %d records, want 1: %+v", len(got2), got2)
	}
}

func TestPostRetriedUntilAccepted(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)

	type post struct {
		key string
		rec record
	}
	var (
		mu       sync.Mutex
		failed   int
		accepted []post
		got      = make(chan struct{}, 10)
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		var rec record
		if err := json.NewDecoder(r.Body).Decode(&rec); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if failed == 0 {
			failed++
			http.Error(w, "receiver restarting", http.StatusServiceUnavailable)
			return
		}
		accepted = append(accepted, post{r.Header.Get("Idempotency-Key"), rec})
		got <- struct{}{}
	}))
	defer srv.Close()

	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte(s.Password()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The first POST fails: the message must still be delivered, once,
	// before the next one.
	appendMessages(t, s, 1, 2)
	var stdout syncbuf.Buffer
	stop := start(t, watchArgs(s, t.TempDir(), "-existing", "-url", srv.URL, "-password-file", pwFile, "-retry-min", "20ms", "-body"), nil, &stdout)
	for range 2 {
		select {
		case <-got:
		case <-time.After(20 * time.Second):
			t.Fatal("POSTs did not arrive")
		}
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	if failed != 1 {
		t.Errorf("failed POSTs = %d, want 1", failed)
	}
	if len(accepted) != 2 || accepted[0].rec.MessageID != "order-1@example.org" || accepted[1].rec.MessageID != "order-2@example.org" {
		t.Fatalf("accepted POSTs = %+v, want order-1 then order-2", accepted)
	}
	if accepted[0].key == "" || accepted[0].key == accepted[1].key {
		t.Errorf("Idempotency-Key headers %q and %q, want distinct non-empty keys", accepted[0].key, accepted[1].key)
	}
	if !bytes.Equal(accepted[0].rec.Raw, message(1)) {
		t.Errorf("raw body = %q, want the stored message", accepted[0].rec.Raw)
	}
	if stdout.String() != "" {
		t.Errorf("stdout with -url = %q, want nothing", stdout.String())
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"no replicas", []string{"-user", "a"}, []string{"MAILWATCH_PASSWORD=x"}, "-replicas"},
		{"bad replica", []string{"-replicas", "imap.example.org", "-user", "a"}, []string{"MAILWATCH_PASSWORD=x"}, "host:port"},
		{"no user", []string{"-replicas", "127.0.0.1:1"}, []string{"MAILWATCH_PASSWORD=x"}, "-user"},
		{"no password", []string{"-replicas", "127.0.0.1:1", "-user", "a"}, nil, "no password"},
		{"bad tls", []string{"-replicas", "127.0.0.1:1", "-user", "a", "-tls", "maybe"}, []string{"MAILWATCH_PASSWORD=x"}, "-tls"},
		{"bad url", []string{"-replicas", "127.0.0.1:1", "-user", "a", "-url", "ftp://x"}, []string{"MAILWATCH_PASSWORD=x"}, "-url"},
		{"missing password file", []string{"-replicas", "127.0.0.1:1", "-user", "a", "-password-file", "/nonexistent/pw"}, nil, "-password-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr syncbuf.Buffer
			code := run(t.Context(), tc.args, tc.env, io.Discard, &stderr)
			if code != exitUsage {
				t.Errorf("exit status %d, want %d", code, exitUsage)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q does not mention %q", stderr.String(), tc.want)
			}
		})
	}
}

func TestEnvironmentConfiguresEverything(t *testing.T) {
	t.Parallel()
	env := []string{"MAILWATCH_REPLICAS=127.0.0.1:1143, 127.0.0.1:2143", "MAILWATCH_USER=alice",
		"MAILWATCH_PASSWORD=secret", "MAILWATCH_MAILBOX=Orders", "MAILWATCH_STATE=/tmp/s", "MAILWATCH_TLS=starttls"}
	c, err := parseConfig(nil, env, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.replicas) != 2 || c.replicas[1] != "127.0.0.1:2143" || c.user != "alice" || c.password != "secret" ||
		c.mailbox != "Orders" || c.stateDir != "/tmp/s" || c.tlsMode.String() != "starttls" {
		t.Errorf("config from environment = %+v", c)
	}
	// A flag wins over the environment.
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("from-file\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = parseConfig([]string{"-mailbox", "INBOX", "-password-file", pw}, env, io.Discard)
	if err != nil || c.mailbox != "INBOX" || c.password != "from-file" {
		t.Errorf("flags did not override the environment: %+v, %v", c, err)
	}
	// The password file named in the environment is read last.
	c, err = parseConfig(nil, []string{"MAILWATCH_REPLICAS=127.0.0.1:1", "MAILWATCH_USER=a", "MAILWATCH_PASSWORD_FILE=" + pw}, io.Discard)
	if err != nil || c.password != "from-file" {
		t.Errorf("MAILWATCH_PASSWORD_FILE: %+v, %v", c, err)
	}
}

func TestUnacceptedPostEmittedAgainAfterRestart(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendMessages(t, s, 1, 1)
	var (
		mu      sync.Mutex
		accept  bool
		posts   []string // Message-IDs, in order, with the status given
		refused = make(chan struct{}, 100)
		okd     = make(chan struct{}, 100)
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rec record
		_ = json.NewDecoder(r.Body).Decode(&rec)
		mu.Lock()
		defer mu.Unlock()
		if !accept {
			posts = append(posts, rec.MessageID+" 503")
			http.Error(w, "down", http.StatusServiceUnavailable)
			refused <- struct{}{}
			return
		}
		posts = append(posts, rec.MessageID+" 200")
		okd <- struct{}{}
	}))
	defer srv.Close()
	env := []string{"MAILWATCH_PASSWORD=" + s.Password()}
	state := t.TempDir()
	args := watchArgs(s, state, "-existing", "-url", srv.URL, "-retry-min", "10ms", "-retry-max", "50ms")

	// The receiver refuses everything; mailwatch is stopped while it keeps
	// retrying, so the message was never acknowledged.
	stop := start(t, args, env, io.Discard)
	for range 2 {
		select {
		case <-refused:
		case <-time.After(20 * time.Second):
			t.Fatal("no POST arrived")
		}
	}
	if code := stop(); code != exitStopped {
		t.Errorf("exit status %d, want %d", code, exitStopped)
	}

	mu.Lock()
	accept = true
	mu.Unlock()
	stop = start(t, args, env, io.Discard)
	select {
	case <-okd:
	case <-time.After(20 * time.Second):
		t.Fatal("the message was not posted again after the restart")
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	var accepted int
	for _, p := range posts {
		if strings.HasSuffix(p, " 200") {
			accepted++
			if p != "order-1@example.org 200" {
				t.Errorf("accepted %q, want order-1", p)
			}
		}
	}
	if accepted != 1 {
		t.Errorf("accepted %d POSTs, want 1: %v", accepted, posts)
	}
}

func TestImplicitTLSTrustsTheGivenCA(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 1, TLS: imaptest.TLSImplicit})
	appendMessages(t, s, 1, 1)
	// The replica's self-signed certificate, as an operator would put it
	// in a CA file.
	conn, err := tls.Dial("tcp", s.Replica(0).Addr(), s.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	der := conn.ConnectionState().PeerCertificates[0].Raw
	conn.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-replicas", s.Replica(0).Addr(), "-user", s.Username(), "-state", t.TempDir(),
		"-existing", "-tls", "implicit", "-ca", caFile}
	env := []string{"MAILWATCH_PASSWORD=" + s.Password()}

	out := newLines(t)
	stop := start(t, args, env, out)
	if got := out.wait(1); got[0].MessageID != "order-1@example.org" {
		t.Errorf("got %+v", got[0])
	}
	stop()

	// Without the CA the certificate is not trusted and nothing is read.
	var stderr syncbuf.Buffer
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	bad := newLines(t)
	done := make(chan int, 1)
	untrusted := []string{"-replicas", s.Replica(0).Addr(), "-user", s.Username(), "-state", t.TempDir(), "-existing", "-tls", "implicit"}
	go func() { done <- run(ctx, untrusted, env, bad, &stderr) }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "certificate") {
		if time.Now().After(deadline) {
			t.Fatalf("log does not mention the certificate failure:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond) // polling the log with a deadline
	}
	cancel()
	if code := <-done; code != exitStopped {
		t.Errorf("untrusted replica: exit status %d", code)
	}
	bad.mu.Lock()
	defer bad.mu.Unlock()
	if len(bad.records) != 0 {
		t.Errorf("read %d messages from an untrusted replica", len(bad.records))
	}
}

func TestMovesBackToThePreferredReplica(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	primary, backup := s.Replica(0), s.Replica(1)
	env := []string{"MAILWATCH_PASSWORD=" + s.Password()}
	out := newLines(t)
	stop := start(t, watchArgs(s, t.TempDir(), "-existing", "-probe", "100ms", "-heartbeat", "300ms", "-failure-hold", "300ms"), env, out)

	appendMessages(t, s, 1, 1)
	if got := out.wait(1); got[0].Replica != primary.Addr() {
		t.Fatalf("first message read from %s, want the preferred %s", got[0].Replica, primary.Addr())
	}
	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	appendMessages(t, s, 2, 2)
	if got := out.wait(2); got[1].Replica != backup.Addr() {
		t.Fatalf("message after the kill read from %s, want %s", got[1].Replica, backup.Addr())
	}
	if err := primary.Start(); err != nil {
		t.Fatal(err)
	}
	// Once probes see the preferred replica up, a heartbeat moves the
	// watch back. Mail keeps arriving, one message every 50 ms, until one
	// is read there.
	n := 2
	arrivals := time.NewTicker(50 * time.Millisecond)
	defer arrivals.Stop()
	deadline := time.After(20 * time.Second)
	for back := false; !back; {
		select {
		case <-deadline:
			t.Fatalf("never moved back to %s after %d messages", primary.Addr(), n)
		case <-arrivals.C:
		}
		n++
		appendMessages(t, s, n, n)
		got := out.wait(n)
		back = got[n-1].Replica == primary.Addr()
	}
	stop()
	ids := messageIDs(out.wait(n))
	for i := 1; i <= n; i++ {
		if c := ids[fmt.Sprintf("order-%d@example.org", i)]; c != 1 {
			t.Errorf("order %d emitted %d times, want once", i, c)
		}
	}
}
