package peers

import (
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/syncbuf"
)

// defaultMainCF is the default Postfix's main.cf, where every private
// instance's config directory must be listed.
const defaultMainCF = "/etc/postfix/main.cf"

// PostfixOptions configures a Postfix relay instance.
type PostfixOptions struct {
	// RelayHost is the next hop (host:port) that receives every message the
	// instance accepts. It is written as relayhost = [host]:port, so no MX
	// look-up happens. Required.
	RelayHost string
	// Hostname is the instance's myhostname, which it uses in its greeting,
	// in HELO and in Received headers. Default relay-PORT.example.net, so
	// that two instances relaying to each other do not see a mail loop.
	Hostname string
	// Config sets further main.cf parameters, overriding the defaults of
	// this package (for instance "maximal_queue_lifetime": "10s", or
	// "smtp_connect_timeout": "1s").
	Config map[string]string
}

// Postfix is a running Postfix instance that accepts mail from loopback
// clients on Addr and relays all of it to the next hop.
type Postfix struct {
	// Addr is the SMTP listener, 127.0.0.1:port. It stays the same across
	// Stop and Start.
	Addr string
	// Dir is the instance's config directory (main.cf, master.cf).
	Dir string

	base      string // holds conf, queue and data
	t         testing.TB
	postfix   string
	postconf  string
	postqueue string
	log       *syncbuf.Buffer
	proc      *process
}

// StartPostfix starts a Postfix relay instance on a free loopback port and
// returns once it greets. It is stopped at t.Cleanup, and its log is
// written to the test log if the test failed.
func StartPostfix(t testing.TB, opts PostfixOptions) *Postfix {
	t.Helper()
	bins := need(t, "Postfix", "postfix", "postconf", "postqueue")
	if opts.RelayHost == "" {
		t.Fatal("peers: PostfixOptions.RelayHost is required")
	}
	relay, err := relayhost(opts.RelayHost)
	if err != nil {
		t.Fatal(err)
	}
	// The config directory holds only root's files: Postfix's check warns
	// about anything else under it, so queue and data live beside it.
	base := makeDir(t, "hamail-postfix-")
	dir := filepath.Join(base, "conf")
	p := &Postfix{Dir: dir, base: base, t: t, postfix: bins[0], postconf: bins[1], postqueue: bins[2], log: &syncbuf.Buffer{}}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := makeQueue(base); err != nil {
		t.Fatal(err)
	}
	if err := editAlternates(p.postconf, dir, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := editAlternates(p.postconf, "", dir); err != nil {
			t.Errorf("peers: %v", err)
		}
	})
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("Postfix %s log:\n%s", p.Addr, p.Log())
		}
	})

	// The free port can be taken between finding and binding it: retry.
	for attempt := 0; ; attempt++ {
		port := freePort(t)
		p.Addr = fmt.Sprintf("127.0.0.1:%d", port)
		host := opts.Hostname
		if host == "" {
			host = fmt.Sprintf("relay-%d.example.net", port)
		}
		if err := p.writeConfig(host, relay, port, opts.Config); err != nil {
			t.Fatal(err)
		}
		err := p.start()
		if err == nil {
			return p
		}
		if attempt < 2 && listenFailed(p.Log()) {
			continue
		}
		t.Fatalf("peers: Postfix did not start: %v\n%s", err, p.Log())
	}
}

// relayhost turns host:port into Postfix's [host]:port form.
func relayhost(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("peers: bad relay host %q: %w", addr, err)
	}
	if strings.Contains(host, ":") {
		host = "ipv6:" + host
	}
	return fmt.Sprintf("[%s]:%s", host, port), nil
}

