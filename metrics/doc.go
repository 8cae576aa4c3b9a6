// Package metrics exposes hamail's delivery, queue, circuit breaker,
// health and IMAP failover activity as Prometheus metrics
// (github.com/prometheus/client_golang).
//
// Nothing is registered globally: New registers its collectors on the
// prometheus.Registerer it is given, and the caller serves that registry
// (promhttp.HandlerFor). The Metrics value then plugs into each component
// through its hooks: SMTPHooks for smtpclient.Options.Hooks, OnAttempt and
// OnNotice for queue.RunnerOptions, HealthHooks for health.Options.Hooks,
// IMAPHooks for imapfailover.Options.Hooks, WatchQueue for a queue.Store's
// depth and WatchClient for an smtpclient.Client's connection pool.
// hamail.Mailer installs the SMTP and queue hooks and watches its queue and
// client itself when its Options.Metrics is set.
//
// # Series
//
// With the default namespace "hamail":
//
//	hamail_delivery_attempts_total{result}              queued-message attempts: ok, error
//	hamail_delivery_recipients_total{outcome,host}      per-recipient results: delivered, deferred, bounced, unknown
//	hamail_delivery_attempt_duration_seconds            histogram
//	hamail_delivery_notices_total{kind}                 notices handed over: failure, delay (per recipient)
//	hamail_queue_items{queue,state}                     depth: due, leased, deferred, quarantined
//	hamail_queue_oldest_age_seconds{queue}              age of the oldest queued message
//	hamail_queue_up{queue}                              1 when the store answered Stats at this scrape
//	hamail_smtp_sessions_total{host,result}             ok, temporary, permanent, unknown, canceled
//	hamail_smtp_session_duration_seconds                histogram
//	hamail_smtp_connections_total{host,result}          new connections: ok, error
//	hamail_smtp_hosts_skipped_total{host,reason}        breaker_open, host_down, half_open_busy
//	hamail_smtp_replies_total{host,stage,class}         deciding replies: 2xx, 4xx, 5xx
//	hamail_smtp_breaker_state{host}                     0 closed, 1 half-open, 2 open (from the first change on)
//	hamail_smtp_breaker_trips_total{host}               transitions to open
//	hamail_smtp_pool_connections{client,state}          pooled connections: busy, idle (WatchClient)
//	hamail_smtp_pool_waiting{client}                    sends waiting for a connection slot
//	hamail_smtp_pool_dials_total{client}                also reuses_total, expired_total
//	hamail_health_state{target}                         0 unknown, 1 up, 2 down
//	hamail_health_changes_total{target,to}
//	hamail_health_probes_total{target,result}
//	hamail_health_probe_duration_seconds{target}        histogram
//	hamail_health_reports_total{target,result}          passive reports from clients
//	hamail_imap_connections_total{replica,result}       connection attempts: ok, error
//	hamail_imap_failovers_total{from,to}
//	hamail_imap_resync_duration_seconds{replica}        histogram
//	hamail_imap_resync_messages_total{replica,kind}     delivered, remapped, expunged, flags_changed
//	hamail_imap_uidvalidity_changes_total{replica}
//
// The delivery success rate is the share of recipient attempts that ended
// delivered:
//
//	sum(rate(hamail_delivery_recipients_total{outcome="delivered"}[5m]))
//	  /
//	sum(rate(hamail_delivery_recipients_total[5m]))
//
// and, per host, the same with "sum by (host)" on both sides. Deferred
// attempts count in the denominator, so a host that needs three tries per
// message shows 33%. The share of messages finally given up is
// hamail_delivery_recipients_total{outcome="bounced"} over the delivered
// plus bounced ones.
//
// # Cardinality
//
// Labels carry host, target and replica names, never recipient addresses.
// An exchanger "mx1.example.net [192.0.2.1]:25" is labelled
// "mx1.example.net" (Options.HostLabel changes that), and each of the host,
// target and replica labels keeps at most Options.MaxLabelValues distinct
// values, later ones being reported as "other", so that direct delivery to
// many domains cannot grow the series without bound.
//
// # Concurrency and lifecycle
//
// A Metrics and every hook it returns are safe for concurrent use and never
// block beyond a mutex. The queue collector calls Store.Stats at scrape
// time, bounded by Options.ScrapeTimeout, in parallel for all watched
// stores. New does no I/O and starts no goroutine.
package metrics
