// Package health keeps the shared view of which mail endpoints are up.
//
// It is the HAProxy health check and keepalived priority of a classic HA mail
// stack, inside the program: a checker probes targets (TCP connect, SMTP
// greeting and EHLO per RFC 5321, IMAP greeting and CAPABILITY per RFC 9051 /
// RFC 3501), applies rise/fall hysteresis, and accepts passive reports from
// clients that saw a success or a failure on a real connection. smtpclient and
// imapfailover read it through the View interface.
//
// # Probes
//
// Each target has a probe kind, and every probe is bounded by the target's
// Timeout, so a server that accepts a connection and never speaks is a
// failed probe when the time is up:
//
//   - ProbeTCP connects and closes.
//   - ProbeSMTP reads the greeting and requires 220 (RFC 5321 §4.3.1: 554
//     and 421 refuse service), says EHLO (falling back to HELO when EHLO is
//     not recognized, §3.2), optionally upgrades with STARTTLS (RFC 3207)
//     verifying the certificate and says EHLO again, and QUITs.
//   - ProbeIMAP reads the greeting and requires "* OK" or "* PREAUTH"
//     ("* BYE" refuses, RFC 9051 §7.1.5), asks CAPABILITY, optionally
//     upgrades with STARTTLS (§6.2.1) and LOGINs (§6.2.3), and LOGOUTs.
//
// Both can use implicit TLS instead (RFC 8314). A Prober of one's own can
// replace the built-in probes, for all targets or for one.
//
// # Hysteresis and pace
//
// A target starts Unknown, which clients treat as usable. Rise consecutive
// good observations make it Up, Fall consecutive bad ones make it Down; an
// observation is an active probe or a passive report (View.ReportSuccess,
// View.ReportFailure), so Fall failures seen by clients take a relay down
// at once, without waiting for a probe. As in HAProxy, probes come every
// Interval while a target is steadily up, every DownInterval while steadily
// down, and every FastInterval while it is unknown or some observation
// disagrees with its state; a passive failure therefore brings the next
// probe forward. Waits are measured from the end of the previous probe and
// spread by Jitter so that targets are not probed in lock-step.
//
// # Observing
//
// Snapshot and Status read the state, with the time it began, the last
// error, the consecutive counts and the last probe latency. Subscribe
// delivers state changes in order and never makes the checker wait; a
// subscriber that falls behind gets changes coalesced per target (see
// Subscription). Hooks receive every probe, report and change, for metrics.
// Handler serves the snapshot as JSON for /healthz-style endpoints. State
// changes are logged to the Options.Logger.
//
// # Concurrency and lifecycle
//
// A Checker is safe for concurrent use. New does no I/O and starts nothing.
// Targets can be added and removed at any time. Run probes until its context
// ends, then returns after every probe goroutine has stopped; it can be
// called again later. State, reports, snapshots, subscriptions and the
// handler work whether or not Run is running.
package health
