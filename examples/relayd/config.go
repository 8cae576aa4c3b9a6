package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hamail/hamail/smtpclient"
)

// duration is a time.Duration written as "30s", "5m" in JSON.
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

func (d duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// relayConfig is one next hop.
type relayConfig struct {
	// Addr is host:port.
	Addr string `json:"addr"`
	// Priority is the tier: lower is preferred; a tier is used only when
	// the better ones are all unavailable.
	Priority int `json:"priority"`
	// Weight shares the load inside a tier (default 1).
	Weight int `json:"weight,omitempty"`
	// TLS: verify (default), encrypt, may, none, implicit.
	TLS string `json:"tls,omitempty"`
	// User and PasswordFile authenticate (AUTH PLAIN) after TLS.
	User         string `json:"user,omitempty"`
	PasswordFile string `json:"password_file,omitempty"`
}

// Config is relayd's configuration file (JSON); every field has a flag of
// the same name with "-" for "_", which overrides it.
type Config struct {
	// Hostname is this server's name: greeting, Received fields, EHLO to
	// the next hops, the self-signed certificate. Default: os.Hostname.
	Hostname string `json:"hostname"`
	// Listen is the submission address (default ":587", RFC 6409), with
	// STARTTLS.
	Listen string `json:"listen"`
	// ListenTLS, when set, is a second address where TLS starts with the
	// first byte (submissions, port 465, RFC 8314 §3.3).
	ListenTLS string `json:"listen_tls"`
	// TLSCert and TLSKey are PEM files for STARTTLS (RFC 3207).
	TLSCert string `json:"tls_cert"`
	TLSKey  string `json:"tls_key"`
	// TLSSelfSigned makes a throw-away certificate at start-up instead,
	// for trying relayd out; clients cannot verify it.
	TLSSelfSigned bool `json:"tls_self_signed"`
	// UsersFile holds "name:bcrypt-hash" lines (relayd -hash-password).
	UsersFile string `json:"users_file"`
	// TrustedNetworks are the client networks (CIDR prefixes such as
	// "127.0.0.0/8") that may send without AUTH, as Postfix's mynetworks:
	// the applications on this host, an internal subnet.
	TrustedNetworks []string `json:"trusted_networks"`
	// InsecureAuth allows AUTH without TLS. Only for a listener on a
	// trusted network: the password crosses it in clear.
	InsecureAuth bool `json:"insecure_auth"`
	// QueueDir holds the durable queue (queue.db) and the maildrop that
	// hasend -queue writes into.
	QueueDir string `json:"queue_dir"`

	// Relays are the next hops; FallbackRelays are tried after the mail
	// exchangers when MX is set.
	Relays         []relayConfig `json:"relays"`
	FallbackRelays []relayConfig `json:"fallback_relays"`
	// MX delivers directly to the recipients' mail exchangers (after the
	// relays, if any), resolved through Nameservers (default
	// /etc/resolv.conf) on MXPort (default 25).
	MX          bool     `json:"mx"`
	Nameservers []string `json:"nameservers"`
	MXPort      int      `json:"mx_port"`
	// Probe makes the health checker probe the relays (SMTP greeting and
	// EHLO) so that a dead relay is skipped before a message waits on it.
	Probe bool `json:"probe"`

	// HTTPListen serves /metrics and /healthz; "" disables it. Default
	// "127.0.0.1:9587".
	HTTPListen string `json:"http_listen"`

	// Limits. MaxQueueBytes caps the queue database (not counting the
	// bodies over 64 KiB, which are spool files); past it submissions get
	// 452 4.3.1 until deliveries make room. 0 means no cap.
	MaxQueueBytes   int      `json:"max_queue_bytes"`
	MaxMessageBytes int64    `json:"max_message_bytes"`
	MaxRecipients   int      `json:"max_recipients"`
	MaxConnections  int      `json:"max_connections"`
	ReadTimeout     duration `json:"read_timeout"`
	WriteTimeout    duration `json:"write_timeout"`
	ShutdownTimeout duration `json:"shutdown_timeout"`

	// Queue schedule.
	RetryMin       duration `json:"retry_min"`
	RetryMax       duration `json:"retry_max"`
	Lifetime       duration `json:"lifetime"`
	AttemptTimeout duration `json:"attempt_timeout"`
	// BreakerOpen is how long a next hop that failed again and again
	// (5 connection failures in a row) is skipped before one delivery
	// probes it (default 60s).
	BreakerOpen duration `json:"breaker_open"`
	// PickupInterval is how often the maildrop is scanned.
	PickupInterval duration `json:"pickup_interval"`

	// LogLevel: debug, info, warn, error.
	LogLevel string `json:"log_level"`
}

// Defaults.
const (
	defaultListen          = ":587"
	defaultHTTPListen      = "127.0.0.1:9587"
	defaultMaxMessageBytes = 25 << 20 // Postfix's message_size_limit is 10 MB; submission of attachments needs more
	defaultMaxRecipients   = 100      // RFC 5321 §4.5.3.1.8 minimum a server must accept
	defaultMaxConnections  = 100
	defaultReadTimeout     = 5 * time.Minute // RFC 5321 §4.5.3.2.7
	defaultWriteTimeout    = time.Minute
	defaultShutdownTimeout = 30 * time.Second
)

func defaultConfig() *Config {
	return &Config{
		Listen:          defaultListen,
		HTTPListen:      defaultHTTPListen,
		MaxMessageBytes: defaultMaxMessageBytes,
		MaxRecipients:   defaultMaxRecipients,
		MaxConnections:  defaultMaxConnections,
		ReadTimeout:     duration(defaultReadTimeout),
		WriteTimeout:    duration(defaultWriteTimeout),
		ShutdownTimeout: duration(defaultShutdownTimeout),
		PickupInterval:  duration(time.Second),
		LogLevel:        "info",
	}
}

// usageError: bad command line (exit 64); configError: bad configuration
// (exit 78).
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }

