package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/crypto/bcrypt"

	"github.com/hamail/hamail"
	"github.com/hamail/hamail/examples/hasend/maildrop"
	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/metrics"
	"github.com/hamail/hamail/mxresolve"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
	"github.com/hamail/hamail/smtpclient"
)

// Exit statuses (sysexits.h where one fits).
const (
	exOK      = 0
	exFailure = 1  // the server could not start or failed while running
	exUsage   = 64 // bad command line
	exConfig  = 78 // bad configuration
)

// keyRetention is how long the queue remembers the idempotency key of a
// delivered message: a maildrop file picked up again after a crash is then
// recognised instead of sent twice.
const keyRetention = 24 * time.Hour

// run is the whole daemon; main adds the signal context and the standard
// streams. It returns when ctx ends (after a graceful shutdown) or the
// server fails.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	inv, err := parseConfig(args, stderr)
	if err != nil {
		var ue *usageError
		var ce *configError
		switch {
		case errors.Is(err, flag.ErrHelp):
			return exOK
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "relayd: %v\n", err)
			return exUsage
		case errors.As(err, &ce):
			fmt.Fprintf(stderr, "relayd: %v\n", err)
			return exConfig
		}
		fmt.Fprintf(stderr, "relayd: %v\n", err)
		return exFailure
	}
	if inv.hashPassword {
		return hashPassword(stdin, stdout, stderr, inv.bcryptCost)
	}
	cfg := inv.cfg
	if inv.printConfig {
		b, _ := json.MarshalIndent(cfg, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return exOK
	}
	d := &daemon{cfg: cfg, stdout: stdout, stderr: stderr}
	if err := d.start(); err != nil {
		fmt.Fprintf(stderr, "relayd: %v\n", err)
		d.stop()
		var ce *configError
		if errors.As(err, &ce) {
			return exConfig
		}
		return exFailure
	}
	return d.serve(ctx)
}

// daemon holds what run starts, so that it can be stopped in order.
type daemon struct {
	cfg    *Config
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger

	mailer  *hamail.Mailer
	server  *Server
	smtpLn  net.Listener
	smtpsLn net.Listener
	httpLn  net.Listener
	httpSrv *http.Server
	checker *health.Checker

	bg       sync.WaitGroup
	bgCancel context.CancelFunc
}

