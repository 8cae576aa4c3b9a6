package imapfailover

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/hamail/hamail/health"
)

// TLSMode says how a connection to a replica is protected.
type TLSMode int

const (
	// TLSImplicit: TLS from the first byte, usually port 993 (RFC 8314 §3.3).
	// It is the zero value, so a Replica is encrypted unless told otherwise.
	TLSImplicit TLSMode = iota
	// TLSStartTLS: plain text upgraded with STARTTLS before authentication
	// (RFC 3501 §6.2.1); a server that does not offer it is an error.
	TLSStartTLS
	// TLSNone: plain text. Use only on loopback or a trusted network.
	TLSNone
)

func (m TLSMode) String() string {
	switch m {
	case TLSImplicit:
		return "implicit"
	case TLSStartTLS:
		return "starttls"
	case TLSNone:
		return "none"
	default:
		return "unknown"
	}
}

// Replica is one IMAP server holding a copy of the mailboxes.
type Replica struct {
	// Name identifies the replica in health views, errors and state
	// (HIGHESTMODSEQ is remembered per replica name). Default: Addr.
	Name string
	// Addr is host:port.
	Addr string
	// Priority orders replicas: lower is preferred; equal priorities keep
	// the order of Options.Replicas.
	Priority int
	// TLS is the transport protection; default TLSImplicit.
	TLS TLSMode
	// TLSConfig for TLSImplicit and TLSStartTLS; nil means the system roots
	// and the host of Addr as server name.
	TLSConfig *tls.Config
	// Username and Password authenticate with LOGIN when SASL is nil.
	Username, Password string
	// SASL, when set, makes a new SASL client for each connection, used
	// with AUTHENTICATE (RFC 3501 §6.2.2, SASL-IR when offered).
	SASL func() sasl.Client
}

func (r *Replica) name() string {
	if r.Name != "" {
		return r.Name
	}
	return r.Addr
}

// Options configure a Pool. A nil *Options or a zero field means the
// default stated on the field.
type Options struct {
	// Replicas of the mailbox store; at least one.
	Replicas []Replica
	// Health, when set, is read before choosing a replica (Down replicas
	// are tried only after every other one) and is told about what real
	// connections see. Default: none.
	Health health.View
	// MaxConns bounds the connections the pool keeps open at once,
	// including one per running Watch. Default 4.
	MaxConns int
	// MaxIdle bounds the idle authenticated connections kept per replica.
	// Default 2.
	MaxIdle int
	// DialTimeout bounds connect, TLS handshake, greeting and
	// authentication. Default 10 s.
	DialTimeout time.Duration
	// CommandTimeout bounds how long a command may wait for the server
	// without receiving a byte; when it passes the connection is closed,
	// because go-imap has no read deadline while it waits for a response
	// to begin. A server that keeps sending is bounded by go-imap's own
	// limits of 30 s per response (5 min per literal in it), writes by 30 s
	// per command and 5 min per literal; the context bounds everything.
	// Default 30 s.
	CommandTimeout time.Duration
	// MaxLineLength bounds a response line, literals included, in bytes;
	// a longer one closes the connection with ErrLineTooLong, because
	// go-imap holds a whole line in memory. It must exceed the largest
	// UID SEARCH answer expected (about 7 bytes per message without
	// ESEARCH, so 16 MiB is about two million messages). Default 16 MiB;
	// negative means no limit.
	MaxLineLength int
	// Heartbeat is how often Watch leaves IDLE to send NOOP, which finds
	// half-open connections; well under the 29 minutes of RFC 2177.
	// Default 4 min.
	Heartbeat time.Duration
	// PollInterval is how often Watch sends NOOP to learn of new messages
	// on a replica that does not offer IDLE. Default 30 s.
	PollInterval time.Duration
	// FailureHold is how long a replica that failed on a real connection
	// is tried only after the others. Default 5 s.
	FailureHold time.Duration
	// ReconnectDelay is the pause before Watch tries again after every
	// replica failed. Default 500 ms.
	ReconnectDelay time.Duration
	// Dial opens TCP connections; default a net.Dialer with keep-alive.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MessageIDDomain is the right-hand side of Message-IDs that Append
	// adds to messages without one. Default "hamail.invalid".
	MessageIDDomain string
	// Logger receives connection and failover events; nil discards.
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Hooks observe connections, failovers and resyncs, for metrics; the
	// zero value observes nothing.
	Hooks Hooks
}

func (o *Options) withDefaults() Options {
	var d Options
	if o != nil {
		d = *o
	}
	d.Replicas = append([]Replica(nil), d.Replicas...)
	if d.MaxConns <= 0 {
		d.MaxConns = 4
	}
	if d.MaxIdle <= 0 {
		d.MaxIdle = 2
	}
	if d.DialTimeout <= 0 {
		d.DialTimeout = 10 * time.Second
	}
	if d.CommandTimeout <= 0 {
		d.CommandTimeout = 30 * time.Second
	}
	if d.MaxLineLength == 0 {
		d.MaxLineLength = 16 << 20
	}
	if d.Heartbeat <= 0 {
		d.Heartbeat = 4 * time.Minute
	}
	if d.PollInterval <= 0 {
		d.PollInterval = 30 * time.Second
	}
	if d.FailureHold <= 0 {
		d.FailureHold = 5 * time.Second
	}
	if d.ReconnectDelay <= 0 {
		d.ReconnectDelay = 500 * time.Millisecond
	}
	if d.Dial == nil {
		nd := &net.Dialer{KeepAlive: 30 * time.Second}
		d.Dial = nd.DialContext
	}
	if d.MessageIDDomain == "" {
		d.MessageIDDomain = "hamail.invalid"
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return d
}
