package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// TestShortRunLosesNothing runs the whole demo in a short mode: the real
// Mailer, servers and faults, fewer messages. The kills must have
// happened and forced traffic away from the primary MX and the reader away
// from imap1, and still every message sent is read exactly once.
func TestShortRunLosesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	const n = 40
	rep, err := run(ctx, Config{Messages: n, Duration: 4 * time.Second, Concurrency: 4, Drain: 60 * time.Second}, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != n || rep.SendErrors != 0 {
		t.Errorf("sent %d (%d errors), want %d", rep.Sent, rep.SendErrors, n)
	}
	if rep.Lost != 0 || rep.ReadTwice != 0 || !rep.OK() {
		t.Errorf("lost %d, read twice %d: want 0 and 0", rep.Lost, rep.ReadTwice)
	}
	if rep.Read != n {
		t.Errorf("read %d distinct messages, want %d", rep.Read, n)
	}

	// The faults happened, and made a difference.
	kills := 0
	for _, s := range script() {
		if s.kill {
			kills++
		}
	}
	if rep.Kills() != kills || len(rep.Events) != len(script()) {
		t.Errorf("fault events %d (kills %d), want %d (kills %d)", len(rep.Events), rep.Kills(), len(script()), kills)
	}
	if rep.HostFailures["mx1.example.com"] == 0 {
		t.Errorf("no session failed on mx1 after it was killed: %v", rep.HostFailures)
	}
	if rep.ByHost["mx1.example.com"] == 0 || rep.ByHost["mx1.example.com"] == n {
		t.Errorf("mx1 accepted %d of %d messages: want some before the kill and not all", rep.ByHost["mx1.example.com"], n)
	}
	if rep.IMAPFailovers == 0 || len(rep.Resyncs) == 0 {
		t.Errorf("reader failovers %d, resyncs %d: want the kill of imap1 to move it", rep.IMAPFailovers, len(rep.Resyncs))
	}
	if len(rep.Resyncs) > 0 && (rep.Resyncs[0].Replica != "imap2" || rep.Resyncs[0].Commands == 0) {
		t.Errorf("resync after the failover: %+v, want one on imap2 that sent commands", rep.Resyncs[0])
	}

	if len(rep.MailerRestarts) != 1 || rep.MailerRestarts[0].Found > rep.MailerRestarts[0].Queued {
		t.Errorf("mailer restarts %+v, want one that found at most what was queued", rep.MailerRestarts)
	}

	// Delivered per host adds up to what was sent, from the servers' own
	// records.
	total := 0
	for _, c := range rep.ByHost {
		total += c
	}
	if total != rep.Delivered || rep.Delivered != n {
		t.Errorf("delivered per host sums to %d, delivered %d, sent %d", total, rep.Delivered, n)
	}

	// The metrics saw the same run.
	if m := rep.Metrics; m.RecipientsDelivered != n || m.RecipientAttempts < n ||
		int(m.BreakerTrips) != sum(rep.BreakerTrips) || int(m.IMAPFailovers) != rep.IMAPFailovers {
		t.Errorf("metrics %+v disagree with the report (breaker trips %v, IMAP failovers %d)", m, rep.BreakerTrips, rep.IMAPFailovers)
	}

	// The table says so.
	table := out.String()
	for _, want := range []string{"messages lost  0", "read twice     0", "OK: nothing lost"} {
		if !strings.Contains(strings.Join(strings.Fields(table), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("table lacks %q", want)
		}
	}
}

func TestFlagsRejectArguments(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	if code := mainCode(t.Context(), []string{"-messages", "10", "extra"}, io.Discard, &stderr); code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
	if code := mainCode(t.Context(), []string{"-nosuchflag"}, io.Discard, &stderr); code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
}
