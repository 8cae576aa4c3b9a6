package queue_test

import (
	"context"
	"fmt"
	"strings"
	"time"

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

func ExampleRetry() {
	// Postfix's defaults, without jitter so that the output is fixed.
	sched := queue.Retry{Jitter: -1}
	created := time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC)
	now := created
	for range 8 {
		next, ok := sched.Next(created, now)
		if !ok {
			break
		}
		fmt.Println(next.Sub(now).Round(time.Minute))
		now = next
	}
	// Output:
	// 5m0s
	// 5m0s
	// 10m0s
	// 20m0s
	// 40m0s
	// 1h7m0s
	// 1h7m0s
	// 1h7m0s
}

func ExampleNewDSN() {
	at := time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC)
	n := &queue.Notice{
		Kind:     queue.NoticeFailure,
		ID:       "0123456789abcdefghij",
		Envelope: queue.Envelope{From: "shop@example.org", Ret: queue.RetHeaders},
		Arrival:  at,
		Recipients: []queue.RecipientState{{
			Recipient: queue.Recipient{Address: "nobody@example.net"},
			Status:    queue.StatusFailed,
			Reply:     queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"},
			Host:      "mx1.example.net [192.0.2.1]",
		}},
	}
	original := queue.BytesBody([]byte("From: shop@example.org\r\nSubject: Your order\r\n\r\nThanks!\r\n"))
	dsn, err := queue.NewDSN(n, original, &queue.DSNOptions{ReportingMTA: "mta.example.org", Date: at})
	if err != nil {
		fmt.Println(err)
		return
	}
	// It is enqueued with the null reverse path to shop@example.org; here
	// are its machine-readable fields, then the returned header (RET=HDRS).
	for line := range strings.SplitSeq(string(dsn), "\r\n") {
		for _, f := range []string{"Subject:", "Reporting-MTA:", "Final-Recipient:", "Action:", "Status:", "Diagnostic-Code:"} {
			if strings.HasPrefix(line, f) {
				fmt.Println(line)
			}
		}
	}
	// Output:
	// Subject: Undelivered Mail Returned to Sender
	// Reporting-MTA: dns; mta.example.org
	// Final-Recipient: rfc822; nobody@example.net
	// Action: failed
	// Status: 5.1.1
	// Diagnostic-Code: smtp; 550 5.1.1 no such user
	// Subject: Your order
}
