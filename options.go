package hamail

import (
	"io"
	"log/slog"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/metrics"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
	"github.com/hamail/hamail/smtpclient"
)

// Options configures a Mailer. A zero field means the documented default;
// at least one of Relays and Resolver (here or in SMTP) must route mail,
// and one of Dir and Store must hold the queue.
type Options struct {
	// Relays are the smarthosts, in priority tiers (smtpclient.Relay).
	// When set, they replace SMTP.Relays.
	Relays []smtpclient.Relay
	// Resolver enables direct delivery to each domain's mail exchangers
	// (RFC 5321 §5.1); *mxresolve.Resolver is the implementation. When
	// set, it replaces SMTP.Resolver.
	Resolver smtpclient.MXResolver
	// FallbackRelays are tried after the mail exchangers (Postfix
	// smtp_fallback_relay). When set, they replace SMTP.FallbackRelays.
	FallbackRelays []smtpclient.Relay
	// SMTP holds the base client options: timeouts, TLS policy, pool,
	// breakers, dialer, hooks. It is copied, never modified. The routing
	// fields above override its own; the Mailer chains its metrics hooks
	// after SMTP.Hooks.
	SMTP *smtpclient.Options

	// Dir is the queue directory: the embedded store lives in
	// Dir/queue.db (queue/bbolt), created with mode 0700 if needed. Used
	// when Store is nil.
	Dir string
	// Bolt tunes the embedded store opened in Dir (key retention, size
	// cap, inline body size). Nil means bbolt's defaults.
	Bolt *bbolt.Options
	// Store is any queue.Store (queue/jetstream for several processes
	// sharing one queue). The Mailer does not close a store it did not
	// open.
	Store queue.Store
	// Runner configures the delivery runner: retry schedule, concurrency,
	// attempt timeout, notices. It is copied; the Mailer chains its
	// metrics after Runner.OnAttempt and Runner.OnNotice. After a crash,
	// the messages that were being attempted are tried again once their
	// lease expires: Runner.LeaseDuration, by default AttemptTimeout
	// (10 minutes) plus one minute.
	Runner *queue.RunnerOptions

	// Health is read before choosing a host and told what real sessions
	// saw; it replaces SMTP.Health when set. Nil means no health checker.
	Health health.View
	// Metrics receives the Mailer's SMTP, queue and delivery metrics; the
	// queue is watched under Name. Nil means no metrics.
	Metrics *metrics.Metrics
	// Name labels this Mailer's queue in metrics ("queue" label); ""
	// means "mail".
	Name string
	// Logger receives the runner's and the client's records when they
	// have no logger of their own. Nil discards.
	Logger *slog.Logger
}

// Message is one message to send: the envelope and the content.
type Message struct {
	// From is the reverse path (RFC 5321 §4.1.1.2) without angle
	// brackets; "" is the null reverse path "<>", which never causes a
	// bounce (RFC 5321 §4.5.5).
	From string
	// To are the recipients (forward paths). To and Recipients together
	// hold at least one.
	To []string
	// Recipients are more recipients, each with its own DSN parameters
	// (NOTIFY, ORCPT; RFC 3461 §4.1, §4.2), as a relay that received them
	// in RCPT TO must pass them on. They follow To in the envelope.
	Recipients []queue.Recipient
	// Body is the message (RFC 5322 header and body), read once to EOF
	// by Send. Bare LF and bare CR line endings are sent as CRLF (RFC 5321
	// §2.3.8 forbids them on the wire).
	Body io.Reader
	// Key makes Send idempotent: sending again a message with the key of
	// one still queued (or remembered, see bbolt.Options.KeyRetention)
	// returns that message's ID and stores nothing. "" means no key.
	Key string

	// EnvID is the DSN envelope identifier (ENVID, RFC 3461 §4.4).
	EnvID string
	// Ret asks a failure notice to return the full message or only its
	// header (RET, RFC 3461 §4.3).
	Ret queue.Ret
	// Notify is the NOTIFY parameter (RFC 3461 §4.1) of the recipients in
	// To; zero means FAILURE,DELAY.
	Notify queue.Notify
	// SMTPUTF8 says the header carries UTF-8 (RFC 6532), so the message
	// needs the SMTPUTF8 extension (RFC 6531). It is implied when an
	// address is not ASCII.
	SMTPUTF8 bool
}
