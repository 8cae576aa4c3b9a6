package maildrop_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hamail/hamail/examples/hasend/maildrop"
)

// A submitting command drops the message and exits; the queue's owner picks
// it up and removes the file once its queue holds the message.
func ExampleDir_Drop() {
	dir, _ := os.MkdirTemp("", "maildrop")
	defer os.RemoveAll(dir)
	d, err := maildrop.Open(dir)
	if err != nil {
		panic(err)
	}
	if _, err := d.Drop(maildrop.Envelope{From: "cron@example.org", To: []string{"ops@example.org"}},
		strings.NewReader("Subject: nightly\r\n\r\nok\r\n")); err != nil {
		panic(err)
	}
	n, err := d.Pickup(context.Background(), maildrop.SubmitFunc(func(_ context.Context, key string, env maildrop.Envelope, body io.Reader) error {
		b, _ := io.ReadAll(body)
		fmt.Printf("%s -> %v: %q\n", env.From, env.To, b)
		return nil // a real Submitter returns once its queue made it durable
	}))
	fmt.Println(n, err)
	// Output:
	// cron@example.org -> [ops@example.org]: "Subject: nightly\r\n\r\nok\r\n"
	// 1 <nil>
}