// makeQueue creates the queue and data directories with the owners and
// modes of Debian's postfix-files. Postfix would create them itself on
// its first start (post-install create-missing), but that costs seconds per
// instance; with them in place a start can skip its checks (quick-start).
func makeQueue(base string) error {
	owner, err := user.Lookup("postfix")
	if err != nil {
		return fmt.Errorf("peers: postfix user: %w", err)
	}
	postdrop, err := user.LookupGroup("postdrop")
	if err != nil {
		return fmt.Errorf("peers: postdrop group: %w", err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(postdrop.Gid)
	dirs := []struct {
		path     string
		uid, gid int
		mode     fs.FileMode
	}{
		{"data", uid, -1, 0o700},
		{"queue", 0, -1, 0o755},
		{"queue/pid", 0, -1, 0o755},
		{"queue/maildrop", uid, gid, 0o730},
		{"queue/public", uid, gid, 0o710},
	}
	for _, q := range []string{"active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private", "saved", "trace"} {
		dirs = append(dirs, struct {
			path     string
			uid, gid int
			mode     fs.FileMode
		}{"queue/" + q, uid, -1, 0o700})
	}
	for _, d := range dirs {
		p := filepath.Join(base, d.path)
		if err := os.Mkdir(p, d.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
		if err := os.Chown(p, d.uid, d.gid); err != nil {
			return err
		}
	}
	return nil
}

func (p *Postfix) writeConfig(hostname, relay string, port int, extra map[string]string) error {
	params := map[string]string{
		"compatibility_level":      "3.6",
		"config_directory":         p.Dir,
		"queue_directory":          filepath.Join(p.base, "queue"),
		"data_directory":           filepath.Join(p.base, "data"),
		"meta_directory":           "/etc/postfix",
		"maillog_file":             "/dev/stdout",
		"syslog_name":              fmt.Sprintf("postfix-%d", port),
		"myhostname":               hostname,
		"myorigin":                 "$myhostname",
		"mydestination":            "",
		"inet_interfaces":          "127.0.0.1",
		"inet_protocols":           "ipv4",
		"mynetworks":               "127.0.0.0/8",
		"relay_domains":            "",
		"relayhost":                relay,
		"smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
		"smtpd_peername_lookup":    "no",
		"local_recipient_maps":     "",
		"alias_maps":               "",
		"alias_database":           "",
		"biff":                     "no",
		"append_dot_mydomain":      "no",
		"smtp_tls_security_level":  "none",
		"smtpd_tls_security_level": "none",
		"smtp_sasl_auth_enable":    "no",
		"smtpd_sasl_auth_enable":   "no",
		// Tests wait for retries: keep them short.
		"queue_run_delay":        "1s",
		"minimal_backoff_time":   "1s",
		"maximal_backoff_time":   "2s",
		"smtp_connect_timeout":   "5s",
		"smtp_helo_timeout":      "10s",
		"in_flow_delay":          "0",
		"smtpd_error_sleep_time": "0",
	}
	maps.Copy(params, extra)
	var b strings.Builder
	b.WriteString("# Private Postfix instance for a hamail test.\n")
	for _, k := range slices.Sorted(maps.Keys(params)) {
		fmt.Fprintf(&b, "%s = %s\n", k, params[k])
	}
	if err := os.WriteFile(filepath.Join(p.Dir, "main.cf"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	// No chroot anywhere: the instance's directories are not set up for it.
	master := fmt.Sprintf(`# service type private unpriv chroot wakeup maxproc command
127.0.0.1:%d inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, port)
	if err := os.WriteFile(filepath.Join(p.Dir, "master.cf"), []byte(master), 0o644); err != nil {
		return err
	}
	return p.backdate()
}

// backdate moves the config files' times a minute into the past: Postfix
// reads a main.cf modified within the last second again and again until it
// is a second old (it might still be being edited), which would add that
// wait to every start and reload.
func (p *Postfix) backdate() error {
	past := time.Now().Add(-time.Minute)
	for _, f := range []string{"main.cf", "master.cf"} {
		if err := os.Chtimes(filepath.Join(p.Dir, f), past, past); err != nil {
			return err
		}
	}
	return nil
}

// start runs postfix start-fg and waits for the greeting.
func (p *Postfix) start() error {
	// The queue was laid out by makeQueue: skip the integrity checks.
	if err := os.WriteFile(filepath.Join(p.base, "queue", "quick-start"), nil, 0o644); err != nil {
		return err
	}
	proc, err := startProcess(p.log, p.postfix, "-c", p.Dir, "start-fg")
	if err != nil {
		return err
	}
	p.proc = proc
	if err := waitGreeting(p.Addr, "220 ", proc); err != nil {
		p.stop()
		return err
	}
	return nil
}

// Start starts a stopped instance again on the same address with the same
// queue. It fails the test if the instance does not come up.
func (p *Postfix) Start() {
	p.t.Helper()
	if p.proc != nil {
		p.t.Fatalf("peers: Postfix %s is already running", p.Addr)
	}
	if err := p.start(); err != nil {
		p.t.Fatalf("peers: restart Postfix %s: %v\n%s", p.Addr, err, p.Log())
	}
}

// Stop stops the instance and every process it started; the queue stays.
// Stopping a stopped instance does nothing.
func (p *Postfix) Stop() {
	p.t.Helper()
	if err := p.stop(); err != nil {
		p.t.Errorf("peers: stop Postfix %s: %v", p.Addr, err)
	}
}

func (p *Postfix) stop() error {
	if p.proc == nil {
		return nil
	}
	proc := p.proc
	p.proc = nil
	if !proc.exited() {
		out, err := exec.Command(p.postfix, "-c", p.Dir, "stop").CombinedOutput()
		p.log.Write(out)
		if err == nil && proc.wait(stopTimeout) {
			return nil
		}
		proc.kill()
		return fmt.Errorf("did not stop in %v (postfix stop: %v), killed", stopTimeout, err)
	}
	proc.killGroup()
	return nil
}

// Running reports whether the instance was started and its master process
// has not exited.
func (p *Postfix) Running() bool { return p.proc != nil && !p.proc.exited() }

// Log returns what the instance has logged so far.
func (p *Postfix) Log() string { return p.log.String() }

// Postconf sets main.cf parameters (name, value, name, value...) and, if the
// instance runs, reloads it so they take effect (for example a new
// relayhost).
func (p *Postfix) Postconf(nameValues ...string) {
	p.t.Helper()
	if len(nameValues)%2 != 0 {
		p.t.Fatal("peers: Postconf wants name, value pairs")
	}
	args := []string{"-c", p.Dir, "-e"}
	for i := 0; i < len(nameValues); i += 2 {
		args = append(args, nameValues[i]+"="+nameValues[i+1])
	}
	if out, err := exec.Command(p.postconf, args...).CombinedOutput(); err != nil {
		p.t.Fatalf("peers: postconf %v: %v\n%s", args, err, out)
	}
	if err := p.backdate(); err != nil {
		p.t.Fatal(err)
	}
	if p.Running() {
		if out, err := exec.Command(p.postfix, "-c", p.Dir, "reload").CombinedOutput(); err != nil {
			p.t.Fatalf("peers: postfix reload: %v\n%s", err, out)
		}
	}
}

// SetRelayHost points the instance at a new next hop (host:port).
func (p *Postfix) SetRelayHost(addr string) {
	p.t.Helper()
	r, err := relayhost(addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.Postconf("relayhost", r)
}

// Flush asks the instance to retry every deferred message now
// (postqueue -f).
func (p *Postfix) Flush() {
	p.t.Helper()
	if out, err := exec.Command(p.postqueue, "-c", p.Dir, "-f").CombinedOutput(); err != nil {
		p.t.Fatalf("peers: postqueue -f: %v\n%s", err, out)
	}
}

// QueueLen counts the messages in the instance's queue (incoming, active,
// deferred, hold and maildrop), by their queue files.
func (p *Postfix) QueueLen() int {
	n := 0
	for _, q := range []string{"maildrop", "incoming", "active", "deferred", "hold"} {
		filepath.WalkDir(filepath.Join(p.base, "queue", q), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				n++
			}
			return nil
		})
	}
	return n
}

// editAlternates adds dir to (or removes dir from) alternate_config_directories
// in the default main.cf, holding a lock file so that concurrent test
// processes do not lose each other's edits. Entries left by instances whose
// directory no longer exists (a test process that was killed) are dropped.
func editAlternates(postconf, add, remove string) error {
	// The lock is on the directory: postconf -e replaces main.cf by a new
	// file, so a lock on main.cf itself would not exclude anyone.
	if err := os.MkdirAll(filepath.Dir(defaultMainCF), 0o755); err != nil {
		return err
	}
	lock, err := os.Open(filepath.Dir(defaultMainCF))
	if err != nil {
		return fmt.Errorf("peers: lock %s: %w", filepath.Dir(defaultMainCF), err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("peers: lock %s: %w", filepath.Dir(defaultMainCF), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	if _, err := os.Stat(defaultMainCF); os.IsNotExist(err) {
		if err := os.WriteFile(defaultMainCF, []byte("# Created by hamail tests to list private Postfix instances.\n"), 0o644); err != nil {
			return fmt.Errorf("peers: create %s: %w", defaultMainCF, err)
		}
	}
	out, err := exec.Command(postconf, "-c", filepath.Dir(defaultMainCF), "-h", "alternate_config_directories").Output()
	if err != nil {
		return fmt.Errorf("peers: read alternate_config_directories: %w", err)
	}
	stale := filepath.Join(os.TempDir(), "hamail-postfix-")
	// An instance's config directory is <stale>*/conf.
	var dirs []string
	for _, d := range strings.FieldsFunc(string(out), func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' }) {
		if d == remove || d == add {
			continue
		}
		if strings.HasPrefix(d, stale) {
			if _, err := os.Stat(d); os.IsNotExist(err) {
				continue
			}
		}
		dirs = append(dirs, d)
	}
	if add != "" {
		dirs = append(dirs, add)
	}
	args := []string{"-c", filepath.Dir(defaultMainCF), "-e", "alternate_config_directories = " + strings.Join(dirs, ", ")}
	if len(dirs) == 0 {
		args = []string{"-c", filepath.Dir(defaultMainCF), "-X", "alternate_config_directories"}
	}
	if out, err := exec.Command(postconf, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("peers: write alternate_config_directories: %v\n%s", err, out)
	}
	// See backdate: a fresh main.cf delays every Postfix command by a second.
	past := time.Now().Add(-time.Minute)
	return os.Chtimes(defaultMainCF, past, past)
}
