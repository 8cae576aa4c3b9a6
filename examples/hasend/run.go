package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/examples/hasend/maildrop"
	"github.com/hamail/hamail/mxresolve"
	"github.com/hamail/hamail/smtpclient"
)

// Exit statuses, as in sysexits.h.
const (
	exOK          = 0
	exUsage       = 64 // bad command line, no recipient
	exDataErr     = 65 // malformed address or message
	exNoUser      = 67 // a recipient was refused for good
	exNoHost      = 68 // a recipient's domain does not exist or takes no mail
	exUnavailable = 69 // the relay refused the message for good
	exSoftware    = 70 // internal error
	exIOErr       = 74 // standard input could not be read
	exTempFail    = 75 // not delivered now; try again later
	exNoPerm      = 77 // the relay refused the credentials
	exConfig      = 78 // bad or missing configuration
)

const (
	defaultConfigPath = "/etc/hasend.conf"
	defaultTimeout    = 5 * time.Minute
	defaultMaxSize    = 50 << 20
)

// invocation is what the command line says.
type invocation struct {
	extract    bool // -t
	ignoreDots bool // -i, -oi
	verbose    bool // -v
	run        bool // -run
	help       bool
	noop       bool   // -bi
	sender     string // -f, -r
	senderSet  bool
	fullName   string // -F
	notify     []smtp.DSNNotify
	ret        smtp.DSNReturn
	envID      string
	configPath string // -config, -C
	// longs are the long options in command-line order, applied last.
	longs    []keyValue
	rcpts    []string
	warnings []string
}

type keyValue struct{ key, value string }

// usageError is a bad command line (exit 64).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErr(format string, a ...any) error { return &usageError{msg: fmt.Sprintf(format, a...)} }

