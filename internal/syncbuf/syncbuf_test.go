package syncbuf

import (
	"bytes"
	"strings"
	"sync"
	"testing"
)

const (
	writers = 8
	lines   = 200
	line    = "250 2.0.0 queued as 0123456789abcdef\r\n"
)

// writeConcurrently has several goroutines write whole lines to w.
func writeConcurrently(t *testing.T, w interface{ Write([]byte) (int, error) }) {
	t.Helper()
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range lines {
				if n, err := w.Write([]byte(line)); n != len(line) || err != nil {
					t.Errorf("Write = %d, %v", n, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func checkLines(t *testing.T, got string) {
	t.Helper()
	if want := strings.Repeat(line, writers*lines); got != want {
		t.Fatalf("got %d bytes, want %d whole lines (%d bytes)", len(got), writers*lines, len(want))
	}
}

func TestBufferConcurrentWritesAndReads(t *testing.T) {
	t.Parallel()
	var b Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range lines {
			if s := b.String(); len(s)%len(line) != 0 {
				t.Errorf("read a partial line: %d bytes", len(s))
				return
			}
		}
	}()
	writeConcurrently(t, &b)
	<-done
	checkLines(t, b.String())
}

// notSafe fails a write that overlaps another: bytes.Buffer alone would
// corrupt its contents instead.
type notSafe struct {
	busy sync.Mutex
	b    bytes.Buffer
	t    *testing.T
}

func (n *notSafe) Write(p []byte) (int, error) {
	if !n.busy.TryLock() {
		n.t.Error("two writes reached the underlying writer at once")
		return 0, nil
	}
	defer n.busy.Unlock()
	return n.b.Write(p)
}

func TestWriterSerialises(t *testing.T) {
	t.Parallel()
	dst := &notSafe{t: t}
	writeConcurrently(t, NewWriter(dst))
	checkLines(t, dst.b.String())
}
