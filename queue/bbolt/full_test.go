//go:build linux

package bbolt_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
)

// The full-disk test runs this test binary as a child whose files may not
// grow past fullLimit (RLIMIT_FSIZE): its writes then fail as on a full
// disk, without filling a real one.
const (
	fullEnv   = "HAMAIL_QUEUE_FULL_CHILD"
	fullLimit = 3 << 20
)

func fullBody(key string) string {
	return "Subject: " + key + "\r\n\r\n" + strings.Repeat(key+"\r\n", 16<<10/(len(key)+2))
}

// fullChild enqueues until the file size limit stops it, printing "E id
// key" for each Enqueue that returned nil and "F full? error" for each
// that failed.
func fullChild(dir string) {
	signal.Ignore(syscall.SIGXFSZ) // the write fails with EFBIG instead
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	lim.Cur = fullLimit
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s, err := bbolt.Open(filepath.Join(dir, "queue.db"), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx := context.Background()
	var out sync.Mutex
	report := func(id, key string, err error) {
		out.Lock()
		defer out.Unlock()
		if err != nil {
			fmt.Printf("F %v %s\n", errors.Is(err, queue.ErrStorageFull), strings.ReplaceAll(err.Error(), "\n", " "))
			return
		}
		fmt.Printf("E %s %s\n", id, key)
	}
	// A body too large for the limit fails while its spool file is written.
	_, err = s.Enqueue(ctx, &queue.Message{Key: "big", Envelope: queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: "bob@example.net"}}},
		Body: strings.NewReader(strings.Repeat("x", fullLimit+1))})
	report("", "big", err)
	var wg sync.WaitGroup
	for p := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				key := fmt.Sprintf("p%d-%d", p, i)
				id, err := s.Enqueue(ctx, &queue.Message{Key: key, Envelope: queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: "bob@example.net"}}},
					Body: strings.NewReader(fullBody(key))})
				report(id, key, err)
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}

// TestFullDisk checks that when the file system refuses to let the
// database grow, Enqueue fails with ErrStorageFull and a clear reason, and
// that nothing of the failed enqueues is stored while everything before is
// intact.
func TestFullDisk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fullEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]string{}
	var failures []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		switch {
		case len(f) == 3 && f[0] == "E":
			acked[f[1]] = f[2]
		case len(f) == 3 && f[0] == "F":
			if f[1] != "true" {
				t.Errorf("Enqueue failed with %q, want ErrStorageFull", f[2])
			}
			failures = append(failures, f[2])
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	if len(failures) < 2 || len(acked) < 50 {
		t.Fatalf("%d enqueues acknowledged and %d failed under a %d-octet file size limit", len(acked), len(failures), fullLimit)
	}
	t.Logf("%d enqueues acknowledged before the limit; first failures: %q, %q", len(acked), failures[0], failures[1])

	// Without the limit: every acknowledged message is there and intact,
	// nothing else is, and the queue works again.
	s := open(t, filepath.Join(dir, "queue.db"), nil)
	bg := context.Background()
	st, err := s.Stats(bg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Items != len(acked) || st.Quarantined != 0 {
		t.Errorf("stats %+v, want %d items and none quarantined", st, len(acked))
	}
	for id, key := range acked {
		it, err := s.Inspect(bg, id)
		if err != nil {
			t.Errorf("acknowledged message %s (%s): %v", id, key, err)
			continue
		}
		if it.Key != key || readBody(t, s, id) != fullBody(key) {
			t.Errorf("message %s damaged", id)
		}
	}
	if spooled, err := os.ReadDir(filepath.Join(dir, "queue.db.spool")); err != nil || len(spooled) != 0 {
		t.Errorf("spool files left by the failed enqueue: %v %v", spooled, err)
	}
	if _, err := s.Enqueue(bg, msg("bob@example.net", "after")); err != nil {
		t.Errorf("Enqueue with room again: %v", err)
	}
}
