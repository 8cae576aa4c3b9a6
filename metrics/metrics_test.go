package metrics_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/sony/gobreaker/v2"

	"github.com/hamail/hamail"
	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/imapfailover"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/metrics"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/memqueue"
	"github.com/hamail/hamail/smtpclient"
)

const waitTimeout = 30 * time.Second

func newMetrics(t *testing.T, o *metrics.Options) (*metrics.Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, o)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// series returns the value of the series name{labels}, and whether it
// exists. Counters, gauges and the sample count of histograms are read.
func series(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	t.Helper()
	if len(labels)%2 != 0 {
		t.Fatal("labels come in pairs")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, mt := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range mt.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metric
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return mt.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return mt.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(mt.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func wantSeries(t *testing.T, reg prometheus.Gatherer, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := series(t, reg, name, labels...)
	if !ok {
		t.Errorf("%s%v: missing", name, labels)
	} else if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// TestMailerMetrics sends a few messages through a Mailer — one delivered
// at once, one deferred by a 451 then delivered, one refused by a 550 —
// and reads the registry.
func TestMailerMetrics(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, nil)
	relay := smtptest.NewServer(t, nil)
	relay.SetRcptFault("later@example.com", smtptest.Fault{Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "busy"}, Times: 1})
	relay.SetRcptFault("nobody@example.com", smtptest.Fault{Reply: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}})
	mailer, err := hamail.Open(&hamail.Options{
		Relays:  []smtpclient.Relay{{Name: "relay-a", Addr: relay.Addr()}},
		Dir:     t.TempDir(),
		Metrics: m,
		Name:    "outbound",
		Runner: &queue.RunnerOptions{
			Schedule:     queue.Retry{MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Jitter: -1},
			PollInterval: 50 * time.Millisecond,
			NoDSN:        true, // notices counted, not sent: keeps the counts exact
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer mailer.Close()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	for _, to := range []string{"bob@example.com", "later@example.com", "nobody@example.com"} {
		if _, err := mailer.Send(ctx, &hamail.Message{From: "app@example.org", To: []string{to}, Body: strings.NewReader("Subject: hi\r\n\r\nhi\r\n")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := relay.WaitMessages(ctx, 2); err != nil {
		t.Fatal(err)
	}
	for {
		if st, err := mailer.Stats(ctx); err == nil && st.Items == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("queue not drained")
		case <-time.After(10 * time.Millisecond):
		}
	}

	wantSeries(t, reg, 2, "hamail_delivery_recipients_total", "outcome", "delivered", "host", "relay-a")
	wantSeries(t, reg, 1, "hamail_delivery_recipients_total", "outcome", "deferred", "host", "relay-a")
	wantSeries(t, reg, 1, "hamail_delivery_recipients_total", "outcome", "bounced", "host", "relay-a")
	wantSeries(t, reg, 4, "hamail_delivery_attempts_total", "result", "ok")
	wantSeries(t, reg, 4, "hamail_delivery_attempt_duration_seconds")
	wantSeries(t, reg, 1, "hamail_delivery_notices_total", "kind", "failure")
	wantSeries(t, reg, 4, "hamail_smtp_session_duration_seconds")
	// A session whose only recipient was refused at RCPT ends without a
	// transaction; every session ran its course.
	sessions, _ := series(t, reg, "hamail_smtp_sessions_total", "host", "relay-a", "result", "ok")
	if sessions != 4 {
		t.Errorf("ok sessions: %v, want 4", sessions)
	}
	if n, _ := series(t, reg, "hamail_smtp_connections_total", "host", "relay-a", "result", "ok"); n < 1 || n > 4 {
		t.Errorf("connections: %v", n)
	}
	wantSeries(t, reg, 1, "hamail_smtp_replies_total", "host", "relay-a", "stage", "rcpt", "class", "4xx")
	wantSeries(t, reg, 1, "hamail_smtp_replies_total", "host", "relay-a", "stage", "rcpt", "class", "5xx")
	wantSeries(t, reg, 2, "hamail_smtp_replies_total", "host", "relay-a", "stage", "data-end", "class", "2xx")
	wantSeries(t, reg, 1, "hamail_queue_up", "queue", "outbound")
	for _, state := range []string{"due", "leased", "deferred", "quarantined"} {
		wantSeries(t, reg, 0, "hamail_queue_items", "queue", "outbound", "state", state)
	}
	wantSeries(t, reg, 0, "hamail_queue_oldest_age_seconds", "queue", "outbound")
	dials, _ := series(t, reg, "hamail_smtp_pool_dials_total", "client", "outbound")
	reuses, _ := series(t, reg, "hamail_smtp_pool_reuses_total", "client", "outbound")
	if dials < 1 || dials+reuses < 4 {
		t.Errorf("pool: %v dials, %v reuses for 4 sessions", dials, reuses)
	}
	wantSeries(t, reg, 0, "hamail_smtp_pool_connections", "client", "outbound", "state", "busy")
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}

	if err := mailer.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := series(t, reg, "hamail_queue_up", "queue", "outbound"); ok {
		t.Error("queue still watched after Shutdown")
	}
	if _, ok := series(t, reg, "hamail_smtp_pool_dials_total", "client", "outbound"); ok {
		t.Error("client still watched after Shutdown")
	}
}

// TestBreakerMetrics: a dead relay trips its breaker; the state gauge and
// trip counter follow, and skipped hosts are counted.
func TestBreakerMetrics(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, nil)
	dead := smtptest.NewServer(t, nil)
	dead.Stop()
	c, err := smtpclient.New(&smtpclient.Options{
		Relays:  []smtpclient.Relay{{Name: "dead", Addr: dead.Addr()}},
		Breaker: smtpclient.BreakerOptions{Failures: 2, OpenTimeout: time.Hour},
		Hooks:   m.SMTPHooks(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := "Subject: x\r\n\r\nx\r\n"
	for range 3 {
		_, _ = c.Send(t.Context(), &smtpclient.Message{From: "a@example.org", To: []smtpclient.Recipient{{Addr: "b@example.com"}},
			Body: strings.NewReader(body), Size: int64(len(body))})
	}
	wantSeries(t, reg, float64(gobreaker.StateOpen), "hamail_smtp_breaker_state", "host", "dead")
	wantSeries(t, reg, 1, "hamail_smtp_breaker_trips_total", "host", "dead")
	wantSeries(t, reg, 2, "hamail_smtp_connections_total", "host", "dead", "result", "error")
	wantSeries(t, reg, 1, "hamail_smtp_hosts_skipped_total", "host", "dead", "reason", "breaker_open")
	wantSeries(t, reg, 2, "hamail_smtp_sessions_total", "host", "dead", "result", "temporary")

	// Recovery through half-open back to closed.
	hooks := m.SMTPHooks()
	hooks.BreakerStateChange(smtpclient.BreakerEvent{Host: "dead", From: gobreaker.StateOpen, To: gobreaker.StateHalfOpen})
	wantSeries(t, reg, 1, "hamail_smtp_breaker_state", "host", "dead")
	hooks.BreakerStateChange(smtpclient.BreakerEvent{Host: "dead", From: gobreaker.StateHalfOpen, To: gobreaker.StateClosed})
	wantSeries(t, reg, 0, "hamail_smtp_breaker_state", "host", "dead")
	wantSeries(t, reg, 1, "hamail_smtp_breaker_trips_total", "host", "dead")
}

// TestHealthMetrics drives a real checker with passive reports.
func TestHealthMetrics(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, nil)
	c := health.New(&health.Options{Rise: 1, Fall: 2, Hooks: m.HealthHooks()})
	if err := c.AddTarget(health.Target{Name: "relay-a", Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	c.ReportFailure("relay-a", errors.New("connection refused"))
	c.ReportFailure("relay-a", errors.New("connection refused"))
	wantSeries(t, reg, float64(health.Down), "hamail_health_state", "target", "relay-a")
	wantSeries(t, reg, 1, "hamail_health_changes_total", "target", "relay-a", "to", "down")
	wantSeries(t, reg, 2, "hamail_health_reports_total", "target", "relay-a", "result", "error")
	c.ReportSuccess("relay-a")
	wantSeries(t, reg, float64(health.Up), "hamail_health_state", "target", "relay-a")
	wantSeries(t, reg, 1, "hamail_health_changes_total", "target", "relay-a", "to", "up")
	c.RemoveTarget("relay-a")
	if _, ok := series(t, reg, "hamail_health_state", "target", "relay-a"); ok {
		t.Error("a removed target keeps its state series")
	}

	// Active probes: the hook sees each one with its latency.
	h := m.HealthHooks()
	h.Probed(health.ProbeResult{Target: "mx1", Latency: 20 * time.Millisecond})
	h.Probed(health.ProbeResult{Target: "mx1", Latency: 5 * time.Second, Err: errors.New("timeout")})
	wantSeries(t, reg, 1, "hamail_health_probes_total", "target", "mx1", "result", "ok")
	wantSeries(t, reg, 1, "hamail_health_probes_total", "target", "mx1", "result", "error")
	wantSeries(t, reg, 2, "hamail_health_probe_duration_seconds", "target", "mx1")
}

func TestIMAPMetrics(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, nil)
	h := m.IMAPHooks()
	h.Connected("imap1", nil)
	h.Connected("imap1", errors.New("refused"))
	h.Connected("imap2", nil)
	h.Failover("imap1", "imap2", errors.New("connection lost"))
	h.Resynced("INBOX", "imap2", 300*time.Millisecond, &imapfailover.SyncReport{Replica: "imap2", Delivered: 3, Remapped: 2, UIDValidityChanged: true})
	wantSeries(t, reg, 1, "hamail_imap_connections_total", "replica", "imap1", "result", "ok")
	wantSeries(t, reg, 1, "hamail_imap_connections_total", "replica", "imap1", "result", "error")
	wantSeries(t, reg, 1, "hamail_imap_failovers_total", "from", "imap1", "to", "imap2")
	wantSeries(t, reg, 1, "hamail_imap_resync_duration_seconds", "replica", "imap2")
	wantSeries(t, reg, 3, "hamail_imap_resync_messages_total", "replica", "imap2", "kind", "delivered")
	wantSeries(t, reg, 2, "hamail_imap_resync_messages_total", "replica", "imap2", "kind", "remapped")
	wantSeries(t, reg, 1, "hamail_imap_uidvalidity_changes_total", "replica", "imap2")
}

// slowStore answers Stats only when its context ends.
type slowStore struct{ queue.Store }

func (slowStore) Stats(ctx context.Context) (queue.Stats, error) {
	<-ctx.Done()
	return queue.Stats{}, ctx.Err()
}

func TestWatchQueue(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	m, reg := newMetrics(t, &metrics.Options{ScrapeTimeout: 50 * time.Millisecond, Now: func() time.Time { return now }})
	mem := memqueue.New(&memqueue.Options{Now: func() time.Time { return now.Add(-90 * time.Second) }})
	defer mem.Close()
	ctx := t.Context()
	for range 3 {
		if _, err := mem.Enqueue(ctx, &queue.Message{Envelope: queue.Envelope{From: "a@example.org", Recipients: []queue.Recipient{{Address: "b@example.com"}}},
			Body: strings.NewReader("x\r\n")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := mem.Lease(ctx, 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	m.WatchQueue("main", mem)
	m.WatchQueue("stuck", slowStore{})
	wantSeries(t, reg, 2, "hamail_queue_items", "queue", "main", "state", "due")
	wantSeries(t, reg, 1, "hamail_queue_items", "queue", "main", "state", "leased")
	wantSeries(t, reg, 90, "hamail_queue_oldest_age_seconds", "queue", "main")
	wantSeries(t, reg, 1, "hamail_queue_up", "queue", "main")
	wantSeries(t, reg, 0, "hamail_queue_up", "queue", "stuck")
	if _, ok := series(t, reg, "hamail_queue_items", "queue", "stuck"); ok {
		t.Error("a store that did not answer reports a depth")
	}
	m.UnwatchQueue("stuck", slowStore{})
	if _, ok := series(t, reg, "hamail_queue_up", "queue", "stuck"); ok {
		t.Error("unwatched queue still reported")
	}
	// A store replaced under its name stays watched when the old one is
	// unwatched.
	other := memqueue.New(nil)
	defer other.Close()
	m.WatchQueue("main", other)
	m.UnwatchQueue("main", mem)
	wantSeries(t, reg, 0, "hamail_queue_items", "queue", "main", "state", "due")
}

// TestLabelsBounded: host labels drop the exchanger's address, and past
// MaxLabelValues distinct hosts the rest share "other".
func TestLabelsBounded(t *testing.T) {
	t.Parallel()
	m, reg := newMetrics(t, &metrics.Options{MaxLabelValues: 2})
	for _, host := range []string{"mx1.example.net [192.0.2.1]:25", "mx1.example.net [192.0.2.2]:25", "mx2.example.net [192.0.2.3]:25", "mx3.example.net [192.0.2.4]:25"} {
		m.OnAttempt(&queue.Attempt{Recipients: []queue.Recipient{{Address: "x@example.com"}},
			Results: []queue.RecipientResult{{Outcome: queue.OutcomeDelivered, Host: host}}})
	}
	// A result the deliverer never gave counts as deferred, with no host.
	m.OnAttempt(&queue.Attempt{Recipients: []queue.Recipient{{Address: "y@example.com"}}, Err: errors.New("no route")})
	wantSeries(t, reg, 2, "hamail_delivery_recipients_total", "outcome", "delivered", "host", "mx1.example.net")
	wantSeries(t, reg, 1, "hamail_delivery_recipients_total", "outcome", "delivered", "host", "mx2.example.net")
	wantSeries(t, reg, 1, "hamail_delivery_recipients_total", "outcome", "delivered", "host", "other")
	wantSeries(t, reg, 1, "hamail_delivery_recipients_total", "outcome", "deferred", "host", "none")
	wantSeries(t, reg, 1, "hamail_delivery_attempts_total", "result", "error")
	if n := testutil.CollectAndCount(reg, "hamail_delivery_recipients_total"); n != 4 {
		t.Errorf("%d series", n)
	}
}

func TestNewRefusesSecondRegistration(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(reg, nil); err == nil {
		t.Fatal("second New on one registry: no error")
	}
	if _, err := metrics.New(reg, &metrics.Options{Namespace: "second"}); err != nil {
		t.Fatalf("other namespace: %v", err)
	}
	if _, err := metrics.New(nil, nil); err == nil {
		t.Fatal("nil registerer: no error")
	}
}
