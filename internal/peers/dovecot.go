package peers

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/hamail/hamail/internal/syncbuf"
)

// mailUser is the system user that owns the maildirs. nobody exists on
// every Debian system and its uid (65534) is above Dovecot's default
// first_valid_uid (500), which refuses system users as mail users.
const mailUser = "nobody"

// DovecotOptions configures a Dovecot IMAP instance.
type DovecotOptions struct {
	// User and Password are the one IMAP account. Defaults "alice" and
	// "alice-secret".
	User, Password string
	// Hostname is the instance's host name (DOVECOT_HOSTNAME, used in
	// maildir file names). Default imap-PORT.example.net.
	Hostname string
	// Config is appended to the generated dovecot.conf; later settings
	// override earlier ones.
	Config string
}

// Dovecot is a running Dovecot instance serving IMAP on Addr for one
// passwd-file user with a maildir.
type Dovecot struct {
	// Addr is the IMAP listener, 127.0.0.1:port. It stays the same across
	// Stop and Start.
	Addr string
	// DoveadmAddr is the doveadm server's listener, which dsync connects to.
	DoveadmAddr string
	// User and Password log in with LOGIN or AUTHENTICATE PLAIN.
	User, Password string
	// Conf is the instance's dovecot.conf.
	Conf string
	// Maildir is the user's maildir.
	Maildir string

	t       testing.TB
	dovecot string
	doveadm string
	log     *syncbuf.Buffer
	proc    *process
}

// doveadmPassword is shared by every instance so that dsync between them
// authenticates; the listener is on loopback only.
const doveadmPassword = "hamail-doveadm"

