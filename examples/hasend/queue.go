package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/hamail/hamail"
	"github.com/hamail/hamail/examples/hasend/maildrop"
	"github.com/hamail/hamail/mxresolve"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
	"github.com/hamail/hamail/smtpclient"
)

const (
	// keyRetention: how long the queue remembers a delivered maildrop
	// file's key, so that a file picked up again after a crash (between
	// the queue's commit and the file's removal) is not sent twice.
	keyRetention = 24 * time.Hour
	// shutdownGrace: on SIGTERM, how long deliveries in flight may take
	// to finish before they are cut (and stay queued for the next start).
	shutdownGrace = 30 * time.Second
	pickupEvery   = time.Second
)

// runQueue is "hasend -queue DIR -run": it owns the queue in DIR/queue.db,
// moves what hasend -queue drops in DIR/maildrop into it, and delivers,
// retries and bounces until ctx ends.
func runQueue(ctx context.Context, s *settings, inv *invocation, stderr io.Writer) int {
	level := slog.LevelInfo
	if inv.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := s.resolvePassword(); err != nil {
		fmt.Fprintf(stderr, "hasend: %v\n", err)
		return exConfig
	}
	relays, err := s.relayList()
	if err != nil {
		fmt.Fprintf(stderr, "hasend: %v\n", err)
		return exConfig
	}
	if err := s.applyCA(relays); err != nil {
		fmt.Fprintf(stderr, "hasend: %v\n", err)
		return exConfig
	}
	o := &hamail.Options{
		Relays: relays,
		SMTP:   &smtpclient.Options{LocalName: s.helo, MXPort: s.mxPort},
		Dir:    s.queue,
		Bolt:   &bbolt.Options{KeyRetention: keyRetention},
		Runner: &queue.RunnerOptions{ReportingMTA: s.domain},
		Logger: log,
	}
	if s.mx {
		o.Resolver = mxresolve.New(&mxresolve.Options{Nameservers: s.nameservers, Logger: log})
	}
	if len(relays) == 0 && o.Resolver == nil {
		fmt.Fprintln(stderr, "hasend: no route: set a relay (-relay, HASEND_RELAY, relay in the config file) or -mx")
		return exConfig
	}
	md, err := maildrop.Open(maildropPath(s.queue))
	if err != nil {
		fmt.Fprintf(stderr, "hasend: %v\n", err)
		return exTempFail
	}
	m, err := hamail.Open(o)
	if err != nil {
		// Most often another process (relayd, another hasend -run) holds
		// the queue.
		fmt.Fprintf(stderr, "hasend: opening the queue in %s: %v\n", filepath.Clean(s.queue), err)
		return exTempFail
	}
	log.Info("running the queue", "dir", s.queue)
	md.Run(ctx, maildrop.MailerSubmitter(m), pickupEvery, log)

	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := m.Shutdown(sctx); err != nil {
		// Deliveries cut by the grace period stay queued.
		log.Warn("queue shutdown", "err", err)
	}
	log.Info("stopped")
	return exOK
}
