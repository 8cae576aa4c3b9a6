package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	binDir    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// relaydBinary builds relayd once for the tests that run it as a process.
func relaydBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "relayd-test")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "relayd")
		goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goTool); err != nil {
			goTool = "go"
		}
		args := []string{"build", "-o", binPath}
		if raceBuild {
			args = append(args, "-race")
		}
		out, err := exec.Command(goTool, append(args, ".")...).CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out) + err.Error())
		}
	})
	if buildErr != nil {
		t.Fatalf("building relayd: %v", buildErr)
	}
	return binPath
}

// process is relayd running as a child process.
type process struct {
	t              *testing.T
	cmd            *exec.Cmd
	stdout, stderr *lineLog
	smtp           string
	done           chan struct{}
	exit           int
}

func startProcess(t *testing.T, args []string) *process {
	t.Helper()
	p := &process{t: t, stdout: newLineLog(), stderr: newLineLog(), done: make(chan struct{})}
	p.cmd = exec.Command(relaydBinary(t), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		p.exit = 0
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			p.exit = ee.ExitCode() // -1 when killed by a signal
		}
		p.stdout.Write([]byte("relayd exited\n"))
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("relayd (pid %d) log:\n%s", p.cmd.Process.Pid, p.stderr.String())
		}
	})
	p.smtp = p.stdout.wait(t, smtpAddrRE, 60*time.Second)
	return p
}

// signal sends sig and waits for the process to end; it returns the exit
// status (-1 when the signal killed it).
func (p *process) signal(sig os.Signal, timeout time.Duration) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	return p.wait(timeout)
}

func (p *process) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.exit
	case <-time.After(timeout):
		p.t.Fatalf("relayd still running %v after the signal; log:\n%s", timeout, p.stderr.String())
		return 0
	}
}

// TestCrashAfterAcknowledgement: relayd answers 250 while the next hop is
// down, is killed with SIGKILL, restarts on the same queue once the next hop
// is up, and delivers the message exactly once.
func TestCrashAfterAcknowledgement(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	hopAddr := hop.Addr()
	if err := hop.Stop(); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t)
	args := f.args(hopAddr, "-http-listen", "")

	p := startProcess(t, args)
	reply, err := submit(p.smtp, f.clientTLS, "alice@example.org", []string{"bob@example.net"}, message("survives a crash"))
	if err != nil || !strings.Contains(reply, "queued as") {
		t.Fatalf("submission: %q, %v", reply, err)
	}
	if code := p.signal(syscall.SIGKILL, 30*time.Second); code != -1 {
		t.Fatalf("relayd exit %d, want killed", code)
	}
	if n := len(hop.Messages()); n != 0 {
		t.Fatalf("%d messages at a stopped next hop", n)
	}

	if err := hop.Start(); err != nil {
		t.Fatal(err)
	}
	p2 := startProcess(t, args)
	msgs := waitMessages(t, hop, 1, 45*time.Second)
	if !strings.Contains(string(msgs[0].Body), "Subject: survives a crash") || msgs[0].From != "alice@example.org" {
		t.Errorf("delivered after the restart: %q from %q", msgs[0].Body, msgs[0].From)
	}
	// A graceful stop lets the runner record the delivery; after it,
	// nothing can be delivered again, so the count is final.
	if code := p2.signal(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}
	if n := len(hop.Messages()); n != 1 {
		t.Errorf("the message arrived %d times, want exactly once", n)
	}
}

// TestGracefulShutdown: SIGTERM while one client is in the middle of a
// message and another is idle. The idle one is disconnected, the message in
// progress is acknowledged, relayd exits 0, and every acknowledged message
// arrives (after a restart for those still queued).
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	hop := nextHop(t)
	f := newFixture(t)
	args := f.args(hop.Addr(), "-http-listen", "")
	p := startProcess(t, args)

	subjects := []string{"one", "two", "three"}
	for _, s := range subjects[:2] {
		if _, err := submit(p.smtp, f.clientTLS, "alice@example.org", []string{"bob@example.net"}, message(s)); err != nil {
			t.Fatalf("submitting %q: %v", s, err)
		}
	}

	// SIGHUP reloads the users file: a new account can submit at once.
	if _, err := submitAs(p.smtp, f.clientTLS, "bob", "bob's pw", "bob@example.org", []string{"carol@example.net"}, message("three")); err == nil {
		t.Fatal("an account not in the users file could submit")
	}
	h, err := bcrypt.GenerateFromPassword([]byte("bob's pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users, _ := os.ReadFile(f.usersFile)
	if err := os.WriteFile(f.usersFile, append(users, "bob:"+string(h)+"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.stderr.wait(t, regexpQuote("users reloaded"), 30*time.Second)
	if _, err := submitAs(p.smtp, f.clientTLS, "bob", "bob's pw", "bob@example.org", []string{"carol@example.net"}, message("three")); err != nil {
		t.Fatalf("the account added before SIGHUP cannot submit: %v", err)
	}

	idle := dialRaw(t, p.smtp)
	if code, _ := idle.cmd("EHLO idle.example.test"); code != 250 {
		t.Fatalf("EHLO: %d", code)
	}

	c, err := smtp.DialStartTLS(p.smtp, f.clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
	if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@example.net", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	msg := message("in flight")
	half := len(msg) / 2
	if _, err := io.WriteString(w, msg[:half]); err != nil {
		t.Fatal(err)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.stderr.wait(t, regexpQuote("shutting down"), 30*time.Second)

	// The idle connection is ended with a 421.
	if rest, err := idle.readToEOF(); !isClosed(err) || !strings.HasPrefix(rest, "421 ") {
		t.Errorf("idle connection: %q, %v; want a 421 and the end", rest, err)
	}
	// The message in progress is taken.
	if _, err := io.WriteString(w, msg[half:]); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil || !strings.Contains(resp.StatusText, "queued as") {
		t.Fatalf("message in progress at SIGTERM: %v, %v; want 250", resp, err)
	}
	c.Close()
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}

	// Whatever was not delivered before the exit is still queued.
	p2 := startProcess(t, args)
	msgs := waitMessages(t, hop, 4, 45*time.Second)
	if code := p2.signal(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Errorf("second exit %d, want 0", code)
	}
	seen := map[string]int{}
	for _, m := range hop.Messages() {
		for _, s := range append(subjects, "in flight") {
			if strings.Contains(string(m.Body), "Subject: "+s+"\r\n") {
				seen[s]++
			}
		}
	}
	for _, s := range append(subjects, "in flight") {
		if seen[s] != 1 {
			t.Errorf("message %q arrived %d times, want once (%d messages in all)", s, seen[s], len(msgs))
		}
	}
}