type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

// invocation is the command line beyond the configuration.
type invocation struct {
	cfg          *Config
	hashPassword bool
	bcryptCost   int
	printConfig  bool
}

// parseConfig reads the config file named by -config, then applies the
// flags that were given.
func parseConfig(args []string, stderr io.Writer) (*invocation, error) {
	fs := flag.NewFlagSet("relayd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath   = fs.String("config", "", "JSON configuration `file` (see the package documentation); flags override it")
		hashPassword = fs.Bool("hash-password", false, "read a password on standard input, print its bcrypt hash for the users file, and exit")
		bcryptCost   = fs.Int("bcrypt-cost", 10, "bcrypt `cost` of -hash-password (4 to 14; each step doubles the work of every AUTH)")
		printConfig  = fs.Bool("print-config", false, "print the effective configuration as JSON and exit")
		relays       = fs.String("relay", "", "comma-separated `host:port` next hops, each a backup of the ones before (replaces the file's relays)")
		relayUser    = fs.String("relay-user", "", "AUTH `name` for the -relay hops")
		relayPwFile  = fs.String("relay-password-file", "", "`file` whose first line is the -relay hops' password")
		relayTLS     = fs.String("relay-tls", "verify", "TLS `mode` to the -relay hops: verify, encrypt, may, none, implicit")
		nameservers  = fs.String("nameservers", "", "comma-separated `host:port` resolvers for -mx")
		trusted      = fs.String("trusted-networks", "", "comma-separated `CIDR` prefixes whose clients may send without AUTH (e.g. 127.0.0.0/8)")
	)
	d := defaultConfig()
	// Scalar settings: the flag's default is the built-in default; a
	// flag that was given overrides the file.
	fs.String("hostname", "", "this server's `name` (default: the host name)")
	fs.String("listen", d.Listen, "submission `address`")
	fs.String("listen-tls", "", "submissions `address` with implicit TLS, e.g. :465 (RFC 8314); \"\" for none")
	fs.String("tls-cert", "", "PEM certificate `file` for STARTTLS")
	fs.String("tls-key", "", "PEM private key `file` for STARTTLS")
	fs.Bool("tls-self-signed", false, "make a throw-away self-signed certificate (for trying relayd out)")
	fs.String("users-file", "", "`file` of name:bcrypt-hash[:senders] lines allowed to AUTH")
	fs.Bool("insecure-auth", false, "allow AUTH without TLS (trusted networks only)")
	fs.String("queue-dir", "", "`directory` of the durable queue (and of the maildrop hasend -queue writes)")
	fs.Bool("mx", false, "deliver to the recipients' mail exchangers (after the relays, if any)")
	fs.Int("mx-port", 25, "`port` of mail exchangers")
	fs.Bool("probe", false, "probe the relays' health (SMTP greeting and EHLO)")
	fs.String("http-listen", d.HTTPListen, "`address` for /metrics and /healthz (\"\" disables)")
	fs.Int64("max-message-bytes", d.MaxMessageBytes, "largest message accepted, in `bytes` (SIZE, RFC 1870)")
	fs.Int("max-queue-bytes", 0, "cap of the queue database in `bytes` (0: none); past it submissions get 452")
	fs.Int("max-recipients", d.MaxRecipients, "most recipients per message")
	fs.Int("max-connections", d.MaxConnections, "most simultaneous SMTP connections")
	fs.Duration("read-timeout", defaultReadTimeout, "idle time allowed between commands and between reads of a message")
	fs.Duration("write-timeout", defaultWriteTimeout, "time allowed to write a reply")
	fs.Duration("shutdown-timeout", defaultShutdownTimeout, "on SIGTERM, how long transactions in progress and deliveries in flight may take to finish")
	fs.Duration("retry-min", 0, "shortest wait before retrying a deferred message (default 5m)")
	fs.Duration("retry-max", 0, "longest wait between retries (default about 67m)")
	fs.Duration("lifetime", 0, "how long a message is retried before it bounces (default 120h)")
	fs.Duration("attempt-timeout", 0, "bound of one delivery attempt (default 10m)")
	fs.Duration("pickup-interval", time.Second, "how often the maildrop is scanned")
	fs.Duration("breaker-open", 0, "how long a next hop that keeps failing is skipped before a probe (default 60s)")
	fs.String("log-level", d.LogLevel, "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHead)
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), usageTail)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, &usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, &usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	inv := &invocation{cfg: d, hashPassword: *hashPassword, printConfig: *printConfig, bcryptCost: *bcryptCost}
	if *hashPassword {
		if *bcryptCost < bcrypt.MinCost || *bcryptCost > maxCost {
			return nil, &usageError{fmt.Errorf("-bcrypt-cost %d: want %d to %d", *bcryptCost, bcrypt.MinCost, maxCost)}
		}
		return inv, nil
	}
	if *configPath != "" {
		b, err := os.ReadFile(*configPath)
		if err != nil {
			return nil, &configError{fmt.Errorf("config: %w", err)}
		}
		if err := decodeConfig(b, d); err != nil {
			return nil, &configError{fmt.Errorf("config %s: %w", *configPath, err)}
		}
	}
	var setErr error
	fs.Visit(func(f *flag.Flag) {
		v := f.Value.(flag.Getter).Get()
		switch f.Name {
		case "hostname":
			d.Hostname = v.(string)
		case "listen":
			d.Listen = v.(string)
		case "listen-tls":
			d.ListenTLS = v.(string)
		case "tls-cert":
			d.TLSCert = v.(string)
		case "tls-key":
			d.TLSKey = v.(string)
		case "tls-self-signed":
			d.TLSSelfSigned = v.(bool)
		case "users-file":
			d.UsersFile = v.(string)
		case "insecure-auth":
			d.InsecureAuth = v.(bool)
		case "queue-dir":
			d.QueueDir = v.(string)
		case "mx":
			d.MX = v.(bool)
		case "mx-port":
			d.MXPort = v.(int)
		case "probe":
			d.Probe = v.(bool)
		case "http-listen":
			d.HTTPListen = v.(string)
		case "max-message-bytes":
			d.MaxMessageBytes = v.(int64)
		case "max-queue-bytes":
			d.MaxQueueBytes = v.(int)
		case "max-recipients":
			d.MaxRecipients = v.(int)
		case "max-connections":
			d.MaxConnections = v.(int)
		case "read-timeout":
			d.ReadTimeout = duration(v.(time.Duration))
		case "write-timeout":
			d.WriteTimeout = duration(v.(time.Duration))
		case "shutdown-timeout":
			d.ShutdownTimeout = duration(v.(time.Duration))
		case "retry-min":
			d.RetryMin = duration(v.(time.Duration))
		case "retry-max":
			d.RetryMax = duration(v.(time.Duration))
		case "lifetime":
			d.Lifetime = duration(v.(time.Duration))
		case "attempt-timeout":
			d.AttemptTimeout = duration(v.(time.Duration))
		case "breaker-open":
			d.BreakerOpen = duration(v.(time.Duration))
		case "pickup-interval":
			d.PickupInterval = duration(v.(time.Duration))
		case "log-level":
			d.LogLevel = v.(string)
		case "relay":
			d.Relays = nil
			for i, r := range strings.Split(*relays, ",") {
				if r = strings.TrimSpace(r); r != "" {
					d.Relays = append(d.Relays, relayConfig{Addr: r, Priority: i, TLS: *relayTLS, User: *relayUser, PasswordFile: *relayPwFile})
				}
			}
		case "nameservers":
			d.Nameservers = nil
			for _, n := range strings.Split(*nameservers, ",") {
				if n = strings.TrimSpace(n); n != "" {
					d.Nameservers = append(d.Nameservers, n)
				}
			}
		case "trusted-networks":
			d.TrustedNetworks = nil
			for _, n := range strings.Split(*trusted, ",") {
				if n = strings.TrimSpace(n); n != "" {
					d.TrustedNetworks = append(d.TrustedNetworks, n)
				}
			}
		case "relay-user", "relay-password-file", "relay-tls":
			if *relays == "" {
				setErr = fmt.Errorf("-%s applies to -relay, which is not given", f.Name)
			}
		}
	})
	if setErr != nil {
		return nil, &usageError{setErr}
	}
	if err := d.check(); err != nil {
		return nil, &configError{err}
	}
	return inv, nil
}

