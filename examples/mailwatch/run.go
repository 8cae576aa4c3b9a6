package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/imapfailover"
	"github.com/hamail/hamail/internal/syncbuf"
)

// Exit statuses.
const (
	exitStopped = 0 // stopped by a signal (or the caller's context)
	exitFailure = 1 // the watch failed: state not writable, POST abandoned, ...
	exitUsage   = 2 // bad flags or environment
)

// config is what the flags and the environment say.
type config struct {
	replicas   []string
	user       string
	password   string
	mailbox    string
	stateDir   string
	tlsMode    imapfailover.TLSMode
	caFile     string
	serverName string
	postURL    string
	existing   bool
	body       bool
	heartbeat  time.Duration
	probe      time.Duration
	hold       time.Duration
	timeout    time.Duration
	retryMin   time.Duration
	retryMax   time.Duration
	verbose    bool
}

// parseConfig reads args with the environment as defaults. env holds
// "KEY=value" strings as os.Environ returns them.
func parseConfig(args, env []string, stderr io.Writer) (*config, error) {
	getenv := func(k string) string {
		for i := len(env) - 1; i >= 0; i-- {
			if v, ok := strings.CutPrefix(env[i], k+"="); ok {
				return v
			}
		}
		return ""
	}
	or := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	fs := flag.NewFlagSet("mailwatch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		replicas     = fs.String("replicas", getenv("MAILWATCH_REPLICAS"), "comma-separated `host:port` list of the IMAP replicas, preferred first (env MAILWATCH_REPLICAS)")
		user         = fs.String("user", getenv("MAILWATCH_USER"), "login `name` (env MAILWATCH_USER)")
		password     = fs.String("password", "", "password; visible to other local users in the process list, prefer MAILWATCH_PASSWORD or -password-file")
		passwordFile = fs.String("password-file", "", "read the password from the first line of `file` (env MAILWATCH_PASSWORD_FILE)")
		mailbox      = fs.String("mailbox", or(getenv("MAILWATCH_MAILBOX"), "INBOX"), "`mailbox` to watch (env MAILWATCH_MAILBOX)")
		stateDir     = fs.String("state", or(getenv("MAILWATCH_STATE"), "mailwatch-state"), "`directory` where the last emitted UID is kept across restarts (env MAILWATCH_STATE)")
		tlsMode      = fs.String("tls", or(getenv("MAILWATCH_TLS"), "implicit"), "transport `mode`: implicit (port 993), starttls or none (env MAILWATCH_TLS)")
		caFile       = fs.String("ca", "", "PEM `file` of certificate authorities to trust instead of the system's")
		serverName   = fs.String("server-name", "", "`name` expected in the replicas' certificates (default: each replica's host)")
		postURL      = fs.String("url", getenv("MAILWATCH_URL"), "POST each message as JSON to `url` instead of printing it (env MAILWATCH_URL)")
		existing     = fs.Bool("existing", false, "on the very first run, also emit the messages already in the mailbox")
		body         = fs.Bool("body", false, "include the whole message, base64-encoded, in the \"raw\" field")
		heartbeat    = fs.Duration("heartbeat", time.Minute, "how often to leave IDLE and check that the replica still answers")
		hold         = fs.Duration("failure-hold", 5*time.Second, "how long a replica that failed is tried only after the others")
		probe        = fs.Duration("probe", 30*time.Second, "how often to probe each replica (greeting and LOGIN), so that the preferred one is used again once it is back; 0 disables")
		timeout      = fs.Duration("timeout", 30*time.Second, "how long a replica may stay silent during a command before it is given up")
		retryMin     = fs.Duration("retry-min", time.Second, "first pause before retrying a failed POST")
		retryMax     = fs.Duration("retry-max", time.Minute, "longest pause between POST retries")
		verbose      = fs.Bool("v", false, "log connections and failovers in detail")
	)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: mailwatch -replicas host:port[,host:port...] -user NAME [flags]\n\n"+
			"Follows a mailbox across IMAP replicas and emits each new message once,\n"+
			"as a JSON line on standard output or as a POST to -url.\n"+
			"The password comes from -password, -password-file, MAILWATCH_PASSWORD or\nMAILWATCH_PASSWORD_FILE, the first one set.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c := &config{
		user: *user, mailbox: *mailbox, stateDir: *stateDir, caFile: *caFile, serverName: *serverName,
		postURL: *postURL, existing: *existing, body: *body, heartbeat: *heartbeat, probe: *probe, hold: *hold, timeout: *timeout,
		retryMin: *retryMin, retryMax: *retryMax, verbose: *verbose,
	}
	for r := range strings.SplitSeq(*replicas, ",") {
		r = strings.TrimSpace(r)
		if r == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(r); err != nil || port == "" {
			return nil, fmt.Errorf("-replicas: %q is not host:port", r)
		}
		c.replicas = append(c.replicas, r)
	}
	if len(c.replicas) == 0 {
		return nil, errors.New("-replicas (or MAILWATCH_REPLICAS) is required")
	}
	if c.user == "" {
		return nil, errors.New("-user (or MAILWATCH_USER) is required")
	}
	// Flags first, then the environment.
	pwFile := *passwordFile
	switch {
	case *password != "":
		c.password = *password
	case pwFile == "" && getenv("MAILWATCH_PASSWORD") != "":
		c.password = getenv("MAILWATCH_PASSWORD")
	default:
		if pwFile == "" {
			pwFile = getenv("MAILWATCH_PASSWORD_FILE")
		}
		if pwFile == "" {
			break
		}
		b, err := os.ReadFile(pwFile)
		if err != nil {
			return nil, fmt.Errorf("-password-file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		c.password = strings.TrimRight(line, "\r")
	}
	if c.password == "" {
		return nil, errors.New("no password: set MAILWATCH_PASSWORD, -password-file or -password (an empty password file counts as none)")
	}
	switch *tlsMode {
	case "implicit":
		c.tlsMode = imapfailover.TLSImplicit
	case "starttls":
		c.tlsMode = imapfailover.TLSStartTLS
	case "none":
		c.tlsMode = imapfailover.TLSNone
	default:
		return nil, fmt.Errorf("-tls: %q is not implicit, starttls or none", *tlsMode)
	}
	if c.mailbox == "" {
		return nil, errors.New("-mailbox must not be empty")
	}
	if c.stateDir == "" {
		return nil, errors.New("-state must not be empty")
	}
	if c.postURL != "" {
		u, err := url.Parse(c.postURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("-url: %q is not an http or https URL", c.postURL)
		}
	}
	if c.heartbeat <= 0 || c.timeout <= 0 || c.retryMin <= 0 || c.retryMax < c.retryMin || c.probe < 0 || c.hold < 0 {
		return nil, errors.New("-heartbeat, -timeout and -retry-min must be positive, -retry-max at least -retry-min, -probe and -failure-hold not negative")
	}
	return c, nil
}

// run is mailwatch without the process around it: it watches until ctx
// ends (exit status 0) or the watch fails (1); bad flags give 2.
func run(ctx context.Context, args, env []string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, env, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitStopped
	}
	if err != nil {
		fmt.Fprintln(stderr, "mailwatch:", err)
		return exitUsage
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	// Records come from several goroutines; the caller may share stderr.
	log := slog.New(slog.NewTextHandler(syncbuf.NewWriter(stderr), &slog.HandlerOptions{Level: level}))

	var tlsConfig *tls.Config
	if cfg.tlsMode != imapfailover.TLSNone && (cfg.caFile != "" || cfg.serverName != "") {
		tlsConfig = &tls.Config{ServerName: cfg.serverName, MinVersion: tls.VersionTLS12}
		if cfg.caFile != "" {
			pem, err := os.ReadFile(cfg.caFile)
			if err != nil {
				fmt.Fprintln(stderr, "mailwatch: -ca:", err)
				return exitUsage
			}
			tlsConfig.RootCAs = x509.NewCertPool()
			if !tlsConfig.RootCAs.AppendCertsFromPEM(pem) {
				fmt.Fprintf(stderr, "mailwatch: -ca: no PEM certificate in %s\n", cfg.caFile)
				return exitUsage
			}
		}
	}
	var replicas []imapfailover.Replica
	for i, addr := range cfg.replicas {
		r := imapfailover.Replica{Name: addr, Addr: addr, Priority: i, TLS: cfg.tlsMode,
			Username: cfg.user, Password: cfg.password}
		if tlsConfig != nil {
			r.TLSConfig = tlsConfig.Clone()
			if r.TLSConfig.ServerName == "" {
				host, _, _ := net.SplitHostPort(addr)
				r.TLSConfig.ServerName = host
			}
		}
		replicas = append(replicas, r)
	}
	// With several replicas, a health checker probes them so that Watch
	// moves back to the preferred one once it is up again (at a
	// heartbeat); without it Watch stays where a failover took it.
	var checker *health.Checker
	if cfg.probe > 0 && len(replicas) > 1 {
		checker = health.New(&health.Options{Interval: cfg.probe, FastInterval: max(cfg.probe/4, 100*time.Millisecond),
			DownInterval: cfg.probe, Timeout: cfg.timeout, Logger: log})
		for _, r := range replicas {
			t := health.Target{Name: r.Name, Address: r.Addr, Kind: health.ProbeIMAP,
				TLSConfig: r.TLSConfig, Username: r.Username, Password: r.Password}
			switch r.TLS {
			case imapfailover.TLSImplicit:
				t.TLS = health.ImplicitTLS
			case imapfailover.TLSStartTLS:
				t.TLS = health.StartTLS
			}
			if err := checker.AddTarget(t); err != nil {
				fmt.Fprintln(stderr, "mailwatch:", err)
				return exitUsage
			}
		}
		probeCtx, stopProbes := context.WithCancel(ctx)
		probesDone := make(chan struct{})
		go func() {
			defer close(probesDone)
			_ = checker.Run(probeCtx) // returns when probeCtx ends
		}()
		defer func() {
			stopProbes()
			<-probesDone
		}()
	}
	var view health.View
	if checker != nil {
		view = checker
	}
	pool, err := imapfailover.New(&imapfailover.Options{
		Health:         view,
		Replicas:       replicas,
		MaxConns:       2,
		CommandTimeout: cfg.timeout,
		DialTimeout:    cfg.timeout,
		Heartbeat:      cfg.heartbeat,
		FailureHold:    cfg.hold,
		ReconnectDelay: time.Second,
		Logger:         log,
	})
	if err != nil {
		fmt.Fprintln(stderr, "mailwatch:", err)
		return exitUsage
	}
	defer pool.Close()

	mopts := &imapfailover.MailboxOptions{
		Store:           imapfailover.NewFileStore(cfg.stateDir),
		DeliverExisting: cfg.existing,
	}
	if cfg.body {
		mopts.Sections = []*imap.FetchItemBodySection{{}}
	}
	mbox := pool.Mailbox(cfg.mailbox, mopts)

	var emit func(ctx context.Context, rec *record, line []byte) error
	if cfg.postURL != "" {
		p := &poster{url: cfg.postURL, client: &http.Client{Timeout: cfg.timeout},
			min: cfg.retryMin, max: cfg.retryMax, log: log}
		emit = p.post
	} else {
		emit = func(_ context.Context, _ *record, line []byte) error {
			// One write per line: a reader of a pipe never sees half a
			// record followed by another.
			_, err := stdout.Write(line)
			return err
		}
	}
	log.Info("watching", "mailbox", cfg.mailbox, "replicas", strings.Join(cfg.replicas, ","), "state", cfg.stateDir)
	err = mbox.Watch(ctx, func(ctx context.Context, m *imapfailover.Message) error {
		rec := newRecord(cfg.mailbox, m, cfg.body)
		line, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		line = append(line, '\n')
		if err := emit(ctx, rec, line); err != nil {
			return err
		}
		log.Debug("emitted", "uid", m.UID, "message_id", rec.MessageID, "replica", m.Replica)
		return nil
	})
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		log.Info("stopped")
		return exitStopped
	}
	log.Error("watch failed", "err", err)
	return exitFailure
}

