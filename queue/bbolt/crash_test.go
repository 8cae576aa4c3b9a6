package bbolt_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
)

// The crash test re-runs this test binary as a child that enqueues and
// delivers until it is killed; TestMain sends the child to crashChild.
const crashEnv = "HAMAIL_QUEUE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir)
		os.Exit(0)
	}
	if dir := os.Getenv(fullEnv); dir != "" {
		fullChild(dir)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const (
	crashConcurrency = 8
	crashProducers   = 8
)

func crashOptions() *bbolt.Options { return &bbolt.Options{InlineBodyMax: 2048} }

// crashBody is the body for a key: its size varies so that some bodies are
// inline and some spooled, and its content can be checked after a crash.
func crashBody(key string) string {
	n := 200 + keyHash(key)%6000
	line := "Subject: " + key + "\r\n\r\n"
	return line + strings.Repeat(key+".", n/(len(key)+1))
}

func keyHash(key string) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() >> 1)
}

// refused reports whether the remote server refuses the message of key
// for good, so that its failure notice must come back to the sender.
func refused(key string) bool { return keyHash(key)%11 == 0 }

var (
	subjectRe   = regexp.MustCompile(`(?m)^Subject: (\S+)\r$`)
	dsnOfRe     = regexp.MustCompile(`(?m)^Message-ID: <([0-9a-v]{20})\.failure\.`)
	crashReject = queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}
)

// deliveryLog appends delivered IDs to a file, each fsynced before the
// delivery counts, as a remote server's own queue would have it.
type deliveryLog struct {
	mu sync.Mutex
	f  *os.File
}

func openDeliveryLog(dir string) (*deliveryLog, error) {
	f, err := os.OpenFile(filepath.Join(dir, "delivered.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return &deliveryLog{f: f}, nil
}

func (l *deliveryLog) Deliver(ctx context.Context, d *queue.Delivery) ([]queue.RecipientResult, error) {
	body, err := io.ReadAll(queue.NewBodyReader(d.Body))
	if err != nil {
		return nil, err
	}
	res := make([]queue.RecipientResult, len(d.Recipients))
	line := fmt.Sprintf("%s %d\n", d.ID, len(body))
	if d.Envelope.From == "" {
		// A failure notice: logged under the ID of the message it is about.
		m := dsnOfRe.FindSubmatch(body)
		if m == nil {
			return nil, fmt.Errorf("notice %s names no message", d.ID)
		}
		line = fmt.Sprintf("N %s %d\n", m[1], len(body))
	} else if m := subjectRe.FindSubmatch(body); m != nil && refused(string(m[1])) {
		for i := range res {
			res[i] = queue.RecipientResult{Outcome: queue.OutcomePermanent, Reply: crashReject}
		}
		return res, nil
	}
	if rand.IntN(5) == 0 {
		// Some temporary failures, so that records are rewritten too.
		for i := range res {
			res[i] = queue.RecipientResult{Outcome: queue.OutcomeTemporary, Reply: queue.Reply{Code: 451, Text: "later"}}
		}
		return res, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.f.WriteString(line); err != nil {
		return nil, err
	}
	if err := l.f.Sync(); err != nil {
		return nil, err
	}
	for i := range res {
		res[i] = queue.RecipientResult{Outcome: queue.OutcomeDelivered, Reply: queue.Reply{Code: 250, Text: "OK"}}
	}
	return res, nil
}

func crashRunnerOptions() *queue.RunnerOptions {
	return &queue.RunnerOptions{
		Concurrency:    crashConcurrency,
		AttemptTimeout: 500 * time.Millisecond,
		LeaseDuration:  time.Second,
		Schedule:       queue.Retry{MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Jitter: -1},
		// A notice owed when the process died is handed over when the
		// item comes due again, after NoticeRetry.
		NoticeRetry:  200 * time.Millisecond,
		ReportingMTA: "mta.example.org",
	}
}

// crashChild enqueues and delivers until it is killed (or for 20 s at
// most), printing "E id key" once each Enqueue has returned.
func crashChild(dir string) {
	s, err := bbolt.Open(filepath.Join(dir, "queue.db"), crashOptions())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	dl, err := openDeliveryLog(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go queue.NewRunner(s, dl, crashRunnerOptions()).Run(ctx)
	round := os.Getenv(crashEnv + "_ROUND")
	var out sync.Mutex
	var wg sync.WaitGroup
	for p := range crashProducers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("r%s-p%d-%d", round, p, i)
				id, err := s.Enqueue(ctx, &queue.Message{
					Key:      key,
					Envelope: queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: "bob@example.net"}}},
					Body:     strings.NewReader(crashBody(key)),
				})
				if err != nil {
					continue
				}
				out.Lock()
				fmt.Fprintf(os.Stdout, "E %s %s\n", id, key)
				out.Unlock()
			}
		})
	}
	wg.Wait()
}