// parseArgs reads the command line: hasend's long options (one or two
// dashes, "-name value" or "-name=value", matched by their full name), then
// sendmail's single-letter options, which group as getopt groups them
// ("-ti", "-oi", "-fuser@example.org", "-f user@example.org"). Other
// arguments are recipients, wherever they stand; "--" ends the options.
func parseArgs(args []string) (*invocation, error) {
	inv := &invocation{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			inv.rcpts = append(inv.rcpts, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			inv.rcpts = append(inv.rcpts, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		next := func() (string, error) {
			if hasValue {
				return value, nil
			}
			if i+1 >= len(args) {
				return "", usageErr("option -%s needs a value", name)
			}
			i++
			return args[i], nil
		}
		switch name {
		case "help":
			inv.help = true
			continue
		case "run":
			inv.run = true
			continue
		case "config":
			v, err := next()
			if err != nil {
				return nil, err
			}
			inv.configPath = v
			continue
		}
		if st, ok := lookupSetting(name); ok && !strings.Contains(name, "_") {
			if st.secret {
				return nil, usageErr("-%s is not accepted on the command line, where other users can read it: use HASEND_PASSWORD or password_file", name)
			}
			v := "true"
			if !st.boolean || hasValue {
				var err error
				if v, err = next(); err != nil {
					return nil, err
				}
			}
			inv.longs = append(inv.longs, keyValue{st.key, v})
			continue
		}
		if strings.HasPrefix(a, "--") {
			return nil, usageErr("unknown option %s", a)
		}
		if err := inv.parseShort(a[1:], args, &i); err != nil {
			return nil, err
		}
	}
	return inv, nil
}

// parseShort reads one group of sendmail options.
func (inv *invocation) parseShort(group string, args []string, i *int) error {
	for j := 0; j < len(group); j++ {
		c := group[j]
		switch c {
		case 't':
			inv.extract = true
			continue
		case 'i':
			inv.ignoreDots = true
			continue
		case 'v':
			inv.verbose = true
			continue
		case 'n', 'm', 'U', 'G':
			// No aliasing (-n), send to me too (-m), initial user
			// submission (-U), gateway (-G): nothing to do here.
			continue
		case 'q':
			return usageErr("-q (run the queue) is not supported: run hasend -queue DIR -run as a service")
		}
		if !strings.ContainsRune("frFobNRVBCXLhpOAd", rune(c)) {
			return usageErr("unknown option -%c", c)
		}
		v := group[j+1:]
		if v == "" {
			if *i+1 >= len(args) {
				return usageErr("option -%c needs a value", c)
			}
			*i++
			v = args[*i]
		}
		return inv.shortValue(c, v)
	}
	return nil
}

func (inv *invocation) shortValue(c byte, v string) error {
	switch c {
	case 'f', 'r':
		inv.sender, inv.senderSet = v, true
	case 'F':
		inv.fullName = v
	case 'C':
		inv.configPath = v
	case 'o':
		switch {
		case v == "i":
			inv.ignoreDots = true
		case strings.HasPrefix(v, "d"), strings.HasPrefix(v, "e"), v == "m", v == "o", v == "7", v == "8":
			// Delivery mode (-odi, -odb, -odq): hasend always delivers
			// or queues before it exits. Error mode (-oem, -oep,
			// -oee): errors are always reported by the exit status and
			// on standard error.
		default:
			inv.warnings = append(inv.warnings, "ignoring option -o"+v)
		}
	case 'b':
		switch v {
		case "m":
		case "i":
			// newaliases, run by package installers: hasend keeps no
			// alias database, so there is nothing to rebuild.
			inv.noop = true
		default:
			return usageErr("-b%s is not supported: hasend only delivers a message (-bm)", v)
		}
	case 'N':
		n, err := parseNotify(v)
		if err != nil {
			return err
		}
		inv.notify = n
	case 'R':
		switch strings.ToLower(v) {
		case "full":
			inv.ret = smtp.DSNReturnFull
		case "hdrs":
			inv.ret = smtp.DSNReturnHeaders
		default:
			return usageErr("-R %q: expected full or hdrs", v)
		}
	case 'V':
		inv.envID = v
	case 'B', 'X', 'L', 'h', 'p', 'O', 'A', 'd':
		// Body type (8BITMIME is detected), log file, syslog tag, hop
		// count, protocol, option, alias file, debug: accepted for
		// compatibility and ignored.
	}
	return nil
}

// parseNotify reads -N: "never" or a list of success, failure, delay
// (RFC 3461 §4.1).
func parseNotify(v string) ([]smtp.DSNNotify, error) {
	var out []smtp.DSNNotify
	for _, p := range strings.Split(strings.ToLower(v), ",") {
		switch strings.TrimSpace(p) {
		case "never":
			if len(strings.Split(v, ",")) > 1 {
				return nil, usageErr("-N: never cannot be combined with other values")
			}
			out = append(out, smtp.DSNNotifyNever)
		case "success":
			out = append(out, smtp.DSNNotifySuccess)
		case "failure":
			out = append(out, smtp.DSNNotifyFailure)
		case "delay":
			out = append(out, smtp.DSNNotifyDelayed)
		default:
			return nil, usageErr("-N %q: expected never or success,failure,delay", v)
		}
	}
	return out, nil
}

// loadSettings applies the config file, the environment and the long
// options, in that order.
func loadSettings(inv *invocation, env func(string) string) (*settings, error) {
	s := &settings{timeout: defaultTimeout, maxSize: defaultMaxSize}
	path, explicit := inv.configPath, true
	if path == "" {
		path = env("HASEND_CONFIG")
	}
	if path == "" {
		path, explicit = defaultConfigPath, false
	}
	f, err := os.Open(path)
	switch {
	case err == nil:
		err = readConfigFile(s, path, f)
		f.Close()
		if err != nil {
			return nil, &configError{err}
		}
	case explicit || !errors.Is(err, os.ErrNotExist):
		return nil, &configError{fmt.Errorf("config file: %w", err)}
	}
	for _, st := range settingTable {
		if v := env(st.env); v != "" {
			if err := st.set(s, v); err != nil {
				return nil, &configError{fmt.Errorf("%s: %w", st.env, err)}
			}
		}
	}
	for _, kv := range inv.longs {
		st, _ := lookupSetting(kv.key)
		if err := st.set(s, kv.value); err != nil {
			return nil, &usageError{msg: "-" + strings.ReplaceAll(err.Error(), "_", "-")}
		}
	}
	if s.domain == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		s.domain = h
	}
	if s.helo == "" {
		s.helo = s.domain
	}
	return s, nil
}

// exitCode maps an error to its status.
func exitCode(err error) int {
	var ue *usageError
	var ce *configError
	var ae *addressError
	var se *smtpclient.AddressError
	switch {
	case errors.As(err, &ue):
		return exUsage
	case errors.As(err, &ce):
		return exConfig
	case errors.As(err, &ae), errors.As(err, &se), errors.Is(err, errTooBig):
		return exDataErr
	}
	return exSoftware
}

// run is the whole command; main only adds the process's context, arguments,
// environment and standard streams.
func run(ctx context.Context, args []string, env func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "hasend: %v\n", err)
		if code == exUsage {
			fmt.Fprintln(stderr, "usage: hasend [-t] [-i] [-f sender] [-F name] [options] [recipient ...]; hasend -help for more")
		}
		return code
	}
	inv, err := parseArgs(args)
	if err != nil {
		return fail(exUsage, err)
	}
	if inv.help {
		io.WriteString(stdout, usageText())
		return exOK
	}
	if inv.noop {
		return exOK
	}
	for _, w := range inv.warnings {
		fmt.Fprintf(stderr, "hasend: %s\n", w)
	}
	s, err := loadSettings(inv, env)
	if err != nil {
		return fail(exitCode(err), err)
	}
	if inv.run {
		if s.queue == "" {
			return fail(exUsage, errors.New("-run needs -queue DIR"))
		}
		return runQueue(ctx, s, inv, stderr)
	}

	data, err := readMessage(stdin, inv.ignoreDots, s.maxSize)
	if err != nil {
		if errors.Is(err, errTooBig) {
			return fail(exDataErr, fmt.Errorf("standard input: %w (%d bytes, see max_size)", err, s.maxSize))
		}
		return fail(exIOErr, fmt.Errorf("reading standard input: %w", err))
	}
	userName := env("USER")
	if userName == "" {
		userName = env("LOGNAME")
	}
	if userName == "" {
		if u, err := user.Current(); err == nil {
			userName = u.Username
		}
	}
	if userName == "" {
		userName = "nobody"
	}
	sender, senderSet := inv.sender, inv.senderSet
	if !senderSet && s.from != "" {
		sender, senderSet = s.from, true
	}
	p, err := prepare(data, prepareOptions{
		extract:    inv.extract,
		args:       inv.rcpts,
		sender:     sender,
		nullSender: senderSet && (sender == "" || sender == "<>"),
		fullName:   inv.fullName,
		user:       userName,
		domain:     s.domain,
		now:        time.Now(),
	})
	if err != nil {
		return fail(exDataErr, err)
	}
	if len(p.rcpts) == 0 {
		if inv.extract {
			return fail(exUsage, errors.New("no recipients: none in the To, Cc or Bcc fields nor as arguments"))
		}
		return fail(exUsage, errors.New("no recipients: give them as arguments, or use -t to read them from the message"))
	}

	if s.queue != "" {
		md, err := maildrop.Open(maildropPath(s.queue))
		if err != nil {
			return fail(exTempFail, err)
		}
		name, err := md.Drop(maildrop.Envelope{
			From: p.from, To: p.rcpts, Notify: notifyParam(inv.notify), Ret: string(inv.ret), EnvID: inv.envID,
		}, bytes.NewReader(p.data))
		if errors.Is(err, maildrop.ErrBadEnvelope) {
			return fail(exDataErr, err) // trying again cannot help
		}
		if err != nil {
			return fail(exTempFail, err)
		}
		if inv.verbose {
			fmt.Fprintf(stderr, "hasend: queued as %s for %d recipient(s)\n", name, len(p.rcpts))
		}
		return exOK
	}
	return deliver(ctx, s, inv, p, stderr)
}

