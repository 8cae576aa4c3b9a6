// Package smtpclient sends one message to its recipients, right now, over
// every path that can work: relays (smarthosts) in priority tiers, direct
// delivery to each domain's mail exchangers, and fallback relays after them.
//
// # Routing
//
// Relays are grouped in tiers by Relay.Priority. A tier is used only when
// every relay of the better tiers is unavailable (HAProxy "backup",
// keepalived priority); inside a tier the load is shared by smooth weighted
// round robin or least in-flight (Options.Balance, Relay.Weight). A relay
// the health checker (Options.Health) reports down is left out; once it is
// up again it is used only after Options.FailbackDelay (hysteresis against
// flapping).
//
// With Options.Resolver, recipients are grouped by domain and offered to the
// exchangers in the resolver's order (RFC 5321 §5.1), at most
// Options.MaxMXAddresses addresses per domain, then to Options.FallbackRelays
// (Postfix smtp_fallback_relay). A null MX (RFC 7505) or a non-existent
// domain ends those recipients permanently; a DNS failure sends them on to
// the fallback relays.
//
// A recipient that fails temporarily on one host is offered to the next; a
// recipient a host accepted is never sent again in the same call; and a
// recipient whose outcome is Unknown — the connection was lost after the
// final dot, so the message may have been delivered (RFC 5321 §4.5.3.2.6) —
// is not retried in the same call either. The caller (a queue) decides
// whether to retry it later, accepting a possible duplicate rather than a
// loss.
//
// # Classification
//
// What a failure means is decided in one place, following the table in the
// project's design: connection, TLS, greeting and 421 failures are the
// host's (they count against its circuit breaker and are reported to the
// health checker); 4xx replies are temporary; 5xx to RCPT is permanent for
// that recipient only, 5xx to MAIL or DATA for the transaction; 552 to RCPT
// is temporary (RFC 5321 §4.5.3.1.10); a lost connection after the final dot
// is Unknown. The caller's context ending counts against no host.
//
// # Circuit breakers and health
//
// Every host has a breaker (github.com/sony/gobreaker/v2). Only site failures
// trip it; an open breaker skips the host at once, a half-open one lets a
// probe through. State changes are handed to Hooks.BreakerStateChange and a
// trip is reported to the health checker, outside the breaker's lock.
//
// # Connections
//
// Sessions run over internal/smtpwire, which owns the deadlines (per
// command, RFC 5321 §4.5.3.2 defaults, see Timeouts), closes the connection
// when the context ends, pipelines (RFC 2920) and streams the body with
// dot-stuffing: a message of any size is never held in memory. Connections
// are pooled per host (Options.Pool): reused after RSET (sent in the same
// pipelined group as the next transaction when the server offers
// PIPELINING, RFC 2920 §3.1), closed after an idle timeout and a maximum
// age, capped per host; a 421 or a dead connection on a reused session,
// before any recipient was accepted, is retried once on a new one,
// transparently. Stats reports the pools.
//
// # Security
//
// TLS follows Relay.TLS and Options.MXTLS: none, may (STARTTLS when offered,
// RFC 3207), encrypt (STARTTLS required: a server that does not offer it gets
// nothing) or verify (required, certificate checked); Relay.ImplicitTLS
// speaks TLS from the first byte (RFC 8314). AUTH (RFC 4954: PLAIN, LOGIN,
// XOAUTH2, OAUTHBEARER RFC 7628) is never sent over an unencrypted
// connection unless Relay.AllowInsecureAuth is set, and credentials never
// reach the transcript. Addresses are validated before any I/O (RFC 5321
// §4.1.2 syntax, §4.5.3.1 lengths, no CR, LF or NUL); non-ASCII addresses
// need SMTPUTF8 (RFC 6531); SIZE (RFC 1870), 8BITMIME (RFC 6152) and DSN
// parameters (RFC 3461) are sent when the server offers them.
//
// # Lifecycle and concurrency
//
// New checks the options and does no I/O. A Client is safe for concurrent
// use; Send may be called from many goroutines. Close closes the idle pooled
// connections; the Client starts no goroutine of its own (idle connections
// are closed by timers that Close stops).
package smtpclient