// readDelivered returns how many times each message was delivered, and
// how many failure notices about each came back to the sender.
func readDelivered(t *testing.T, dir string) (delivered, noticed map[string]int) {
	t.Helper()
	p, err := os.ReadFile(filepath.Join(dir, "delivered.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	delivered, noticed = map[string]int{}, map[string]int{}
	for line := range strings.SplitSeq(string(p), "\n") {
		// A torn last line has no length field.
		switch f := strings.Fields(line); {
		case len(f) == 2:
			delivered[f[0]]++
		case len(f) == 3 && f[0] == "N":
			noticed[f[1]]++
		}
	}
	return delivered, noticed
}

// TestCrashRecovery kills a process that enqueues and delivers with
// SIGKILL at random points, several times, and checks after each restart
// that every message whose Enqueue returned is still queued, intact, or
// was delivered — or, for the messages the server refuses, that the
// failure notice was queued or delivered to the sender — and, at the end,
// that duplicate deliveries and notices stay within what was in flight at
// the crashes.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	acked := map[string]string{} // id → key
	const rounds = 6
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir, fmt.Sprintf("%s_ROUND=%d", crashEnv, round))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1<<16)
		go func() {
			defer close(lines)
			br := bufio.NewReader(stdout)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return // a torn last line was never acknowledged
				}
				lines <- line
			}
		}()
		// Kill after a random number of acknowledged enqueues.
		target := 50 + rand.IntN(400)
		deadline := time.NewTimer(15 * time.Second)
		n := 0
	wait:
		for n < target {
			select {
			case line, ok := <-lines:
				if !ok {
					break wait
				}
				n++
				record(acked, line)
			case <-deadline.C:
				t.Errorf("round %d: only %d enqueues acknowledged in 15 s", round, n)
				break wait
			}
		}
		deadline.Stop()
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		for line := range lines {
			record(acked, line)
		}
		verifyAfterCrash(t, dir, acked, round)
	}

	// Restart once more and deliver everything.
	s, err := bbolt.Open(filepath.Join(dir, "queue.db"), crashOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dl, err := openDeliveryLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer dl.f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	drain := crashRunnerOptions()
	drain.Concurrency = 64
	go func() { done <- queue.NewRunner(s, dl, drain).Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := s.Stats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Items == 0 {
			break
		}
		if time.Now().After(deadline) {
			left, _ := s.List(context.Background(), "", 10)
			for _, it := range left {
				t.Logf("left: %s key %q from %q attempts %d next %v last error %q recipients %+v", it.ID, it.Key, it.Envelope.From, it.Attempts, it.NextAttempt, it.LastError, it.Recipients)
			}
			t.Fatalf("queue not drained in 30 s: %+v", st)
		}
		waitChange(s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	delivered, noticed := readDelivered(t, dir)
	dups, refusals := 0, 0
	for id, key := range acked {
		if refused(key) {
			// Refused for good: never delivered, and the failure notice
			// reached the sender.
			refusals++
			if delivered[id] != 0 {
				t.Errorf("refused message %s (%s) counted as delivered", id, key)
			}
			switch c := noticed[id]; {
			case c == 0:
				t.Errorf("message %s (%s) refused and no failure notice reached the sender", id, key)
			case c > 1:
				dups += c - 1
			}
			continue
		}
		switch c := delivered[id]; {
		case c == 0:
			t.Errorf("message %s (%s) acknowledged and never delivered", id, key)
		case c > 1:
			dups += c - 1
		}
	}
	t.Logf("%d rounds, %d acknowledged enqueues (%d refused by the server), %d delivered, %d notices, %d duplicates", rounds, len(acked), refusals, len(delivered), len(noticed), dups)
	// A crash can repeat at most the attempts (deliveries or notices) that
	// were in flight.
	if limit := rounds * crashConcurrency; dups > limit {
		t.Errorf("%d duplicate deliveries, more than the %d attempts that can be in flight at %d crashes", dups, limit, rounds)
	}
}

func record(acked map[string]string, line string) {
	if f := strings.Fields(line); len(f) == 3 && f[0] == "E" {
		acked[f[1]] = f[2]
	}
}

// waitChange waits for the store to change, or 100 ms.
func waitChange(s *bbolt.Store) {
	_, _, ch, err := s.NextDue(context.Background())
	if err != nil {
		return
	}
	t := time.NewTimer(100 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

func verifyAfterCrash(t *testing.T, dir string, acked map[string]string, round int) {
	t.Helper()
	s, err := bbolt.Open(filepath.Join(dir, "queue.db"), crashOptions())
	if err != nil {
		t.Fatalf("round %d: reopening after SIGKILL: %v", round, err)
	}
	defer s.Close()
	ctx := context.Background()
	queued, err := s.List(ctx, "", 0)
	if err != nil {
		t.Errorf("round %d: List after crash: %v", round, err)
	}
	keys := map[string]bool{}
	for _, it := range queued {
		keys[it.Key] = true
	}
	delivered, noticed := readDelivered(t, dir)
	present := 0
	for id, key := range acked {
		it, err := s.Inspect(ctx, id)
		if errors.Is(err, queue.ErrNotFound) {
			// Gone: delivered, or refused with its notice delivered or
			// queued (under the key the runner gives it).
			if delivered[id] == 0 && !(refused(key) && (noticed[id] > 0 || keys["dsn:"+id+":failure:0"])) {
				t.Errorf("round %d: message %s (%s) lost: not queued, not delivered, no notice", round, id, key)
			}
			continue
		}
		if err != nil {
			t.Errorf("round %d: message %s: %v", round, id, err)
			continue
		}
		present++
		if it.Key != key {
			t.Errorf("round %d: message %s has key %q, want %q", round, id, it.Key, key)
		}
		if got := readBody(t, s, id); got != crashBody(key) {
			t.Errorf("round %d: body of %s damaged (%d octets)", round, id, len(got))
		}
	}
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Quarantined != 0 {
		t.Errorf("round %d: %d records quarantined after a crash", round, st.Quarantined)
	}
	spooled, _ := os.ReadDir(filepath.Join(dir, "queue.db.spool"))
	if len(spooled) > st.Items {
		t.Errorf("round %d: %d spool files for %d items", round, len(spooled), st.Items)
	}
	t.Logf("round %d: %d acknowledged so far, %d queued, %d delivered", round, len(acked), present, len(delivered))
}
