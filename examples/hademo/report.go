package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// printTable writes the final table.
func printTable(out io.Writer, w *world, r *Report) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(what string, value any, note string) { fmt.Fprintf(tw, "%s\t%v\t%s\n", what, value, note) }
	fmt.Fprintln(tw, "\nRESULT\tCOUNT\tMEASURED FROM")
	row("sent", r.Sent, "Send returned: durable in the queue")
	if r.SendErrors > 0 {
		row("send errors", r.SendErrors, "Send failed (nothing was promised)")
	}
	row("delivered", r.Delivered, "distinct Message-IDs the SMTP servers accepted (their own records)")
	for _, h := range w.hosts() {
		row("  "+h.name, r.ByHost[h.name], h.role+", first acceptance")
	}
	row("accepted twice", r.AcceptedTwice, "at-least-once: sent again after a lost reply, stored once")
	row("retried", r.Retried, fmt.Sprintf("messages that needed more than one queue attempt (%d attempts in all)", r.Attempts))
	row("SMTP failovers", sum(r.HostFailures), "sessions that failed on a host; their recipients moved on: "+perHost(w, r.HostFailures))
	row("breaker trips", sum(r.BreakerTrips), perHost(w, r.BreakerTrips))
	for _, mr := range r.MailerRestarts {
		row("mailer restart", mr.Found, fmt.Sprintf("messages found in the queue by the new Mailer (%d queued at close)", mr.Queued))
	}
	row("IMAP failovers", r.IMAPFailovers, "the reader moved to another replica")
	if len(r.Resyncs) == 0 {
		row("resync cost", "-", "the reader never moved to another replica")
	}
	for _, s := range r.Resyncs {
		row("resync cost", fmtDur(s.Took), fmt.Sprintf("after %s to %s: %d new message(s) fetched; %d commands sent, %d bytes received after login%s",
			s.Move, s.Replica, s.Fetched, s.Commands, s.BytesIn, lagNote(s.Lagging)))
	}
	var rs []string
	for _, k := range sortedKeys(r.ReadByReplica) {
		rs = append(rs, fmt.Sprintf("%s %d", k, r.ReadByReplica[k]))
	}
	row("read", r.Read, "distinct Message-IDs the reader was handed: "+strings.Join(rs, ", "))
	row("messages lost", r.Lost, "sent, never read")
	row("read twice", r.ReadTwice, "handed to the reader more than once")
	if err := tw.Flush(); err != nil {
		return err
	}
	m := r.Metrics
	rate := 0.0
	if m.RecipientAttempts > 0 {
		rate = 100 * m.RecipientsDelivered / m.RecipientAttempts
	}
	fmt.Fprintf(out, "\nThe Prometheus registry (package metrics) counted: hamail_delivery_recipients_total %.0f delivered in %.0f\n"+
		"recipient attempts (success rate %.1f%%, the rest deferred and retried); %.0f breaker trips;\n"+
		"%.0f IMAP failovers.\n", m.RecipientsDelivered, m.RecipientAttempts, rate, m.BreakerTrips, m.IMAPFailovers)
	verdict := "OK: nothing lost, nothing read twice"
	if !r.OK() {
		verdict = "FAILED: messages lost or read twice"
	}
	_, err := fmt.Fprintf(out, "\n%s (%d faults injected, %v).\n", verdict, len(r.Events), r.Elapsed.Round(100*time.Millisecond))
	return err
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// perHost lists the non-zero counts in the order of the world's hosts.
func perHost(w *world, m map[string]int) string {
	var parts []string
	for _, h := range w.hosts() {
		if m[h.name] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", h.name, m[h.name]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
