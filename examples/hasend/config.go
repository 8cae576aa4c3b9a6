package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hamail/hamail/smtpclient"
)

// settings are the values that flags, the environment and the config file
// can give; a field set by a higher-precedence source replaces the lower one
// (flags > environment > file).
type settings struct {
	relays       []string
	user         string
	password     string
	passwordFile string
	tls          string
	caFile       string
	from         string
	domain       string
	helo         string
	timeout      time.Duration
	queue        string
	maxSize      int64
	mx           bool
	nameservers  []string
	mxPort       int
}

// setting is one key of the configuration: its name in the config file,
// its environment variable and its flag (the file name with "-" for "_").
type setting struct {
	key  string
	env  string
	help string
	set  func(s *settings, v string) error
	// secret: never accepted as a flag (it would show in the process list).
	secret bool
	// boolean: a flag without a value means true.
	boolean bool
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

var settingTable = []setting{
	{key: "relay", env: "HASEND_RELAY", help: "comma-separated `host[:port]` smarthosts; each one after the first is a backup of the ones before (port 587, 465 with -tls implicit)",
		set: func(s *settings, v string) error { s.relays = splitList(v); return nil }},
	{key: "user", env: "HASEND_USER", help: "AUTH user `name` for the relays",
		set: func(s *settings, v string) error { s.user = v; return nil }},
	{key: "password", env: "HASEND_PASSWORD", secret: true, help: "AUTH password (environment or config file only)",
		set: func(s *settings, v string) error { s.password = v; return nil }},
	{key: "password_file", env: "HASEND_PASSWORD_FILE", help: "read the AUTH password from the first line of `file`",
		set: func(s *settings, v string) error { s.passwordFile = v; return nil }},
	{key: "tls", env: "HASEND_TLS", help: "TLS `mode` to the relays: verify (STARTTLS, certificate checked; the default), encrypt (not checked), may, none, implicit (TLS from the first byte, checked)",
		set: func(s *settings, v string) error {
			switch v {
			case "verify", "encrypt", "may", "none", "implicit":
				s.tls = v
				return nil
			}
			return fmt.Errorf("tls: %q is not verify, encrypt, may, none or implicit", v)
		}},
	{key: "ca_file", env: "HASEND_CA_FILE", help: "PEM `file` of certificate authorities to trust instead of the system's",
		set: func(s *settings, v string) error { s.caFile = v; return nil }},
	{key: "from", env: "HASEND_FROM", help: "default envelope sender `address` when -f is not given (default USER@domain)",
		set: func(s *settings, v string) error { s.from = v; return nil }},
	{key: "domain", env: "HASEND_DOMAIN", help: "`domain` for bare user names and the default sender (default: the host name)",
		set: func(s *settings, v string) error { s.domain = v; return nil }},
	{key: "helo", env: "HASEND_HELO", help: "`name` sent in EHLO (default: the domain)",
		set: func(s *settings, v string) error { s.helo = v; return nil }},
	{key: "timeout", env: "HASEND_TIMEOUT", help: "give up direct delivery after this `duration` (exit 75; default 5m)",
		set: func(s *settings, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("timeout: %q is not a positive duration", v)
			}
			s.timeout = d
			return nil
		}},
	{key: "queue", env: "HASEND_QUEUE", help: "queue `directory`: hand the message to the queue and exit 0 once it is durable",
		set: func(s *settings, v string) error { s.queue = v; return nil }},
	{key: "max_size", env: "HASEND_MAX_SIZE", help: "largest message accepted on standard input, in `bytes` (default 52428800, 50 MiB)",
		set: func(s *settings, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return fmt.Errorf("max_size: %q is not a positive number of bytes", v)
			}
			s.maxSize = n
			return nil
		}},
	{key: "mx", env: "HASEND_MX", boolean: true, help: "deliver directly to the recipients' mail exchangers (after the relays, if any)",
		set: func(s *settings, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("mx: %q is not a boolean", v)
			}
			s.mx = b
			return nil
		}},
	{key: "nameserver", env: "HASEND_NAMESERVER", help: "comma-separated `host[:port]` resolvers for -mx (default: /etc/resolv.conf)",
		set: func(s *settings, v string) error { s.nameservers = splitList(v); return nil }},
	{key: "mx_port", env: "HASEND_MX_PORT", help: "`port` of mail exchangers for -mx",
		set: func(s *settings, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > 65535 {
				return fmt.Errorf("mx_port: %q is not a port", v)
			}
			s.mxPort = n
			return nil
		}},
}

func lookupSetting(name string) (*setting, bool) {
	name = strings.ReplaceAll(name, "-", "_")
	for i := range settingTable {
		if settingTable[i].key == name {
			return &settingTable[i], true
		}
	}
	return nil, false
}

// configError is a problem with the configuration (exit 78).
type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

// readConfigFile applies a config file: one "key = value" per line ("=" is
// optional: "key value"), "#" starts a comment line, keys as in
// settingTable; a repeated relay or nameserver line adds to the list.
func readConfigFile(s *settings, path string, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			key, value, _ = strings.Cut(line, " ")
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		st, found := lookupSetting(key)
		if !found || strings.Contains(key, "-") {
			return fmt.Errorf("%s:%d: unknown key %q", path, lineNo, key)
		}
		prevRelays, prevNS := s.relays, s.nameservers
		if err := st.set(s, value); err != nil {
			return fmt.Errorf("%s:%d: %w", path, lineNo, err)
		}
		switch st.key {
		case "relay":
			s.relays = append(prevRelays, s.relays...)
		case "nameserver":
			s.nameservers = append(prevNS, s.nameservers...)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// resolvePassword reads password_file when no password was given. Only the
// modes that talk to the relays call it: a user who only drops messages into
// a queue directory needs no access to the credentials.
func (s *settings) resolvePassword() error {
	if s.password != "" || s.passwordFile == "" {
		return nil
	}
	b, err := os.ReadFile(s.passwordFile)
	if err != nil {
		return fmt.Errorf("password_file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	s.password = strings.TrimRight(line, "\r")
	if s.password == "" {
		return fmt.Errorf("password_file: %s: first line is empty", s.passwordFile)
	}
	return nil
}

// relayList turns the relay settings into smtpclient relays: one tier per
// relay, in the order given.
func (s *settings) relayList() ([]smtpclient.Relay, error) {
	var out []smtpclient.Relay
	for i, r := range s.relays {
		addr := r
		if _, _, err := net.SplitHostPort(r); err != nil {
			port := "587"
			if s.tls == "implicit" {
				port = "465"
			}
			addr = net.JoinHostPort(r, port)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("relay: %q is not host[:port]", r)
		}
		rl := smtpclient.Relay{Name: addr, Addr: addr, Priority: i}
		switch s.tls {
		case "", "verify":
			rl.TLS = smtpclient.TLSVerify
		case "encrypt":
			rl.TLS = smtpclient.TLSEncrypt
		case "may":
			rl.TLS = smtpclient.TLSMay
		case "none":
			rl.TLS = smtpclient.TLSNone
		case "implicit":
			rl.TLS, rl.ImplicitTLS = smtpclient.TLSVerify, true
		}
		if s.user != "" {
			if s.tls == "none" {
				return nil, errors.New("user is set with tls none: the password would cross the network in clear (RFC 4954 §4)")
			}
			if s.password == "" {
				return nil, errors.New("user is set but no password (HASEND_PASSWORD, password_file)")
			}
			rl.Auth = &smtpclient.Auth{Mechanism: smtpclient.AuthPlain, Username: s.user, Password: s.password}
		}
		out = append(out, rl)
	}
	return out, nil
}