// newClient makes the smtpclient for direct delivery and for the queue.
func newClient(s *settings, transcript io.Writer) (*smtpclient.Client, *smtpclient.Options, error) {
	if err := s.resolvePassword(); err != nil {
		return nil, nil, &configError{err}
	}
	relays, err := s.relayList()
	if err != nil {
		return nil, nil, &configError{err}
	}
	if err := s.applyCA(relays); err != nil {
		return nil, nil, err
	}
	o := &smtpclient.Options{LocalName: s.helo, Relays: relays, MXPort: s.mxPort, Transcript: transcript}
	if s.mx {
		o.Resolver = mxresolve.New(&mxresolve.Options{Nameservers: s.nameservers})
	}
	if len(relays) == 0 && o.Resolver == nil {
		return nil, nil, &configError{errors.New("no route: set a relay (-relay, HASEND_RELAY, relay in the config file) or -mx")}
	}
	c, err := smtpclient.New(o)
	if err != nil {
		return nil, nil, &configError{err}
	}
	return c, o, nil
}

// deliver sends the message now and maps the result to the exit status.
func deliver(ctx context.Context, s *settings, inv *invocation, p *prepared, stderr io.Writer) int {
	var transcript io.Writer
	if inv.verbose {
		transcript = stderr
	}
	client, _, err := newClient(s, transcript)
	if err != nil {
		fmt.Fprintf(stderr, "hasend: %v\n", err)
		return exConfig
	}
	defer client.Close()
	msg := &smtpclient.Message{
		From:       p.from,
		Body:       bytes.NewReader(p.data),
		Size:       int64(len(p.data)),
		EightBit:   p.eightBit,
		EnvelopeID: inv.envID,
		Return:     inv.ret,
	}
	for _, r := range p.rcpts {
		msg.To = append(msg.To, smtpclient.Recipient{Addr: r, Notify: inv.notify})
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	res, err := client.Send(ctx, msg)
	if res == nil {
		fmt.Fprintf(stderr, "hasend: %v\n", err)
		if c := exitCode(err); c != exSoftware {
			return c
		}
		return exTempFail
	}
	return reportResult(res, err, inv.verbose, stderr)
}

// reportResult prints what failed and picks the exit status: a permanent
// failure wins over a temporary one, because it needs a person; a recipient
// whose outcome is unknown (connection lost after the final dot) counts as
// temporary.
func reportResult(res *smtpclient.Result, err error, verbose bool, stderr io.Writer) int {
	code := exOK
	worse := func(c int) {
		if code == exOK || code == exTempFail {
			code = c
		}
	}
	for _, r := range res.Recipients {
		why := ""
		if r.Reply != nil {
			why = r.Reply.String()
		} else if r.Err != nil {
			why = r.Err.Error()
		}
		switch r.Outcome {
		case smtpclient.Delivered:
			if verbose {
				fmt.Fprintf(stderr, "hasend: %s: delivered via %s\n", r.Recipient, r.Host)
			}
			continue
		case smtpclient.Permanent:
			fmt.Fprintf(stderr, "hasend: %s: refused: %s\n", r.Recipient, why)
			var se *smtpclient.Error
			stage := smtpclient.StageNone
			if errors.As(r.Err, &se) {
				stage = se.Stage
			}
			switch stage {
			case smtpclient.StageRcpt:
				worse(exNoUser)
			case smtpclient.StageResolve:
				worse(exNoHost)
			case smtpclient.StageAuth:
				worse(exNoPerm)
			default:
				worse(exUnavailable)
			}
		case smtpclient.Unknown:
			fmt.Fprintf(stderr, "hasend: %s: not known whether delivered (connection lost after the message was sent): %s\n", r.Recipient, why)
			if code == exOK {
				code = exTempFail
			}
		default:
			fmt.Fprintf(stderr, "hasend: %s: deferred: %s\n", r.Recipient, why)
			if code == exOK {
				code = exTempFail
			}
		}
	}
	if err != nil && code == exOK {
		fmt.Fprintf(stderr, "hasend: %v\n", err)
		code = exTempFail
	}
	return code
}

// maildropPath is where hasend drops messages in a queue directory.
func maildropPath(queueDir string) string { return queueDir + string(os.PathSeparator) + "maildrop" }

// notifyParam writes -N as the NOTIFY parameter.
func notifyParam(n []smtp.DSNNotify) string {
	parts := make([]string, len(n))
	for i, k := range n {
		parts[i] = string(k)
	}
	return strings.Join(parts, ",")
}

// applyCA makes the relays trust ca_file instead of the system's roots.
func (s *settings) applyCA(relays []smtpclient.Relay) error {
	if s.caFile == "" {
		return nil
	}
	pem, err := os.ReadFile(s.caFile)
	if err != nil {
		return &configError{fmt.Errorf("ca_file: %w", err)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return &configError{fmt.Errorf("ca_file: %s holds no PEM certificate", s.caFile)}
	}
	for i := range relays {
		relays[i].TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return nil
}