func (d *daemon) start() error {
	cfg := d.cfg
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	d.log = slog.New(slog.NewTextHandler(d.stderr, &slog.HandlerOptions{Level: level}))

	var us *users
	if cfg.UsersFile != "" {
		var err error
		if us, err = loadUsers(cfg.UsersFile); err != nil {
			return &configError{err}
		}
	}
	var trusted []netip.Prefix
	for _, n := range cfg.TrustedNetworks {
		trusted = append(trusted, netip.MustParsePrefix(n)) // checked by Config.check
	}
	tlsConf, err := serverTLS(cfg)
	if err != nil {
		return &configError{err}
	}
	if cfg.TLSSelfSigned {
		d.log.Warn("using a self-signed certificate: clients cannot verify this server")
	}
	relays, err := smtpRelays(cfg.Relays)
	if err != nil {
		return &configError{err}
	}
	fallback, err := smtpRelays(cfg.FallbackRelays)
	if err != nil {
		return &configError{err}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg, nil)
	if err != nil {
		return err
	}
	submissions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "relayd_submissions_total",
		Help: "Messages received by the submission server, by result: queued, refused (5xx), deferred (4xx).",
	}, []string{"result"})
	reg.MustRegister(submissions)

	var hv health.View
	if cfg.Probe && len(relays)+len(fallback) > 0 {
		d.checker = health.New(&health.Options{Hooks: m.HealthHooks(), Logger: d.log, EHLOName: cfg.Hostname})
		for _, r := range append(append([]smtpclient.Relay(nil), relays...), fallback...) {
			if err := d.checker.AddTarget(health.Target{Name: r.Name, Address: r.Addr, Kind: health.ProbeSMTP}); err != nil {
				return &configError{err}
			}
		}
		hv = d.checker
	}

	ho := &hamail.Options{
		Relays:         relays,
		FallbackRelays: fallback,
		SMTP: &smtpclient.Options{
			LocalName: cfg.Hostname,
			Breaker:   smtpclient.BreakerOptions{OpenTimeout: time.Duration(cfg.BreakerOpen)},
		},
		Dir:  cfg.QueueDir,
		Bolt: &bbolt.Options{KeyRetention: keyRetention, MaxSize: cfg.MaxQueueBytes},
		Runner: &queue.RunnerOptions{
			Schedule: queue.Retry{
				MinBackoff:  time.Duration(cfg.RetryMin),
				MaxBackoff:  time.Duration(cfg.RetryMax),
				MaxLifetime: time.Duration(cfg.Lifetime),
			},
			AttemptTimeout: time.Duration(cfg.AttemptTimeout),
			ReportingMTA:   cfg.Hostname,
		},
		Health:  hv,
		Metrics: m,
		Logger:  d.log,
	}
	if a := time.Duration(cfg.AttemptTimeout); a > 0 {
		// A lease a little longer than an attempt: a crashed process's
		// messages are retried soon after it restarts.
		ho.Runner.LeaseDuration = a + a/2 + time.Second
	}
	if cfg.MX {
		ho.Resolver = mxresolve.New(&mxresolve.Options{Nameservers: cfg.Nameservers, Logger: d.log})
		ho.SMTP.MXPort = cfg.MXPort
	}
	d.mailer, err = hamail.Open(ho)
	if err != nil {
		return fmt.Errorf("opening the queue in %s: %w", cfg.QueueDir, err)
	}

	d.server = NewServer(ServerOptions{
		Hostname:        cfg.Hostname,
		TLS:             tlsConf,
		Users:           us,
		TrustedNetworks: trusted,
		InsecureAuth:    cfg.InsecureAuth,
		MaxMessageBytes: cfg.MaxMessageBytes,
		MaxRecipients:   cfg.MaxRecipients,
		MaxConnections:  cfg.MaxConnections,
		ReadTimeout:     time.Duration(cfg.ReadTimeout),
		WriteTimeout:    time.Duration(cfg.WriteTimeout),
		Logger:          d.log,
		Submitted:       func(result string) { submissions.WithLabelValues(result).Inc() },
	}, d.mailer)

	d.smtpLn, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	if cfg.ListenTLS != "" {
		if d.smtpsLn, err = net.Listen("tcp", cfg.ListenTLS); err != nil {
			return err
		}
	}
	if cfg.HTTPListen != "" {
		d.httpLn, err = net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/healthz", d.healthz)
		if d.checker != nil {
			mux.Handle("/healthz/relays", d.checker.Handler(nil))
		}
		d.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	return nil
}

// serve runs until ctx ends or the SMTP server fails, then shuts down.
func (d *daemon) serve(ctx context.Context) int {
	bgCtx, cancel := context.WithCancel(context.Background())
	d.bgCancel = cancel
	md, err := maildrop.Open(filepath.Join(d.cfg.QueueDir, "maildrop"))
	if err != nil {
		d.log.Error("maildrop", "err", err)
		d.stop()
		return exFailure
	}
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		md.Run(bgCtx, maildrop.MailerSubmitter(d.mailer), time.Duration(d.cfg.PickupInterval), d.log)
	}()
	if d.checker != nil {
		d.bg.Add(1)
		go func() {
			defer d.bg.Done()
			d.checker.Run(bgCtx)
		}()
	}
	httpErr := make(chan error, 1)
	if d.httpSrv != nil {
		go func() { httpErr <- d.httpSrv.Serve(d.httpLn) }()
		fmt.Fprintf(d.stdout, "relayd: http listening on %s\n", d.httpLn.Addr())
	}
	smtpErr := make(chan error, 2)
	go func() { smtpErr <- d.server.Serve(d.smtpLn) }()
	if d.smtpsLn != nil {
		go func() { smtpErr <- d.server.ServeTLS(d.smtpsLn) }()
		fmt.Fprintf(d.stdout, "relayd: smtps listening on %s\n", d.smtpsLn.Addr())
	}
	fmt.Fprintf(d.stdout, "relayd: smtp listening on %s\n", d.smtpLn.Addr())
	d.log.Info("started", "smtp", d.smtpLn.Addr().String(), "queue", d.cfg.QueueDir)

	// SIGHUP reloads the users file, so accounts change without a
	// restart; a file that does not load leaves the current accounts.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	code := exOK
