package health_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/faultproxy"
	"github.com/hamail/hamail/internal/imaptest"
	"github.com/hamail/hamail/internal/smtptest"
)

// probe runs the default prober once against tg with the given timeout.
func probe(t *testing.T, tg health.Target, timeout time.Duration) error {
	t.Helper()
	if tg.Name == "" {
		tg.Name = "target"
	}
	if tg.EHLOName == "" {
		tg.EHLOName = "probe.example.org"
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return (&health.NetProber{}).Probe(ctx, tg)
}

// wantProbeError checks that err is a *ProbeError at step wrapping want
// (when want is not nil).
func wantProbeError(t *testing.T, err error, step string, want error) *health.ProbeError {
	t.Helper()
	var pe *health.ProbeError
	if !errors.As(err, &pe) {
		t.Fatalf("probe error %v (%T), want a *health.ProbeError", err, err)
	}
	if pe.Step != step || (want != nil && !errors.Is(err, want)) {
		t.Fatalf("probe error %v: step %q, want step %q wrapping %v", err, pe.Step, step, want)
	}
	return pe
}

func TestTCPProbe(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := probe(t, health.Target{Address: addr}, 5*time.Second); err != nil {
		t.Errorf("listening port: %v", err)
	}
	ln.Close()
	err = probe(t, health.Target{Address: addr}, 5*time.Second)
	wantProbeError(t, err, "connect", nil)
}

func TestSMTPProbe(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, nil)
	if err := probe(t, health.Target{Kind: health.ProbeSMTP, Address: srv.Addr()}, 5*time.Second); err != nil {
		t.Fatalf("probe: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := srv.Wait(ctx, func(s smtptest.Stats) bool { return s.Open == 0 && s.Quit == 1 })
	if err != nil {
		t.Fatalf("server stats %+v: %v", st, err)
	}
	if st.EHLO != 1 || st.Mail != 0 || st.StartTLS != 0 {
		t.Errorf("server saw %+v, want one EHLO and QUIT", st)
	}
	if c := srv.Conns(); len(c) != 1 || c[0].Helo != "probe.example.org" {
		t.Errorf("connections %+v", c)
	}
}

func TestSMTPProbeStartTLS(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, nil)
	tg := health.Target{Kind: health.ProbeSMTP, Address: srv.Addr(), TLS: health.StartTLS,
		TLSConfig: srv.ClientTLSConfig("")}
	if err := probe(t, tg, 5*time.Second); err != nil {
		t.Fatalf("verified STARTTLS: %v", err)
	}
	if c := srv.Conns(); len(c) != 1 || c[0].TLS == nil {
		t.Errorf("connection not upgraded: %+v", c)
	}

	// The server's certificate is self-signed: with the system roots it
	// must not verify.
	tg.TLSConfig = nil
	err := probe(t, tg, 5*time.Second)
	pe := wantProbeError(t, err, "tls", nil)
	var unknown x509.UnknownAuthorityError
	if !errors.As(pe, &unknown) {
		t.Errorf("TLS error %v, want an unknown authority", pe.Err)
	}
	// Nor for a name the certificate does not carry.
	tg.TLSConfig = srv.ClientTLSConfig("mx.other.example")
	wantProbeError(t, probe(t, tg, 5*time.Second), "tls", nil)

	// A server that does not offer STARTTLS is down when TLS is required.
	caps := srv.Capabilities()
	caps.StartTLS = false
	srv.SetCapabilities(caps)
	tg.TLSConfig = srv.ClientTLSConfig("")
	wantProbeError(t, probe(t, tg, 5*time.Second), "starttls", health.ErrNoStartTLS)
}

func TestSMTPProbeImplicitTLS(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, &smtptest.Options{ImplicitTLS: true})
	tg := health.Target{Kind: health.ProbeSMTP, Address: srv.Addr(), TLS: health.ImplicitTLS,
		TLSConfig: srv.ClientTLSConfig("localhost")}
	if err := probe(t, tg, 5*time.Second); err != nil {
		t.Fatalf("implicit TLS: %v", err)
	}
	tg.TLS = health.NoTLS // speaking clear text to a TLS port gets no greeting
	if err := probe(t, tg, 2*time.Second); err == nil {
		t.Error("clear-text probe of a TLS port passed")
	}
}

