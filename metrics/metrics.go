package metrics

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/smtpclient"
)

// Options configures New. A nil *Options or a zero field means the
// documented default.
type Options struct {
	// Namespace prefixes every metric name; "" means "hamail".
	Namespace string
	// ConstLabels are added to every series (for example the instance's
	// role). Nil means none.
	ConstLabels prometheus.Labels
	// MaxLabelValues bounds the distinct values of each of the host,
	// target and replica labels: once that many were seen, further ones
	// are reported as "other", so that direct delivery to many domains
	// cannot grow the series without bound. 0 means 500.
	MaxLabelValues int
	// HostLabel maps an smtpclient host name to its label value. Nil
	// means the name without its address: "mx1.example.net" for the
	// exchanger "mx1.example.net [192.0.2.1]:25", a relay's Name as is.
	HostLabel func(host string) string
	// ScrapeTimeout bounds each watched queue's Stats call during a
	// scrape; 0 means 5 seconds.
	ScrapeTimeout time.Duration
	// Now is the clock for queue ages; nil means time.Now.
	Now func() time.Time
}

// Metrics holds the collectors of one registry. Create it with New; its
// methods and the hooks they return are safe for concurrent use.
type Metrics struct {
	o Options

	hosts    *labelSet
	targets  *labelSet
	replicas *labelSet

	smtpSessions    *prometheus.CounterVec
	smtpSessionDur  prometheus.Histogram
	smtpConnections *prometheus.CounterVec
	smtpSkipped     *prometheus.CounterVec
	smtpReplies     *prometheus.CounterVec
	breakerState    *prometheus.GaugeVec
	breakerTrips    *prometheus.CounterVec

	deliveryAttempts   *prometheus.CounterVec
	deliveryRecipients *prometheus.CounterVec
	deliveryDur        prometheus.Histogram
	notices            *prometheus.CounterVec

	healthState   *prometheus.GaugeVec
	healthChanges *prometheus.CounterVec
	healthProbes  *prometheus.CounterVec
	healthProbeDu *prometheus.HistogramVec
	healthReports *prometheus.CounterVec

	imapConnections    *prometheus.CounterVec
	imapFailovers      *prometheus.CounterVec
	imapResync         *prometheus.HistogramVec
	imapResyncMessages *prometheus.CounterVec
	imapUIDValidity    *prometheus.CounterVec

	queues *queueCollector
	pools  *poolCollector
}