// StartDovecot starts a Dovecot instance on free loopback ports and returns
// once it greets. It is stopped at t.Cleanup, and its log is written to the
// test log if the test failed.
func StartDovecot(t testing.TB, opts DovecotOptions) *Dovecot {
	t.Helper()
	bins := need(t, "Dovecot", "dovecot", "doveadm")
	if opts.User == "" {
		opts.User = "alice"
	}
	if opts.Password == "" {
		opts.Password = opts.User + "-secret"
	}
	u, err := user.Lookup(mailUser)
	if err != nil {
		unavailable(t, "Dovecot: no %s user for the maildirs: %v", mailUser, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	dir := makeDir(t, "hamail-dovecot-")
	home := filepath.Join(dir, "home", opts.User)
	if err := os.Mkdir(filepath.Dir(home), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}
	users := fmt.Sprintf("%s:{PLAIN}%s:%d:%d::%s::\n", opts.User, opts.Password, uid, gid, home)
	if err := os.WriteFile(filepath.Join(dir, "users"), []byte(users), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &Dovecot{
		User: opts.User, Password: opts.Password,
		Conf:    filepath.Join(dir, "dovecot.conf"),
		Maildir: filepath.Join(home, "Maildir"),
		t:       t, dovecot: bins[0], doveadm: bins[1], log: &syncbuf.Buffer{},
	}
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("Dovecot %s log:\n%s", d.Addr, d.Log())
		}
	})
	for attempt := 0; ; attempt++ {
		port, admPort := freePort(t), freePort(t)
		d.Addr = fmt.Sprintf("127.0.0.1:%d", port)
		d.DoveadmAddr = fmt.Sprintf("127.0.0.1:%d", admPort)
		host := opts.Hostname
		if host == "" {
			host = fmt.Sprintf("imap-%d.example.net", port)
		}
		conf := dovecotConf(dir, host, port, admPort, uid, gid) + opts.Config
		if err := os.WriteFile(d.Conf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		err := d.start()
		if err == nil {
			return d
		}
		if attempt < 2 && listenFailed(d.Log()) {
			continue
		}
		t.Fatalf("peers: Dovecot did not start: %v\n%s", err, d.Log())
	}
}

func dovecotConf(dir, host string, port, admPort, uid, gid int) string {
	return fmt.Sprintf(`# Private Dovecot instance for a hamail test.
instance_name = hamail-%[3]d
base_dir = %[1]s/run
state_dir = %[1]s/state
import_environment = TZ DOVECOT_HOSTNAME=%[2]s
hostname = %[2]s
listen = 127.0.0.1
protocols = imap
log_path = /dev/stderr
# Loopback only and no TLS: plaintext passwords are fine here.
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = %[5]d
first_valid_gid = %[6]d
mail_location = maildir:~/Maildir
mail_fsync = never
namespace inbox {
  inbox = yes
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%u %[1]s/users
}
userdb {
  driver = passwd-file
  args = username_format=%%u %[1]s/users
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = %[3]d
  }
  inet_listener imaps {
    port = 0
  }
}
service doveadm {
  inet_listener {
    address = 127.0.0.1
    port = %[4]d
  }
}
doveadm_password = %[7]s
protocol imap {
  mail_max_userip_connections = 1000
}
`, dir, host, port, admPort, uid, gid, doveadmPassword)
}

func (d *Dovecot) start() error {
	proc, err := startProcess(d.log, d.dovecot, "-F", "-c", d.Conf)
	if err != nil {
		return err
	}
	d.proc = proc
	if err := waitGreeting(d.Addr, "* OK", proc); err != nil {
		d.stop()
		return err
	}
	return nil
}

// Start starts a stopped instance again on the same addresses with the
// same mail. It fails the test if the instance does not come up.
func (d *Dovecot) Start() {
	d.t.Helper()
	if d.proc != nil {
		d.t.Fatalf("peers: Dovecot %s is already running", d.Addr)
	}
	if err := d.start(); err != nil {
		d.t.Fatalf("peers: restart Dovecot %s: %v\n%s", d.Addr, err, d.Log())
	}
}

// Stop stops the instance and every process it started; the mail stays.
// Stopping a stopped instance does nothing.
func (d *Dovecot) Stop() {
	d.t.Helper()
	if err := d.stop(); err != nil {
		d.t.Errorf("peers: stop Dovecot %s: %v", d.Addr, err)
	}
}

func (d *Dovecot) stop() error {
	if d.proc == nil {
		return nil
	}
	proc := d.proc
	d.proc = nil
	if proc.exited() {
		proc.killGroup()
		return nil
	}
	// What `doveadm stop` does: SIGTERM to the master, which ends its
	// children.
	proc.cmd.Process.Signal(syscall.SIGTERM)
	if proc.wait(stopTimeout) {
		return nil
	}
	proc.kill()
	return fmt.Errorf("did not stop in %v, killed", stopTimeout)
}

// Running reports whether the instance was started and its master process
// has not exited.
func (d *Dovecot) Running() bool { return d.proc != nil && !d.proc.exited() }

// Log returns what the instance has logged so far.
func (d *Dovecot) Log() string { return d.log.String() }

// Doveadm runs `doveadm -c CONF args...` against the instance and returns
// its standard output; it fails the test on error.
func (d *Dovecot) Doveadm(args ...string) string {
	d.t.Helper()
	out, err := d.doveadmRun(nil, args...)
	if err != nil {
		d.t.Fatal(err)
	}
	return out
}

func (d *Dovecot) doveadmRun(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command(d.doveadm, append([]string{"-c", d.Conf}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("peers: doveadm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// Login dials the instance and logs in as its user. The client is closed
// at t.Cleanup (closing it earlier is fine).
func (d *Dovecot) Login() *imapclient.Client {
	d.t.Helper()
	c, err := imapclient.DialInsecure(d.Addr, nil)
	if err != nil {
		d.t.Fatalf("peers: dial Dovecot %s: %v", d.Addr, err)
	}
	d.t.Cleanup(func() { c.Close() })
	if err := c.Login(d.User, d.Password).Wait(); err != nil {
		d.t.Fatalf("peers: login to Dovecot %s: %v", d.Addr, err)
	}
	return c
}

// Append stores msg in mailbox (created if missing) over IMAP and returns
// the UIDVALIDITY and UID the server gave it (UIDPLUS, RFC 4315).
func (d *Dovecot) Append(mailbox string, msg []byte) (uidValidity uint32, uid imap.UID) {
	d.t.Helper()
	c := d.Login()
	defer c.Close()
	if mailbox != "INBOX" {
		// An existing mailbox makes CREATE fail; APPEND then works anyway.
		c.Create(mailbox, nil).Wait()
	}
	cmd := c.Append(mailbox, int64(len(msg)), nil)
	if _, err := cmd.Write(msg); err != nil {
		d.t.Fatalf("peers: APPEND to %s: %v", d.Addr, err)
	}
	if err := cmd.Close(); err != nil {
		d.t.Fatalf("peers: APPEND to %s: %v", d.Addr, err)
	}
	data, err := cmd.Wait()
	if err != nil {
		d.t.Fatalf("peers: APPEND to %s: %v", d.Addr, err)
	}
	if err := c.Logout().Wait(); err != nil {
		d.t.Fatalf("peers: LOGOUT from %s: %v", d.Addr, err)
	}
	return data.UIDValidity, data.UID
}

// DovecotPair is two Dovecot instances with the same user, A and B, whose
// mailboxes are kept equal by dsync on demand, like a replicated pair.
type DovecotPair struct {
	A, B *Dovecot
}

// StartDovecotPair starts two instances with the same user and password
// and makes B a copy of A, so both start with the same mailbox GUIDs and
// UIDVALIDITY values.
func StartDovecotPair(t testing.TB, opts DovecotOptions) *DovecotPair {
	t.Helper()
	a := StartDovecot(t, opts)
	opts.User, opts.Password = a.User, a.Password
	b := StartDovecot(t, opts)
	p := &DovecotPair{A: a, B: b}
	// Open A's INBOX so that it has its GUID and UIDVALIDITY, then copy it
	// to B: a mailbox created on each side independently would be two
	// different mailboxes to dsync.
	a.Doveadm("mailbox", "status", "-u", a.User, "guid", "INBOX")
	p.Backup()
	return p
}

// Sync runs a two-way dsync between A and B (`doveadm sync` from A to B's
// doveadm server) and returns when it is complete: afterwards both hold the
// same messages with the same UIDs and UIDVALIDITY. What only one side had
// is copied to the other; when both gave the same UID to different
// messages, dsync gives both messages new UIDs.
func (p *DovecotPair) Sync() {
	p.A.t.Helper()
	p.dsync("sync")
}

// Backup makes B an exact copy of A (`doveadm backup`): messages and
// mailboxes that only B has are deleted.
func (p *DovecotPair) Backup() {
	p.A.t.Helper()
	p.dsync("backup")
}

// dsync runs doveadm sync or backup from A to B. Exit code 2 means that
// mailboxes changed during the run and dsync asks to be run again
// (doveadm-sync(1)); it is retried a few times.
func (p *DovecotPair) dsync(verb string) {
	p.A.t.Helper()
	var err error
	for range 3 {
		_, err = p.A.doveadmRun(nil, verb, "-u", p.A.User, "tcp:"+p.B.DoveadmAddr)
		var ee *exec.ExitError
		if err == nil || !errors.As(err, &ee) || ee.ExitCode() != 2 {
			break
		}
	}
	if err != nil {
		p.A.t.Fatal(err)
	}
}