func TestSMTPProbeReplies(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, nil)
	tg := health.Target{Kind: health.ProbeSMTP, Address: srv.Addr()}
	for _, tc := range []struct {
		name  string
		stage smtptest.Stage
		fault smtptest.Fault
		step  string
		code  int
		err   error
	}{
		{"421 greeting", smtptest.StageGreeting, smtptest.Reply(421, smtp.EnhancedCode{4, 3, 2}, "closing"), "greeting", 421, health.ErrBadGreeting},
		{"554 greeting", smtptest.StageGreeting, smtptest.Reply(554, smtp.EnhancedCode{5, 3, 2}, "no service"), "greeting", 554, health.ErrBadGreeting},
		{"dropped before greeting", smtptest.StageGreeting, smtptest.Fault{Drop: true}, "greeting", 0, io.EOF},
		{"421 to EHLO", smtptest.StageEHLO, smtptest.Reply(421, smtp.EnhancedCode{4, 3, 2}, "shutting down"), "ehlo", 421, health.ErrRejected},
		{"dropped at EHLO", smtptest.StageEHLO, smtptest.Fault{Drop: true}, "ehlo", 0, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.SetFault(tc.stage, tc.fault)
			defer srv.ClearFaults()
			pe := wantProbeError(t, probe(t, tg, 5*time.Second), tc.step, tc.err)
			if pe.Code != tc.code || pe.Kind != health.ProbeSMTP || pe.Target != "target" {
				t.Errorf("probe error %+v", pe)
			}
		})
	}

	// A server that does not know EHLO (502) is asked HELO (RFC 5321 §3.2).
	srv.SetFault(smtptest.StageEHLO, smtptest.Reply(502, smtp.EnhancedCode{5, 5, 1}, "unrecognized"))
	if err := probe(t, tg, 5*time.Second); err != nil {
		t.Errorf("EHLO 502 then HELO: %v", err)
	}
	if st := srv.Stats(); st.HELO != 1 {
		t.Errorf("HELO count %d, want 1", st.HELO)
	}
	// ... but not when TLS is required, which needs the EHLO keywords.
	tls := tg
	tls.TLS, tls.TLSConfig = health.StartTLS, srv.ClientTLSConfig("")
	wantProbeError(t, probe(t, tls, 5*time.Second), "ehlo", health.ErrRejected)
	srv.ClearFaults()
}

// scriptServer accepts connections on loopback and runs script on each
// with a reader and the connection; it returns the address. Connections
// and the listener are closed at cleanup.
func scriptServer(t *testing.T, script func(r *bufio.Reader, w net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				script(bufio.NewReader(c), c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// converse answers each line read with the reply the map gives for its
// first word (upper case); the greeting is sent first. It stops at QUIT or
// LOGOUT, or at a missing reply.
// IMAP commands (tagged) have their tag put in place of TAG in the reply.
func converse(tagged bool, greeting string, replies map[string]string) func(*bufio.Reader, net.Conn) {
	return func(r *bufio.Reader, w net.Conn) {
		io.WriteString(w, greeting)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(line)
			if len(f) == 0 {
				return
			}
			key := strings.ToUpper(f[0])
			tag := ""
			if tagged && len(f) > 1 {
				tag, key = f[0], strings.ToUpper(f[1])
			}
			reply, ok := replies[key]
			if !ok {
				return
			}
			io.WriteString(w, strings.ReplaceAll(reply, "TAG", tag))
			if key == "QUIT" || key == "LOGOUT" {
				return
			}
		}
	}
}

func TestSMTPProbeScripted(t *testing.T) {
	t.Parallel()
	okEHLO := "250-mx.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
	for _, tc := range []struct {
		name     string
		greeting string
		replies  map[string]string
		step     string // "" for success
		err      error
	}{
		{"multi-line greeting", "220-mx.example.test ESMTP\r\n220 ready\r\n",
			map[string]string{"EHLO": okEHLO, "QUIT": "221 bye\r\n"}, "", nil},
		{"bare code lines", "220\r\n", map[string]string{"EHLO": "250\r\n", "QUIT": "221\r\n"}, "", nil},
		{"server closes on QUIT", "220 ready\r\n", map[string]string{"EHLO": okEHLO, "QUIT": ""}, "", nil},
		{"garbage greeting", "SSH-2.0-OpenSSH_9.2\r\n", nil, "greeting", health.ErrMalformed},
		{"code changes in a reply", "220-ready\r\n421 busy\r\n", nil, "greeting", health.ErrMalformed},
		{"greeting 120 then nothing", "120 wait\r\n", nil, "greeting", health.ErrBadGreeting},
		{"greeting line too long", "220 " + strings.Repeat("x", 9000) + "\r\n", nil, "greeting", health.ErrMalformed},
		{"endless multi-line reply", "220 ok\r\n", map[string]string{"EHLO": strings.Repeat("250-X\r\n", 200) + "250 end\r\n"}, "ehlo", health.ErrMalformed},
		{"QUIT refused", "220 ok\r\n", map[string]string{"EHLO": okEHLO, "QUIT": "500 what\r\n"}, "quit", health.ErrRejected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr := scriptServer(t, converse(false, tc.greeting, tc.replies))
			err := probe(t, health.Target{Kind: health.ProbeSMTP, Address: addr}, 5*time.Second)
			if tc.step == "" {
				if err != nil {
					t.Fatalf("probe: %v", err)
				}
				return
			}
			wantProbeError(t, err, tc.step, tc.err)
		})
	}
}

// TestSilentServerFailsWithinTimeout: behind a black-holing proxy the
// server accepts and never speaks; every probe kind fails when its time is
// up, as a timeout.
func TestSilentServerFailsWithinTimeout(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, nil)
	set := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	for _, tc := range []struct {
		kind health.ProbeKind
		addr string
		step string
	}{
		{health.ProbeSMTP, srv.Addr(), "greeting"},
		{health.ProbeIMAP, set.Replica(0).Addr(), "greeting"},
	} {
		t.Run(tc.kind.String(), func(t *testing.T) {
			t.Parallel()
			px := faultproxy.Start(t, tc.addr)
			if err := probe(t, health.Target{Kind: tc.kind, Address: px.Addr()}, 5*time.Second); err != nil {
				t.Fatalf("through the proxy in pass mode: %v", err)
			}
			if err := px.SetMode(faultproxy.BlackHole); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- probe(t, health.Target{Kind: tc.kind, Address: px.Addr()}, 300*time.Millisecond) }()
			select {
			case err := <-done:
				pe := wantProbeError(t, err, tc.step, context.DeadlineExceeded)
				if !pe.Timeout() {
					t.Errorf("%v: Timeout() false", pe)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("probe of a silent server did not end")
			}
		})
	}
}

