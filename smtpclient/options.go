package smtpclient

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/mxresolve"
	"github.com/sony/gobreaker/v2"
)

// TLSPolicy says how a connection to a host must be protected.
type TLSPolicy int

const (
	// TLSMay uses STARTTLS when the server offers it and sends in clear
	// otherwise (opportunistic TLS, RFC 3207). The certificate is not
	// checked. This is the default.
	TLSMay TLSPolicy = iota
	// TLSNone never uses STARTTLS.
	TLSNone
	// TLSEncrypt requires STARTTLS; the certificate is not checked. A server
	// that does not offer it gets nothing: the recipients fail temporarily.
	TLSEncrypt
	// TLSVerify requires STARTTLS (or implicit TLS) and a certificate valid
	// for the host name.
	TLSVerify
)

func (p TLSPolicy) String() string {
	switch p {
	case TLSNone:
		return "none"
	case TLSEncrypt:
		return "encrypt"
	case TLSVerify:
		return "verify"
	default:
		return "may"
	}
}

// AuthMechanism names a SASL mechanism for AUTH (RFC 4954).
type AuthMechanism string

const (
	AuthPlain       AuthMechanism = "PLAIN"       // RFC 4616
	AuthLogin       AuthMechanism = "LOGIN"       // draft-murchison-sasl-login
	AuthXOAUTH2     AuthMechanism = "XOAUTH2"     // Google and Microsoft
	AuthOAuthBearer AuthMechanism = "OAUTHBEARER" // RFC 7628
)

// Auth holds credentials for a relay.
type Auth struct {
	Mechanism AuthMechanism
	// Identity is the optional authorization identity (PLAIN).
	Identity string
	Username string
	// Password for PLAIN and LOGIN.
	Password string
	// Token returns an OAuth 2.0 access token for XOAUTH2 and OAUTHBEARER;
	// it is called for every new connection so that it can refresh.
	Token func(ctx context.Context) (string, error)
}

// Relay is a smarthost.
type Relay struct {
	// Name identifies the relay in results, hooks, breakers and the health
	// checker (health target name). Default: Addr.
	Name string
	// Addr is host:port.
	Addr string
	// Priority is the relay's tier: lower is better. A tier is used only
	// when every relay of the better tiers is unavailable.
	Priority int
	// Weight shares the load inside a tier (default 1).
	Weight int
	// TLS is the TLS policy (default TLSMay).
	TLS TLSPolicy
	// TLSConfig is cloned for each connection; ServerName defaults to the
	// host part of Addr. Nil: a default configuration.
	TLSConfig *tls.Config
	// ImplicitTLS connects with TLS from the first byte (port 465, RFC 8314).
	ImplicitTLS bool
	// Auth, when set, authenticates after TLS.
	Auth *Auth
	// AllowInsecureAuth permits AUTH over a connection without TLS.
	AllowInsecureAuth bool
}

// Balance chooses a relay inside a tier.
type Balance int

const (
	// RoundRobin spreads messages by weight, in turn (smooth weighted round
	// robin). The default.
	RoundRobin Balance = iota
	// LeastInFlight picks the relay with the fewest sessions in progress
	// relative to its weight.
	LeastInFlight
)

// MXResolver finds the mail exchangers of a domain; *mxresolve.Resolver
// implements it.
type MXResolver interface {
	Resolve(ctx context.Context, domain string) (*mxresolve.Result, error)
}

// Dialer opens TCP connections; *net.Dialer implements it.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

var _ Dialer = (*net.Dialer)(nil)

// Timeouts bound each step of a session, each from sending the command to
// the end of its reply; the context bounds them all. Zero fields take the
// defaults: RFC 5321 §4.5.3.2 where it gives one (greeting 5 min, MAIL
// 5 min, RCPT 5 min, DATA 2 min, each write of the body 3 min, after the
// final dot 10 min), Postfix's otherwise (connect 30 s, EHLO, STARTTLS and
// AUTH 5 min, RSET 20 s), and QUIT 10 s (a pooled connection being closed
// should not hold Close for long).
type Timeouts struct {
	Connect   time.Duration
	Greeting  time.Duration
	Hello     time.Duration
	StartTLS  time.Duration
	Auth      time.Duration
	Mail      time.Duration
	Rcpt      time.Duration
	DataInit  time.Duration
	DataBlock time.Duration
	DataEnd   time.Duration
	Reset     time.Duration
	Quit      time.Duration
}

// PoolOptions tunes the per-host connection pool.
type PoolOptions struct {
	// MaxPerHost caps the connections to one host, busy or idle
	// (default 8). A Send waits for a free slot, bounded by its context.
	MaxPerHost int
	// MaxIdlePerHost caps idle connections kept per host (default
	// MaxPerHost). Negative disables reuse.
	MaxIdlePerHost int
	// IdleTimeout closes a connection idle this long (default 2 s, as
	// Postfix's smtp_connection_cache_time_limit).
	IdleTimeout time.Duration
	// MaxAge stops reusing a connection this old (default 300 s, as
	// Postfix's smtp_connection_reuse_time_limit).
	MaxAge time.Duration
}