// check refuses configurations that cannot work.
func (c *Config) check() error {
	if c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		c.Hostname = h
	}
	if c.QueueDir == "" {
		return errors.New("queue_dir (-queue-dir) is required")
	}
	if len(c.Relays) == 0 && !c.MX {
		return errors.New("no route: give relays (-relay) or enable mx (-mx)")
	}
	if c.UsersFile == "" && len(c.TrustedNetworks) == 0 {
		return errors.New("users_file (-users-file) is required: relayd accepts mail only from authenticated users (or from trusted_networks)")
	}
	for _, n := range c.TrustedNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			return fmt.Errorf("trusted_networks: %w", err)
		}
	}
	if !c.TLSSelfSigned && (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("tls_cert and tls_key go together")
	}
	if c.UsersFile != "" && !c.TLSSelfSigned && c.TLSCert == "" && !c.InsecureAuth {
		return errors.New("no TLS: give tls_cert and tls_key (or tls_self_signed); AUTH is refused without TLS unless insecure_auth is set")
	}
	if c.ListenTLS != "" && !c.TLSSelfSigned && c.TLSCert == "" {
		return errors.New("listen_tls needs a certificate (tls_cert and tls_key, or tls_self_signed)")
	}
	if c.MaxQueueBytes < 0 {
		return errors.New("max_queue_bytes must not be negative")
	}
	if c.MaxMessageBytes <= 0 || c.MaxRecipients <= 0 || c.MaxConnections <= 0 {
		return errors.New("max_message_bytes, max_recipients and max_connections must be positive")
	}
	if c.ReadTimeout <= 0 || c.WriteTimeout <= 0 || c.ShutdownTimeout <= 0 {
		return errors.New("read_timeout, write_timeout and shutdown_timeout must be positive")
	}
	for _, r := range append(append([]relayConfig(nil), c.Relays...), c.FallbackRelays...) {
		if _, _, err := net.SplitHostPort(r.Addr); err != nil {
			return fmt.Errorf("relay %q: %w", r.Addr, err)
		}
		if _, err := tlsPolicy(r.TLS); err != nil {
			return fmt.Errorf("relay %s: %w", r.Addr, err)
		}
		if r.User != "" && r.PasswordFile == "" {
			return fmt.Errorf("relay %s: user without password_file", r.Addr)
		}
		if r.User != "" && r.TLS == "none" {
			return fmt.Errorf("relay %s: user with tls none would send the password in clear (RFC 4954 §4)", r.Addr)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}

// tlsPolicy reads a relay's TLS mode.
func tlsPolicy(s string) (smtpclient.TLSPolicy, error) {
	switch s {
	case "", "verify", "implicit":
		return smtpclient.TLSVerify, nil
	case "encrypt":
		return smtpclient.TLSEncrypt, nil
	case "may":
		return smtpclient.TLSMay, nil
	case "none":
		return smtpclient.TLSNone, nil
	}
	return 0, fmt.Errorf("tls %q: want verify, encrypt, may, none or implicit", s)
}

// smtpRelays builds the smtpclient relays, reading the password files.
func smtpRelays(rs []relayConfig) ([]smtpclient.Relay, error) {
	var out []smtpclient.Relay
	for _, r := range rs {
		p, err := tlsPolicy(r.TLS)
		if err != nil {
			return nil, err
		}
		rl := smtpclient.Relay{Name: r.Addr, Addr: r.Addr, Priority: r.Priority, Weight: r.Weight, TLS: p, ImplicitTLS: r.TLS == "implicit"}
		if r.User != "" {
			b, err := os.ReadFile(r.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("relay %s: %w", r.Addr, err)
			}
			pw, _, _ := strings.Cut(string(b), "\n")
			rl.Auth = &smtpclient.Auth{Mechanism: smtpclient.AuthPlain, Username: r.User, Password: strings.TrimRight(pw, "\r")}
		}
		out = append(out, rl)
	}
	return out, nil
}

// decodeConfig reads a JSON configuration over c: keys it names replace
// c's values; unknown keys and trailing data are errors.
func decodeConfig(b []byte, c *Config) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the configuration object")
	}
	return nil
}
