package jetstream_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/jetstream"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// A sender process: a store on the shared stream and a runner leasing from
// it. Any number of processes on any number of machines can do the same
// with the same Options.
func ExampleNew() {
	// In production: nats.Connect with every server's URL of a three-node
	// cluster running with "sync_interval: always", and the default
	// Options (three replicas). This example embeds one server.
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	srv, err := server.NewServer(&server.Options{JetStream: true, StoreDir: dir, SyncAlways: true, DontListen: true, NoLog: true, NoSigs: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	go srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		fmt.Println("server not ready")
		return
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()

	store, err := jetstream.New(nc, &jetstream.Options{Replicas: 1})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	// Open checks the server and the stream at start-up.
	if err := store.Open(ctx); err != nil {
		fmt.Println(err)
		return
	}

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

	// Enqueue returns once the servers stored the message.
	if _, err := store.Enqueue(ctx, &queue.Message{
		Key:      "order-4711-confirmation",
		Envelope: queue.Envelope{From: "shop@example.org", Recipients: []queue.Recipient{{Address: "customer@example.net"}}},
		Body:     strings.NewReader("From: shop@example.org\r\nSubject: Your order\r\n\r\nThanks!\r\n"),
	}); err != nil {
		fmt.Println(err)
		return
	}
	if err := runner.Run(ctx); err != nil {
		fmt.Println(err)
	}
	// Output: delivering to customer@example.net
}