// record is one emitted message.
type record struct {
	Mailbox      string     `json:"mailbox"`
	UIDValidity  uint32     `json:"uid_validity"`
	UID          uint32     `json:"uid"`
	Replica      string     `json:"replica"`
	MessageID    string     `json:"message_id,omitempty"`
	Date         *time.Time `json:"date,omitempty"`
	InternalDate time.Time  `json:"internal_date"`
	Subject      string     `json:"subject,omitempty"`
	From         []address  `json:"from,omitempty"`
	To           []address  `json:"to,omitempty"`
	Cc           []address  `json:"cc,omitempty"`
	Size         int64      `json:"size"`
	Flags        []string   `json:"flags,omitempty"`
	// Raw is the whole message (RFC 5322), base64 in JSON; with -body only.
	Raw []byte `json:"raw,omitempty"`
}

type address struct {
	Name    string `json:"name,omitempty"`
	Address string `json:"address"`
}

func newRecord(mailbox string, m *imapfailover.Message, body bool) *record {
	r := &record{
		Mailbox: mailbox, UIDValidity: m.UIDValidity, UID: uint32(m.UID), Replica: m.Replica,
		InternalDate: m.InternalDate, Size: m.Size,
	}
	if e := m.Envelope; e != nil {
		r.MessageID, r.Subject = e.MessageID, e.Subject
		if !e.Date.IsZero() {
			d := e.Date
			r.Date = &d
		}
		r.From, r.To, r.Cc = addresses(e.From), addresses(e.To), addresses(e.Cc)
	}
	for _, f := range m.Flags {
		r.Flags = append(r.Flags, string(f))
	}
	if body {
		r.Raw = m.Section(&imap.FetchItemBodySection{})
	}
	return r
}

