package queue_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/memqueue"
)

func ExampleRunner() {
	store := memqueue.New(nil) // queue/bbolt for mail that must survive a crash
	defer store.Close()

	ctx, stop := context.WithCancel(context.Background())
	// A Deliverer is normally smtpclient behind a small adapter.
	deliver := queue.DelivererFunc(func(ctx context.Context, d *queue.Delivery) ([]queue.RecipientResult, error) {
		results := make([]queue.RecipientResult, len(d.Recipients))
		for i, r := range d.Recipients {
			fmt.Println("delivering to", r.Address)
			results[i] = queue.RecipientResult{Outcome: queue.OutcomeDelivered, Reply: queue.Reply{Code: 250, Text: "OK"}}
		}
		stop() // one message is enough for this example
		return results, nil
	})
	runner := queue.NewRunner(store, deliver, &queue.RunnerOptions{ReportingMTA: "mta.example.org"})

	_, err := store.Enqueue(ctx, &queue.Message{
		Key: "order-4711-confirmation", // enqueuing it again is a no-op
		Envelope: queue.Envelope{
			From:       "shop@example.org",
			Recipients: []queue.Recipient{{Address: "customer@example.net", Notify: queue.NotifyFailure}},
		},
		Body: strings.NewReader("From: shop@example.org\r\nSubject: Your order\r\n\r\nThanks!\r\n"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := runner.Run(ctx); err != nil {
		fmt.Println(err)
	}
	st, _ := store.Stats(context.Background())
	fmt.Println("left in the queue:", st.Items)
	// Output:
	// delivering to customer@example.net
	// left in the queue: 0
}