func TestIMAPProbe(t *testing.T) {
	t.Parallel()
	set := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	r := set.Replica(0)
	tg := health.Target{Kind: health.ProbeIMAP, Address: r.Addr()}
	if err := probe(t, tg, 5*time.Second); err != nil {
		t.Fatalf("anonymous probe: %v", err)
	}
	tg.Username, tg.Password = set.Username(), set.Password()
	if err := probe(t, tg, 5*time.Second); err != nil {
		t.Fatalf("probe with LOGIN: %v", err)
	}
	tg.Password = "wrong"
	pe := wantProbeError(t, probe(t, tg, 5*time.Second), "login", health.ErrRejected)
	if !strings.HasPrefix(pe.Text, "NO") {
		t.Errorf("LOGIN refusal text %q", pe.Text)
	}
	if n := r.Sessions(); n != 3 {
		t.Errorf("replica saw %d sessions, want 3", n)
	}
}

func TestIMAPProbeTLS(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		set  imaptest.TLSMode
		mode health.TLSMode
	}{
		{"starttls", imaptest.TLSStartTLS, health.StartTLS},
		{"implicit", imaptest.TLSImplicit, health.ImplicitTLS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			set := imaptest.NewSet(t, &imaptest.Options{Replicas: 1, TLS: tc.set})
			tg := health.Target{Kind: health.ProbeIMAP, Address: set.Replica(0).Addr(), TLS: tc.mode,
				TLSConfig: set.ClientTLSConfig(), Username: set.Username(), Password: set.Password()}
			if err := probe(t, tg, 5*time.Second); err != nil {
				t.Fatalf("verified TLS: %v", err)
			}
			tg.TLSConfig = &tls.Config{}
			wantProbeError(t, probe(t, tg, 5*time.Second), "tls", nil)
		})
	}
	// STARTTLS required from a server without it.
	set := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	tg := health.Target{Kind: health.ProbeIMAP, Address: set.Replica(0).Addr(), TLS: health.StartTLS}
	wantProbeError(t, probe(t, tg, 5*time.Second), "starttls", health.ErrNoStartTLS)
}