// BreakerOptions tunes the per-host circuit breakers.
type BreakerOptions struct {
	// Failures is the number of consecutive site failures that opens the
	// breaker (default 5).
	Failures uint32
	// OpenTimeout is how long it stays open before letting a probe through
	// (default 60 s).
	OpenTimeout time.Duration
	// HalfOpenProbes is how many sessions a half-open breaker admits, and
	// how many must succeed to close it (default 1).
	HalfOpenProbes uint32
	// MaxHosts bounds the breakers kept for mail exchangers; the least
	// recently used are forgotten (default 4096). Relays always keep theirs.
	MaxHosts int
}

// Options configures a Client. The zero value of every field is its
// documented default; a nil *Options is all defaults (which routes nothing:
// set Relays or Resolver).
type Options struct {
	// LocalName is sent in EHLO (default "localhost").
	LocalName string

	// Relays are the smarthosts. When set, every message goes through them
	// first.
	Relays []Relay
	// Resolver enables direct MX delivery (after the relays, if any);
	// *mxresolve.Resolver is the implementation.
	Resolver MXResolver
	// FallbackRelays are tried after the MX hosts for recipients that are
	// still failing temporarily (Postfix smtp_fallback_relay).
	FallbackRelays []Relay

	// MXPort is the port of mail exchangers (default 25).
	MXPort int
	// MXTLS is the TLS policy for mail exchangers (default TLSMay).
	MXTLS TLSPolicy
	// MXTLSConfig is cloned for MX connections; ServerName is set to the
	// exchanger's name.
	MXTLSConfig *tls.Config
	// MaxMXAddresses caps the exchanger addresses tried per domain and call
	// (default 5, as Postfix's smtp_mx_address_limit).
	MaxMXAddresses int

	// Balance chooses among relays of a tier (default RoundRobin).
	Balance Balance
	// FailbackDelay is the hysteresis of failback: a relay seen down is
	// used again only after the health checker has reported it up for this
	// long (default 10 s).
	FailbackDelay time.Duration

	// MaxRecipients per transaction; more are sent in several transactions
	// on the same connection (default 100, RFC 5321 §4.5.3.1.8).
	MaxRecipients int

	Timeouts Timeouts
	Pool     PoolOptions
	Breaker  BreakerOptions

	// Dialer opens connections (default: a net.Dialer).
	Dialer Dialer
	// Health is read before choosing a host and told what real sessions
	// saw (nil: no health checker).
	Health health.View
	// Hooks observe the delivery (nil: none).
	Hooks *Hooks
	// Logger receives debug and warning records (nil: discard).
	Logger *slog.Logger
	// Transcript receives the protocol exchange, credentials removed
	// (nil: none). Writes from concurrent sessions are serialized per line.
	Transcript io.Writer
	// Now is the clock for pool ages and failback (default time.Now).
	Now func() time.Time
}

// HostInfo identifies a host in hooks.
type HostInfo struct {
	// Name is the relay's Name, or the exchanger "name [ip]:port".
	Name string
	// Addr is the dialed host:port.
	Addr string
	// Relay is true for relays and fallback relays.
	Relay bool
}

// BreakerEvent is a state change of a host's circuit breaker.
type BreakerEvent struct {
	Host     string
	From, To gobreaker.State
}

// Attempt describes one session's work on one host.
type Attempt struct {
	Host       HostInfo
	Recipients []string
	// Reused: the connection came from the pool.
	Reused   bool
	Duration time.Duration
	// Err is nil when the transaction ran (individual recipients may still
	// have been refused: see the Result); otherwise the *Error that ended it.
	Err error
}

// Hooks are optional callbacks, called synchronously from the goroutine of
// the Send that causes them (never under a lock). They must be quick and
// safe for concurrent use.
type Hooks struct {
	// HostChosen: a host is about to be tried for some recipients.
	HostChosen func(h HostInfo, recipients []string)
	// HostSkipped: a host was skipped (err wraps ErrBreakerOpen,
	// ErrHostDown, or gobreaker.ErrTooManyRequests).
	HostSkipped func(h HostInfo, err error)
	// Connected: a new connection is ready (greeted, EHLO, TLS and AUTH
	// done as the policy says), or failed to become so.
	Connected func(h HostInfo, err error)
	// TLS: TLS was established (STARTTLS or implicit).
	TLS func(h HostInfo, state tls.ConnectionState)
	// Reply: a reply that decided something (MAIL, each RCPT, the final
	// dot). rcpt is "" except for RCPT.
	Reply func(h HostInfo, stage Stage, rcpt string, r Reply)
	// BreakerStateChange: a host's breaker changed state.
	BreakerStateChange func(e BreakerEvent)
	// AttemptDone: a session on a host ended its work for one Send.
	AttemptDone func(a Attempt)
}
