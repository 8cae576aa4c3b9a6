package health

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"
)

// Defaults, after HAProxy's server check parameters (inter, fastinter,
// downinter, rise, fall). HAProxy's own inter default is 2 s; mail targets
// are probed less often because clients also report what they see on real
// connections.
const (
	DefaultInterval     = 10 * time.Second
	DefaultFastInterval = 2 * time.Second
	DefaultDownInterval = 30 * time.Second
	DefaultTimeout      = 5 * time.Second
	DefaultRise         = 2
	DefaultFall         = 3
	DefaultJitter       = 0.1
	DefaultEHLOName     = "localhost"
	// DefaultSubscriptionBuffer is how many changes a subscription holds
	// before it coalesces them (see Subscription).
	DefaultSubscriptionBuffer = 256
)

// ProbeKind says which conversation an active probe has with a target.
type ProbeKind int

const (
	// ProbeTCP only connects and closes.
	ProbeTCP ProbeKind = iota
	// ProbeSMTP reads the 220 greeting, says EHLO, optionally STARTTLS,
	// and QUITs (RFC 5321 §3.1, §4.1.1.1, §4.1.1.10; RFC 3207).
	ProbeSMTP
	// ProbeIMAP reads the greeting, asks CAPABILITY, optionally STARTTLS
	// and LOGIN, and LOGOUTs (RFC 9051 §7.1.4, §6.1.1, §6.2.3, §6.1.3).
	ProbeIMAP
)

func (k ProbeKind) String() string {
	switch k {
	case ProbeTCP:
		return "tcp"
	case ProbeSMTP:
		return "smtp"
	case ProbeIMAP:
		return "imap"
	default:
		return fmt.Sprintf("ProbeKind(%d)", int(k))
	}
}

