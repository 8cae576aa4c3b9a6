package syncbuf_test

import (
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/hamail/hamail/internal/syncbuf"
)

// A logger used from several goroutines writes into a Buffer that is read
// while they may still run.
func ExampleBuffer() {
	var out syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { log.Info("delivered", "relay", "mx1.example.org") })
	}
	wg.Wait()
	fmt.Print(out.String())
	// Output:
	// level=INFO msg=delivered relay=mx1.example.org
	// level=INFO msg=delivered relay=mx1.example.org
}

// Records written to a shared stream through a Writer come out whole.
func ExampleNewWriter() {
	w := syncbuf.NewWriter(os.Stdout)
	fmt.Fprintln(w, "250 2.0.0 OK")
	// Output: 250 2.0.0 OK
}