// durationBuckets spans a pooled send on loopback (milliseconds) to a slow
// server's DATA timeout (minutes).
var durationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// New creates the collectors and registers them on reg. It fails if one of
// them is already registered there (two Metrics on one registry need two
// namespaces or different ConstLabels).
func New(reg prometheus.Registerer, o *Options) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("metrics: nil Registerer")
	}
	m := &Metrics{}
	if o != nil {
		m.o = *o
	}
	if m.o.Namespace == "" {
		m.o.Namespace = "hamail"
	}
	if m.o.MaxLabelValues <= 0 {
		m.o.MaxLabelValues = 500
	}
	if m.o.HostLabel == nil {
		m.o.HostLabel = hostName
	}
	if m.o.ScrapeTimeout <= 0 {
		m.o.ScrapeTimeout = 5 * time.Second
	}
	if m.o.Now == nil {
		m.o.Now = time.Now
	}
	m.hosts = newLabelSet(m.o.MaxLabelValues)
	m.targets = newLabelSet(m.o.MaxLabelValues)
	m.replicas = newLabelSet(m.o.MaxLabelValues)

	ns, cl := m.o.Namespace, m.o.ConstLabels
	counter := func(sub, name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help, ConstLabels: cl}, labels)
	}
	gauge := func(sub, name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help, ConstLabels: cl}, labels)
	}
	histogram := func(sub, name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help, ConstLabels: cl, Buckets: buckets}, labels)
	}

	m.smtpSessions = counter("smtp", "sessions_total", "SMTP sessions (one host's work for one send) by host and result: ok, temporary, permanent, unknown, canceled.", "host", "result")
	m.smtpSessionDur = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: "smtp", Name: "session_duration_seconds",
		Help: "Duration of SMTP sessions, connect to last reply.", ConstLabels: cl, Buckets: durationBuckets})
	m.smtpConnections = counter("smtp", "connections_total", "New SMTP connections (greeting, EHLO, TLS and AUTH done) by host and result: ok, error.", "host", "result")
	m.smtpSkipped = counter("smtp", "hosts_skipped_total", "Hosts skipped without a connection, by host and reason: breaker_open, host_down, half_open_busy.", "host", "reason")
	m.smtpReplies = counter("smtp", "replies_total", "Deciding SMTP replies (MAIL, each RCPT, after the final dot) by host, stage and class: 2xx, 4xx, 5xx.", "host", "stage", "class")
	m.breakerState = gauge("smtp", "breaker_state", "Circuit breaker state per host: 0 closed, 1 half-open, 2 open.", "host")
	m.breakerTrips = counter("smtp", "breaker_trips_total", "Times a host's circuit breaker opened.", "host")

	m.deliveryAttempts = counter("delivery", "attempts_total", "Delivery attempts of queued messages by result: ok (every recipient got a result), error (the attempt as a whole failed).", "result")
	m.deliveryRecipients = counter("delivery", "recipients_total", "Recipient results of delivery attempts by outcome (delivered, deferred, bounced, unknown) and host (none when no host answered).", "outcome", "host")
	m.deliveryDur = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: "delivery", Name: "attempt_duration_seconds",
		Help: "Duration of delivery attempts of queued messages.", ConstLabels: cl, Buckets: durationBuckets})
	m.notices = counter("delivery", "notices_total", "Delivery status notifications handed over, by kind: failure, delay.", "kind")

	m.healthState = gauge("health", "state", "Health state per target: 0 unknown, 1 up, 2 down.", "target")
	m.healthChanges = counter("health", "changes_total", "Health state changes by target and new state.", "target", "to")
	m.healthProbes = counter("health", "probes_total", "Active health probes by target and result: ok, error.", "target", "result")
	m.healthProbeDu = histogram("health", "probe_duration_seconds", "Duration of active health probes.", prometheus.DefBuckets, "target")
	m.healthReports = counter("health", "reports_total", "Passive health reports from clients by target and result: ok, error.", "target", "result")

	m.imapConnections = counter("imap", "connections_total", "IMAP connection attempts (connect, TLS, login) by replica and result: ok, error.", "replica", "result")
	m.imapFailovers = counter("imap", "failovers_total", "Moves of a mailbox reader from one replica to another.", "from", "to")
	m.imapResync = histogram("imap", "resync_duration_seconds", "Duration of mailbox resyncs (at start, after every reconnect and announced change), by replica.", durationBuckets, "replica")
	m.imapResyncMessages = counter("imap", "resync_messages_total", "Messages a resync found, by replica and kind: delivered (new, handed to the reader), remapped (found again under a new UIDVALIDITY), expunged, flags_changed.", "replica", "kind")
	m.imapUIDValidity = counter("imap", "uidvalidity_changes_total", "Resyncs that found the mailbox's UIDVALIDITY changed (RFC 3501 §2.3.1.1), by replica.", "replica")

	m.queues = newQueueCollector(m)
	m.pools = newPoolCollector(m)

	for _, c := range []prometheus.Collector{
		m.smtpSessions, m.smtpSessionDur, m.smtpConnections, m.smtpSkipped, m.smtpReplies, m.breakerState, m.breakerTrips,
		m.deliveryAttempts, m.deliveryRecipients, m.deliveryDur, m.notices,
		m.healthState, m.healthChanges, m.healthProbes, m.healthProbeDu, m.healthReports,
		m.imapConnections, m.imapFailovers, m.imapResync, m.imapResyncMessages, m.imapUIDValidity,
		m.queues, m.pools,
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// hostName is the default HostLabel: smtpclient names an exchanger
// "name [address]:port"; the label keeps the name.
func hostName(host string) string {
	if i := strings.Index(host, " ["); i > 0 {
		return host[:i]
	}
	return host
}

func (m *Metrics) host(h string) string {
	if h == "" {
		return "none"
	}
	return m.hosts.get(m.o.HostLabel(h))
}

// SMTPHooks returns hooks for smtpclient.Options.Hooks: sessions and their
// duration, connections, skipped hosts, deciding replies, breaker states
// and trips, all by host. The Mailer installs them itself.
func (m *Metrics) SMTPHooks() *smtpclient.Hooks {
	return &smtpclient.Hooks{
		HostSkipped: func(h smtpclient.HostInfo, err error) {
			reason := "other"
			switch {
			case errors.Is(err, smtpclient.ErrBreakerOpen):
				reason = "breaker_open"
			case errors.Is(err, smtpclient.ErrHostDown):
				reason = "host_down"
			case errors.Is(err, gobreaker.ErrTooManyRequests):
				reason = "half_open_busy"
			}
			m.smtpSkipped.WithLabelValues(m.host(h.Name), reason).Inc()
		},
		Connected: func(h smtpclient.HostInfo, err error) {
			m.smtpConnections.WithLabelValues(m.host(h.Name), okOrError(err)).Inc()
		},
		Reply: func(h smtpclient.HostInfo, stage smtpclient.Stage, _ string, r smtpclient.Reply) {
			class := "other"
			if r.Code >= 200 && r.Code < 600 {
				class = string(rune('0'+r.Code/100)) + "xx"
			}
			m.smtpReplies.WithLabelValues(m.host(h.Name), stage.String(), class).Inc()
		},
		BreakerStateChange: func(e smtpclient.BreakerEvent) {
			host := m.host(e.Host)
			m.breakerState.WithLabelValues(host).Set(float64(e.To))
			if e.To == gobreaker.StateOpen {
				m.breakerTrips.WithLabelValues(host).Inc()
			}
		},
		AttemptDone: func(a smtpclient.Attempt) {
			m.smtpSessions.WithLabelValues(m.host(a.Host.Name), sessionResult(a.Err)).Inc()
			m.smtpSessionDur.Observe(a.Duration.Seconds())
		},
	}
}

func sessionResult(err error) string {
	if err == nil {
		return "ok"
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return "canceled"
	}
	var se *smtpclient.Error
	if errors.As(err, &se) {
		return se.Outcome.String()
	}
	return "temporary"
}

func okOrError(err error) string {
	if err == nil {
		return "ok"
	}
	return "error"
}

// OnAttempt counts a finished delivery attempt of a queued message; use it
// as (or call it from) queue.RunnerOptions.OnAttempt. Each recipient's
// outcome is counted in <ns>_delivery_recipients_total: delivered, deferred
// (temporary failure), bounced (permanent failure) or unknown (connection
// lost after the final dot: retried as a possible duplicate).
func (m *Metrics) OnAttempt(a *queue.Attempt) {
	if a.Err != nil {
		m.deliveryAttempts.WithLabelValues("error").Inc()
	} else {
		m.deliveryAttempts.WithLabelValues("ok").Inc()
	}
	m.deliveryDur.Observe(a.Duration.Seconds())
	for i := range a.Recipients {
		res := queue.RecipientResult{Outcome: queue.OutcomeTemporary}
		if i < len(a.Results) {
			res = a.Results[i]
		}
		m.deliveryRecipients.WithLabelValues(outcomeLabel(res.Outcome), m.host(res.Host)).Inc()
	}
}

func outcomeLabel(o queue.Outcome) string {
	switch o {
	case queue.OutcomeDelivered:
		return "delivered"
	case queue.OutcomePermanent:
		return "bounced"
	case queue.OutcomeUnknown:
		return "unknown"
	default:
		return "deferred"
	}
}

// OnNotice counts a delivery status notification handed over (failure or
// delay). The Mailer calls it once queue.RunnerOptions.OnNotice accepted the
// notice; a crash can repeat a notice, and then its count.
func (m *Metrics) OnNotice(n *queue.Notice) {
	kind := "failure"
	if n.Kind == queue.NoticeDelay {
		kind = "delay"
	}
	m.notices.WithLabelValues(kind).Add(float64(len(n.Recipients)))
}

// HealthHooks returns hooks for health.Options.Hooks: the state of each
// target, its changes, the active probes with their duration, and the
// passive reports.
func (m *Metrics) HealthHooks() health.Hooks {
	return health.Hooks{
		Probed: func(p health.ProbeResult) {
			t := m.targets.get(p.Target)
			m.healthProbes.WithLabelValues(t, okOrError(p.Err)).Inc()
			m.healthProbeDu.WithLabelValues(t).Observe(p.Latency.Seconds())
		},
		Reported: func(r health.Report) {
			m.healthReports.WithLabelValues(m.targets.get(r.Target), okOrError(r.Err)).Inc()
		},
		Changed: func(c health.Change) {
			t := m.targets.get(c.Target)
			if c.Removed {
				m.healthState.DeleteLabelValues(t)
				return
			}
			m.healthState.WithLabelValues(t).Set(float64(c.To))
			m.healthChanges.WithLabelValues(t, c.To.String()).Inc()
		},
	}
}

// labelSet keeps at most max distinct label values; later ones read as
// "other".
type labelSet struct {
	mu   sync.Mutex
	max  int
	seen map[string]struct{}
}

func newLabelSet(max int) *labelSet {
	return &labelSet{max: max, seen: make(map[string]struct{})}
}

func (s *labelSet) get(v string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[v]; ok {
		return v
	}
	if len(s.seen) >= s.max {
		return "other"
	}
	s.seen[v] = struct{}{}
	return v
}
