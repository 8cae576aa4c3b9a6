package hamail

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/smtpclient"
)

const (
	crashDirEnv   = "HAMAIL_TEST_CRASH_DIR"
	crashRelayEnv = "HAMAIL_TEST_CRASH_RELAY"
)

// TestCrashHelper is the process that TestCrashRestart kills: it queues
// three messages, says so, and waits to be killed. It does nothing in a
// normal test run.
func TestCrashHelper(t *testing.T) {
	dir, relay := os.Getenv(crashDirEnv), os.Getenv(crashRelayEnv)
	if dir == "" {
		return
	}
	ro := testRunner()
	ro.AttemptTimeout, ro.LeaseDuration = time.Second, 2*time.Second
	m, err := Open(&Options{Relays: []smtpclient.Relay{{Name: "relay", Addr: relay}}, SMTP: testSMTP(), Dir: dir, Runner: ro})
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	for i := range 3 {
		id, err := m.Send(t.Context(), &Message{From: "app@example.org", To: []string{"bob@example.com"},
			Body: strings.NewReader(fmt.Sprintf("Message-ID: <%d.crash@example.org>\nSubject: %d\n\nx\n", i, i))})
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		fmt.Println("queued", id)
	}
	time.Sleep(time.Minute) // killed long before
}

// TestCrashRestart: a process that queued mail is killed with SIGKILL
// while its runner is retrying; a new process on the same directory
// delivers every message it had queued.
func TestCrashRestart(t *testing.T) {
	t.Parallel()
	relay := smtptest.NewServer(t, nil)
	relay.Stop() // the first process can only defer
	dir := t.TempDir()
	cmd := exec.CommandContext(waitCtx(t), os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashRelayEnv+"="+relay.Addr())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var ids []string
	for len(ids) < 3 && sc.Scan() {
		line := sc.Text()
		if id, ok := strings.CutPrefix(line, "queued "); ok {
			ids = append(ids, id)
		} else if strings.HasPrefix(line, "error:") {
			t.Fatal(line)
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if len(ids) != 3 {
		t.Fatalf("the helper queued %d messages before dying", len(ids))
	}

	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	m := open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Dir: dir, Runner: testRunner()})
	msgs, err := relay.WaitMessages(waitCtx(t), 3)
	if err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, m.Store())
	seen := map[string]bool{}
	for _, msg := range msgs {
		for _, line := range strings.Split(string(msg.Body), "\r\n") {
			if v, ok := strings.CutPrefix(line, "Message-ID: "); ok {
				seen[v] = true
			}
		}
	}
	for i := range 3 {
		if mid := fmt.Sprintf("<%d.crash@example.org>", i); !seen[mid] {
			t.Errorf("%s lost in the crash", mid)
		}
	}
}
