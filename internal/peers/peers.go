package peers

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/loopback"
	"github.com/hamail/hamail/internal/syncbuf"
)

// RequireEnv is the environment variable that turns a skip for missing
// binaries or privileges into a test failure when set to "1".
const RequireEnv = "HAMAIL_REQUIRE_PEERS"

// startTimeout bounds how long a server may take to greet after start.
const startTimeout = 30 * time.Second

// stopTimeout bounds how long a server may take to exit after being asked.
const stopTimeout = 15 * time.Second

// unavailable skips the test, or fails it when RequireEnv is set.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s (required because %s=1)", msg, RequireEnv)
	}
	t.Skipf("%s; install the Debian packages postfix and dovecot-imapd and run as root, or set %s=1 to make this a failure", msg, RequireEnv)
}

// searchDirs are where Debian puts the binaries, in case PATH lacks them
// (a non-root shell often has no /usr/sbin).
var searchDirs = []string{"/usr/sbin", "/usr/bin", "/usr/lib/postfix/sbin", "/sbin", "/bin"}

// lookBinary finds an executable by name in PATH or the usual places.
func lookBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range searchDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("peers: %s not found in PATH or %s", name, strings.Join(searchDirs, ", "))
}

// need returns the path of each named binary, or skips/fails the test.
func need(t testing.TB, pkg string, names ...string) []string {
	t.Helper()
	paths := make([]string, len(names))
	for i, n := range names {
		p, err := lookBinary(n)
		if err != nil {
			unavailable(t, "%s: %s not installed (%v)", pkg, n, err)
		}
		paths[i] = p
	}
	if os.Geteuid() != 0 {
		unavailable(t, "%s: starting a private instance needs root", pkg)
	}
	return paths
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// outside the kernel's ephemeral range (internal/loopback), so that no
// outgoing connection takes it while a server that was stopped is started
// again on it. A server started on it can still lose a race with another
// process; callers retry with a new port when the server fails to listen.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := loopback.Listen("tcp", "127.0.0.1")
	if err != nil {
		t.Fatalf("peers: find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// makeDir creates a private directory that the servers' unprivileged users
// can traverse (t.TempDir is 0700 and owned by root), removed at cleanup.
func makeDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("peers: remove %s: %v", dir, err)
		}
	})
	return dir
}

// process is a server started in its own process group, so that stopping
// it can make sure nothing it started is left behind.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd.Wait returns
	err  error         // cmd.Wait's result, read after done
}

func startProcess(log *syncbuf.Buffer, name string, args ...string) (*process, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A child that keeps the output pipe open must not hang Wait.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit, up to d. After it returns true, the
// whole process group is killed so that no straggler survives.
func (p *process) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		p.killGroup()
		return true
	case <-t.C:
		return false
	}
}

// killGroup sends SIGKILL to every process left in the group.
func (p *process) killGroup() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// kill ends the group by force and waits for the leader.
func (p *process) kill() {
	p.killGroup()
	p.wait(stopTimeout)
}

// waitGreeting dials addr until a line starting with prefix arrives, the
// process exits, or the start timeout passes.
func waitGreeting(addr, prefix string, proc *process) error {
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		if proc.exited() {
			return fmt.Errorf("server exited before greeting on %s: %v", addr, proc.err)
		}
		line, err := readGreeting(addr)
		if err == nil {
			if strings.HasPrefix(line, prefix) {
				return nil
			}
			return fmt.Errorf("unexpected greeting on %s: %q", addr, line)
		}
		last = err
		time.Sleep(20 * time.Millisecond) // poll interval while the server starts
	}
	return fmt.Errorf("no greeting on %s within %v: %v", addr, startTimeout, last)
}

func readGreeting(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// listenFailed reports whether a server's log says its port was taken.
func listenFailed(log string) bool {
	return strings.Contains(log, "Address already in use") || strings.Contains(log, "address already in use")
}

var errExited = errors.New("peers: server exited")
