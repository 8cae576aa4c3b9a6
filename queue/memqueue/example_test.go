package memqueue_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/memqueue"
)

func ExampleNew() {
	// Not durable: for tests and programs whose mail may be lost with
	// the process. queue/bbolt is the durable store.
	store := memqueue.New(nil)
	defer store.Close()
	ctx := context.Background()
	id, err := store.Enqueue(ctx, &queue.Message{
		Envelope: queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: "bob@example.net"}}},
		Body:     strings.NewReader("Subject: hello\r\n\r\nHi Bob.\r\n"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	items, err := store.Lease(ctx, 10, time.Minute)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(len(items), items[0].ID == id)
	if err := store.Complete(ctx, items[0].Lease); err != nil {
		fmt.Println(err)
	}
	st, _ := store.Stats(ctx)
	fmt.Println("left:", st.Items)
	// Output:
	// 1 true
	// left: 0
}
