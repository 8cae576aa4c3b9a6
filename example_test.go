package hamail_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/hamail/hamail"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/smtpclient"
)

// A Mailer with two relays in two tiers and its queue in a directory:
// Send returns once the message is on disk, and the runner delivers it.
func ExampleOpen() {
	relay := startRelay() // a smarthost; here an in-process test server
	defer relay.Stop()
	dir, err := os.MkdirTemp("", "hamail-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	mailer, err := hamail.Open(&hamail.Options{
		Relays: []smtpclient.Relay{
			{Name: "relay-a", Addr: relay.Addr(), Priority: 10},
			{Name: "relay-b", Addr: "127.0.0.1:1", Priority: 20}, // backup tier
		},
		Dir: dir, // the queue: dir/queue.db
		Runner: &queue.RunnerOptions{
			Schedule: queue.Retry{MaxLifetime: 24 * time.Hour}, // give up after a day
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, err := mailer.Send(ctx, &hamail.Message{
		From: "shop@example.org",
		To:   []string{"customer@example.com"},
		Body: strings.NewReader("From: shop@example.org\nTo: customer@example.com\nSubject: Your order\n\nThanks!\n"),
		Key:  "order-4711-confirmation", // sending it again is a no-op while it is queued
	})
	if err != nil {
		log.Fatal(err) // a *hamail.MessageError for bad input: nothing was stored
	}
	fmt.Println("queued:", id != "")

	msgs, err := relay.WaitMessages(ctx, 1)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("relay-a received mail for", msgs[0].Rcpts[0].Addr)

	// Stop taking mail, let the attempts in flight finish (up to the
	// context's end), close the client and the queue.
	if err := mailer.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// queued: true
	// relay-a received mail for customer@example.com
}

// Bad input is refused before anything is stored.
func ExampleMailer_Send_invalid() {
	relay := startRelay()
	defer relay.Stop()
	dir, _ := os.MkdirTemp("", "hamail-example")
	defer os.RemoveAll(dir)
	mailer, err := hamail.Open(&hamail.Options{Relays: []smtpclient.Relay{{Addr: relay.Addr()}}, Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer mailer.Close()

	_, err = mailer.Send(context.Background(), &hamail.Message{
		From: "shop@example.org",
		To:   []string{"customer@example.com>\r\nRCPT TO:<other@example.net"},
		Body: strings.NewReader("Subject: x\r\n\r\nx\r\n"),
	})
	var me *hamail.MessageError
	if errors.As(err, &me) {
		fmt.Println("refused:", me.Field)
	}
	st, _ := mailer.Stats(context.Background())
	fmt.Println("queued:", st.Items)
	// Output:
	// refused: To[0]
	// queued: 0
}

func startRelay() *smtptest.Server {
	s, err := smtptest.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Start(); err != nil {
		log.Fatal(err)
	}
	return s
}
