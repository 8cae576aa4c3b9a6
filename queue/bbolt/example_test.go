package bbolt_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
)

func ExampleOpen() {
	dir, _ := os.MkdirTemp("", "queue")
	defer os.RemoveAll(dir)

	store, err := bbolt.Open(filepath.Join(dir, "queue.db"), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	// Once Enqueue returns, the message is on disk (fsynced).
	id, err := store.Enqueue(context.Background(), &queue.Message{
		Envelope: queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: "bob@example.net"}}},
		Body:     strings.NewReader("Subject: hello\r\n\r\nHi Bob.\r\n"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	store.Close()

	// After a restart it is still there; a Runner would now deliver it.
	store, err = bbolt.Open(filepath.Join(dir, "queue.db"), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	it, err := store.Inspect(context.Background(), id)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(it.Envelope.Recipients[0].Address, it.Recipients[0].Status)
	// Output: bob@example.net pending
}