// MarshalText makes a ProbeKind read as "tcp", "smtp" or "imap" in JSON.
func (k ProbeKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (k *ProbeKind) UnmarshalText(b []byte) error {
	for _, v := range []ProbeKind{ProbeTCP, ProbeSMTP, ProbeIMAP} {
		if string(b) == v.String() {
			*k = v
			return nil
		}
	}
	return fmt.Errorf("health: unknown probe kind %q", b)
}

// TLSMode says how a probe uses TLS.
type TLSMode int

const (
	// NoTLS speaks in clear text.
	NoTLS TLSMode = iota
	// StartTLS upgrades the connection with STARTTLS (RFC 3207 for SMTP,
	// RFC 9051 §6.2.1 for IMAP) and fails when the server does not offer
	// it or its certificate does not verify.
	StartTLS
	// ImplicitTLS starts TLS right after connecting (ports 465 and 993,
	// RFC 8314).
	ImplicitTLS
)

func (m TLSMode) String() string {
	switch m {
	case NoTLS:
		return "none"
	case StartTLS:
		return "starttls"
	case ImplicitTLS:
		return "implicit"
	default:
		return fmt.Sprintf("TLSMode(%d)", int(m))
	}
}

// Target is one endpoint the checker watches. Name identifies it in View
// calls, snapshots and changes; Address is host:port. Every other field is
// optional: zero means the checker's default from Options.
type Target struct {
	Name    string
	Address string
	Kind    ProbeKind

	// Interval between probes while the target is steadily up.
	Interval time.Duration
	// FastInterval between probes while the target is unknown or changing
	// state (some observations disagree with its state).
	FastInterval time.Duration
	// DownInterval between probes while the target is steadily down.
	DownInterval time.Duration
	// Timeout bounds one whole probe, connect included.
	Timeout time.Duration
	// ConnectTimeout bounds the TCP connect (and the TLS handshake of
	// ImplicitTLS) inside Timeout. Zero: Timeout alone.
	ConnectTimeout time.Duration
	// Rise is how many consecutive good observations bring the target up.
	Rise int
	// Fall is how many consecutive bad observations bring the target down.
	Fall int

	// TLS says whether the probe uses TLS; TLSConfig configures it. A nil
	// TLSConfig verifies the certificate against the system roots for the
	// host part of Address. Certificate verification is never skipped
	// unless TLSConfig says so.
	TLS       TLSMode
	TLSConfig *tls.Config

	// EHLOName is the name an SMTP probe gives in EHLO (RFC 5321
	// §4.1.1.1). Default Options.EHLOName.
	EHLOName string
	// Username and Password, when Username is set, make an IMAP probe LOGIN
	// (RFC 9051 §6.2.3). They are never logged.
	Username string
	Password string

	// Prober, when set, replaces the probe that Kind selects.
	Prober Prober
}

// Options configures a Checker. A nil *Options or a zero field means the
// documented default. The durations, Rise, Fall, Timeout and EHLOName are
// the defaults of targets that leave the field zero.
type Options struct {
	Interval       time.Duration // default DefaultInterval (10 s)
	FastInterval   time.Duration // default DefaultFastInterval (2 s)
	DownInterval   time.Duration // default DefaultDownInterval (30 s)
	Timeout        time.Duration // default DefaultTimeout (5 s)
	ConnectTimeout time.Duration // default: Timeout alone
	Rise           int           // default DefaultRise (2)
	Fall           int           // default DefaultFall (3)
	EHLOName       string        // default DefaultEHLOName

	// Jitter spreads probes so that targets are not probed in lock-step:
	// every wait is multiplied by a random factor in [1-Jitter, 1+Jitter],
	// and a target's first probe waits a random time up to Jitter ×
	// Interval. Zero means DefaultJitter (0.1); a negative value disables
	// jitter. Values above 0.5 are clamped to 0.5.
	Jitter float64

	// Prober runs the active probes of targets that have no Prober of
	// their own. Default: a NetProber using Dialer.
	Prober Prober
	// Dialer opens the connections of the default prober. Default: a
	// net.Dialer.
	Dialer Dialer

	// SubscriptionBuffer is how many changes a subscription queues before
	// it coalesces them per target. Default DefaultSubscriptionBuffer.
	SubscriptionBuffer int

	// Hooks are called on probes, passive reports and state changes.
	Hooks Hooks

	// Logger receives state changes (info/warn) and probe results
	// (debug). Nil discards.
	Logger *slog.Logger
}

// settings are the resolved defaults of a checker.
type settings struct {
	Options
	jitter float64
}

func resolve(opts *Options) settings {
	var s settings
	if opts != nil {
		s.Options = *opts
	}
	o := &s.Options
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.FastInterval <= 0 {
		o.FastInterval = DefaultFastInterval
	}
	if o.DownInterval <= 0 {
		o.DownInterval = DefaultDownInterval
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Rise <= 0 {
		o.Rise = DefaultRise
	}
	if o.Fall <= 0 {
		o.Fall = DefaultFall
	}
	if o.EHLOName == "" {
		o.EHLOName = DefaultEHLOName
	}
	if o.SubscriptionBuffer <= 0 {
		o.SubscriptionBuffer = DefaultSubscriptionBuffer
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Prober == nil {
		o.Prober = &NetProber{Dialer: o.Dialer}
	}
	switch {
	case o.Jitter < 0:
		s.jitter = 0
	case o.Jitter == 0:
		s.jitter = DefaultJitter
	case o.Jitter > 0.5:
		s.jitter = 0.5
	default:
		s.jitter = o.Jitter
	}
	return s
}

// withDefaults validates t and fills its zero fields from s.
func (s *settings) withDefaults(t Target) (Target, error) {
	bad := func(format string, args ...any) (Target, error) {
		return Target{}, fmt.Errorf("%w: target %q: %s", ErrInvalidTarget, t.Name, fmt.Sprintf(format, args...))
	}
	if t.Name == "" {
		return bad("empty name")
	}
	if _, _, err := net.SplitHostPort(t.Address); err != nil {
		return bad("address %q: %v", t.Address, err)
	}
	if t.Kind < ProbeTCP || t.Kind > ProbeIMAP {
		return bad("unknown probe kind %d", int(t.Kind))
	}
	if t.TLS < NoTLS || t.TLS > ImplicitTLS {
		return bad("unknown TLS mode %d", int(t.TLS))
	}
	if t.Kind == ProbeTCP && t.TLS == StartTLS {
		return bad("STARTTLS needs an SMTP or IMAP probe")
	}
	if t.Rise < 0 || t.Fall < 0 || t.Interval < 0 || t.FastInterval < 0 || t.DownInterval < 0 ||
		t.Timeout < 0 || t.ConnectTimeout < 0 {
		return bad("negative rise, fall, interval or timeout")
	}
	// Credentials and the EHLO name go on the wire inside one line: a CR,
	// LF or NUL would let them inject commands.
	for _, f := range []string{t.EHLOName, t.Username, t.Password} {
		if strings.ContainsAny(f, "\r\n\x00") {
			return bad("EHLO name or credentials contain CR, LF or NUL")
		}
	}
	if strings.ContainsAny(t.EHLOName, " \t") {
		return bad("EHLO name %q contains white space", t.EHLOName)
	}
	if t.Interval == 0 {
		t.Interval = s.Interval
	}
	if t.FastInterval == 0 {
		t.FastInterval = s.FastInterval
	}
	if t.DownInterval == 0 {
		t.DownInterval = s.DownInterval
	}
	if t.Timeout == 0 {
		t.Timeout = s.Timeout
	}
	if t.ConnectTimeout == 0 {
		t.ConnectTimeout = s.ConnectTimeout
	}
	if t.Rise == 0 {
		t.Rise = s.Rise
	}
	if t.Fall == 0 {
		t.Fall = s.Fall
	}
	if t.EHLOName == "" {
		t.EHLOName = s.EHLOName
	}
	return t, nil
}
