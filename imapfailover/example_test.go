package imapfailover_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/hamail/hamail/imapfailover"
	"github.com/hamail/hamail/internal/imaptest"
)

// Watch hands each new message to the handler once, here across the death
// of the replica it was reading from. Two in-process replicas stand in
// for real servers.
func ExampleMailbox_Watch() {
	set, err := imaptest.Start(&imaptest.Options{Replicas: 2})
	if err != nil {
		log.Fatal(err)
	}
	defer set.Close()
	order := func(n int) []byte {
		return fmt.Appendf(nil, "From: shop@example.org\r\nSubject: order %d\r\nMessage-ID: <order-%d@example.org>\r\n\r\nthanks\r\n", n, n)
	}
	if _, err := set.Append("INBOX", order(1), nil); err != nil {
		log.Fatal(err)
	}

	var replicas []imapfailover.Replica
	for i, r := range set.Replicas() {
		replicas = append(replicas, imapfailover.Replica{
			Name: r.Name(), Addr: r.Addr(), Priority: i,
			TLS:      imapfailover.TLSNone, // loopback only; use TLSImplicit or TLSStartTLS otherwise
			Username: set.Username(), Password: set.Password(),
		})
	}
	pool, err := imapfailover.New(&imapfailover.Options{Replicas: replicas})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	// The state file makes delivery exactly-once across restarts too.
	dir, err := os.MkdirTemp("", "mailwatch")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	mb := pool.Mailbox("INBOX", &imapfailover.MailboxOptions{
		Store:           imapfailover.NewFileStore(dir),
		DeliverExisting: true,
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = mb.Watch(ctx, func(ctx context.Context, msg *imapfailover.Message) error {
		fmt.Printf("%s from %s\n", msg.Envelope.Subject, msg.Replica)
		switch msg.Envelope.Subject {
		case "order 1":
			// The replica being read dies; a message arrives on the other.
			if err := set.Replica(0).Stop(); err != nil {
				return err
			}
			_, err := set.Append("INBOX", order(2), nil)
			return err
		default:
			cancel()
			return nil
		}
	})
	if !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
	// Output:
	// order 1 from imap1
	// order 2 from imap2
}