func addresses(as []imap.Address) []address {
	var out []address
	for _, a := range as {
		if a.IsGroupStart() || a.IsGroupEnd() {
			continue
		}
		out = append(out, address{Name: a.Name, Address: a.Addr()})
	}
	return out
}

// poster POSTs records to a URL until one gets a 2xx answer.
type poster struct {
	url      string
	client   *http.Client
	min, max time.Duration
	log      *slog.Logger
}

// post retries until the server answers 2xx or ctx ends: the message stays
// unacknowledged (and is emitted again after a restart) until then, and the
// messages after it wait, so none is skipped. Every status other than 2xx
// is retried, 4xx included: dropping a message because a receiver
// misbehaves for a while would lose it.
func (p *poster) post(ctx context.Context, rec *record, line []byte) error {
	wait := p.min
	for attempt := 1; ; attempt++ {
		err := p.once(ctx, rec, line)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Full jitter in [wait/2, wait) so that several watchers do not
		// hammer a receiver that comes back in lock-step.
		d := wait/2 + rand.N(wait/2+1)
		p.log.Warn("POST failed, will retry", "message_id", rec.MessageID, "uid", rec.UID, "attempt", attempt, "in", d.Round(time.Millisecond), "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, p.max)
	}
}

func (p *poster) once(ctx context.Context, rec *record, line []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(line))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	// A receiver can drop a repeat (crash between POST and state save)
	// with this key: UIDVALIDITY and UID name one message for good
	// (RFC 3501 §2.3.1.1).
	req.Header.Set("Idempotency-Key", fmt.Sprintf("%s/%d/%d", rec.Mailbox, rec.UIDValidity, rec.UID))
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("server answered %s", resp.Status)
	}
	return nil
}