wait:
	for {
		select {
		case <-hup:
			if d.cfg.UsersFile == "" {
				continue
			}
			us, err := loadUsers(d.cfg.UsersFile)
			if err != nil {
				d.log.Error("users file not reloaded, keeping the current accounts", "err", err)
				continue
			}
			d.server.SetUsers(us)
			d.log.Info("users reloaded", "users", len(us.hashes))
		case <-ctx.Done():
			d.log.Info("shutting down")
			break wait
		case err := <-smtpErr:
			d.log.Error("smtp server failed", "err", err)
			code = exFailure
			break wait
		case err := <-httpErr:
			d.log.Error("http server failed", "err", err)
			code = exFailure
			break wait
		}
	}
	if !d.stop() && code == exOK {
		code = exFailure
	}
	return code
}

// stop shuts everything down in order: no new connections; transactions in
// progress end (their messages durable and acknowledged); the pickup stops;
// the Mailer lets deliveries in flight finish and closes the queue. It
// reports whether everything stopped within the shutdown timeout.
func (d *daemon) stop() bool {
	ok := true
	grace := time.Duration(d.cfg.ShutdownTimeout)
	if d.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		if err := d.server.Shutdown(ctx); err != nil {
			// Their messages were not acknowledged: the clients still
			// hold them, nothing is lost.
			d.log.Warn("transactions cut at the end of the shutdown timeout", "err", err)
		}
		cancel()
	} else {
		for _, ln := range []net.Listener{d.smtpLn, d.smtpsLn} {
			if ln != nil {
				ln.Close()
			}
		}
	}
	if d.bgCancel != nil {
		d.bgCancel()
		d.bg.Wait()
	}
	if d.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d.httpSrv.Shutdown(ctx)
		cancel()
	} else if d.httpLn != nil {
		d.httpLn.Close()
	}
	if d.mailer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		if err := d.mailer.Shutdown(ctx); err != nil {
			// Deliveries cut by the timeout stay queued for the next start.
			d.log.Warn("mailer shutdown", "err", err)
			if !errors.Is(err, context.DeadlineExceeded) {
				ok = false
			}
		}
		cancel()
	}
	if d.log != nil {
		d.log.Info("stopped")
	}
	return ok
}

// healthz answers 200 while the server accepts mail and the queue answers,
// 503 otherwise, with the queue's state as JSON.
func (d *daemon) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	type queueState struct {
		Items       int     `json:"items"`
		Due         int     `json:"due"`
		Leased      int     `json:"leased"`
		Deferred    int     `json:"deferred"`
		Quarantined int     `json:"quarantined"`
		OldestAge   float64 `json:"oldest_age_seconds"`
	}
	resp := struct {
		Status string      `json:"status"`
		Error  string      `json:"error,omitempty"`
		Queue  *queueState `json:"queue,omitempty"`
	}{Status: "ok"}
	code := http.StatusOK
	st, err := d.mailer.Stats(ctx)
	switch {
	case d.server.isDraining():
		resp.Status, code = "shutting down", http.StatusServiceUnavailable
	case err != nil:
		resp.Status, resp.Error, code = "queue unavailable", err.Error(), http.StatusServiceUnavailable
	}
	if err == nil {
		q := &queueState{Items: st.Items, Due: st.Due, Leased: st.Leased, Deferred: st.Deferred, Quarantined: st.Quarantined}
		if !st.Oldest.IsZero() {
			q.OldestAge = time.Since(st.Oldest).Seconds()
		}
		resp.Queue = q
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(resp)
}

// hashPassword prints the bcrypt hash of the first line of stdin.
func hashPassword(stdin io.Reader, stdout, stderr io.Writer, cost int) int {
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(stderr, "relayd: %v\n", err)
		return exFailure
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		fmt.Fprintln(stderr, "relayd: -hash-password: empty password on standard input")
		return exUsage
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		fmt.Fprintf(stderr, "relayd: %v\n", err)
		return exFailure
	}
	fmt.Fprintf(stdout, "%s\n", h)
	return exOK
}