func TestIMAPProbeScripted(t *testing.T) {
	t.Parallel()
	caps := "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nTAG OK done\r\n"
	logout := "* BYE logging out\r\nTAG OK bye\r\n"
	for _, tc := range []struct {
		name     string
		greeting string
		replies  map[string]string
		user     string
		pass     string
		step     string // "" for success
		err      error
	}{
		{"bye greeting", "* BYE too many connections\r\n", nil, "", "", "greeting", health.ErrBadGreeting},
		{"garbage greeting", "220 smtp.example.test ESMTP\r\n", nil, "", "", "greeting", health.ErrBadGreeting},
		{"tagged greeting", "a1 OK hi\r\n", nil, "", "", "greeting", health.ErrBadGreeting},
		{"preauth skips login", "* PREAUTH welcome\r\n", map[string]string{"CAPABILITY": caps, "LOGOUT": logout},
			"alice", "secret", "", nil},
		{"lower-case keywords", "* ok hi\r\n", map[string]string{"CAPABILITY": "* capability imap4rev1\r\nTAG ok\r\n", "LOGOUT": "TAG ok\r\n"},
			"", "", "", nil},
		{"literal in a response", "* OK hi\r\n",
			map[string]string{"CAPABILITY": "* ID (\"name\" {13}\r\nh1 OK trapped)\r\n" + caps, "LOGOUT": logout},
			"", "", "", nil},
		{"server closes on LOGOUT", "* OK hi\r\n", map[string]string{"CAPABILITY": caps, "LOGOUT": ""}, "", "", "", nil},
		{"bye during capability", "* OK hi\r\n", map[string]string{"CAPABILITY": "* BYE shutting down\r\n"}, "", "", "capability", health.ErrRejected},
		{"capability BAD", "* OK hi\r\n", map[string]string{"CAPABILITY": "TAG BAD no\r\n"}, "", "", "capability", health.ErrRejected},
		{"login disabled", "* OK hi\r\n", map[string]string{"CAPABILITY": "* CAPABILITY IMAP4rev1 LOGINDISABLED\r\nTAG OK\r\n"},
			"alice", "secret", "login", health.ErrLoginDisabled},
		{"wrong tag", "* OK hi\r\n", map[string]string{"CAPABILITY": "zz OK\r\n"}, "", "", "capability", health.ErrMalformed},
		{"huge literal", "* OK hi\r\n", map[string]string{"CAPABILITY": "* X {999999999}\r\n"}, "", "", "capability", health.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr := scriptServer(t, converse(true, tc.greeting, tc.replies))
			err := probe(t, health.Target{Kind: health.ProbeIMAP, Address: addr, Username: tc.user, Password: tc.pass}, 5*time.Second)
			if tc.step == "" {
				if err != nil {
					t.Fatalf("probe: %v", err)
				}
				return
			}
			wantProbeError(t, err, tc.step, tc.err)
		})
	}
}

// TestIMAPLoginQuotingAndLiterals: credentials are sent as quoted strings,
// with escapes, or as synchronizing literals when they are 8-bit.
func TestIMAPLoginQuotingAndLiterals(t *testing.T) {
	t.Parallel()
	got := make(chan string, 1)
	addr := scriptServer(t, func(r *bufio.Reader, w net.Conn) {
		io.WriteString(w, "* OK hi\r\n")
		var login strings.Builder
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(line)
			switch {
			case len(f) >= 2 && f[1] == "CAPABILITY":
				io.WriteString(w, "* CAPABILITY IMAP4rev1\r\n"+f[0]+" OK\r\n")
			case len(f) >= 2 && f[1] == "LOGIN" || login.Len() > 0:
				login.WriteString(line)
				if n := strings.LastIndexByte(line, '{'); n >= 0 && strings.HasSuffix(line, "}\r\n") {
					io.WriteString(w, "+ go ahead\r\n")
					continue
				}
				got <- login.String()
				io.WriteString(w, strings.Fields(login.String())[0]+" OK logged in\r\n")
				login.Reset()
			case len(f) >= 2 && f[1] == "LOGOUT":
				io.WriteString(w, "* BYE\r\n"+f[0]+" OK\r\n")
				return
			default:
				return
			}
		}
	})
	tg := health.Target{Kind: health.ProbeIMAP, Address: addr, Username: `al"ice\`, Password: "pässwörd"}
	if err := probe(t, tg, 5*time.Second); err != nil {
		t.Fatalf("probe: %v", err)
	}
	want := "h4 LOGIN \"al\\\"ice\\\\\" {10}\r\npässwörd\r\n"
	if l := <-got; l != want {
		t.Errorf("LOGIN sent as %q, want %q", l, want)
	}
}
