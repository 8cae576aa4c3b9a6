package imapfailover_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
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

// startExample starts two in-process replicas holding one message and a
// Pool over them.
func startExample() (*imaptest.Set, *imapfailover.Pool) {
	set, err := imaptest.Start(&imaptest.Options{Replicas: 2})
	if err != nil {
		log.Fatal(err)
	}
	msg := "From: shop@example.org\r\nSubject: order 1\r\nMessage-ID: <order-1@example.org>\r\n\r\nthanks\r\n"
	if _, err := set.Append("INBOX", []byte(msg), nil); err != nil {
		log.Fatal(err)
	}
	var replicas []imapfailover.Replica
	for i, r := range set.Replicas() {
		replicas = append(replicas, imapfailover.Replica{
			Name: r.Name(), Addr: r.Addr(), Priority: i, TLS: imapfailover.TLSNone,
			Username: set.Username(), Password: set.Password(),
		})
	}
	pool, err := imapfailover.New(&imapfailover.Options{Replicas: replicas})
	if err != nil {
		log.Fatal(err)
	}
	return set, pool
}

// Sync catches up once: a reader run from cron, say. The first Sync takes
// stock of what is there; later ones hand out what arrived since.
func ExampleMailbox_Sync() {
	set, pool := startExample()
	defer set.Close()
	defer pool.Close()
	mb := pool.Mailbox("INBOX", nil)
	show := func(ctx context.Context, msg *imapfailover.Message) error {
		fmt.Println("new:", msg.Envelope.Subject)
		return nil
	}
	rep, err := mb.Sync(context.Background(), show)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("first sync delivered", rep.Delivered)
	if _, err := set.Append("INBOX", []byte("Subject: order 2\r\n\r\nthanks\r\n"), nil); err != nil {
		log.Fatal(err)
	}
	if _, err := mb.Sync(context.Background(), show); err != nil {
		log.Fatal(err)
	}
	// Output:
	// first sync delivered 0
	// new: order 2
}

// Append stores a message once even when a connection breaks before the
// server's answer; a Message-ID is added when the message has none.
func ExamplePool_Append() {
	set, pool := startExample()
	defer set.Close()
	defer pool.Close()
	res, err := pool.Append(context.Background(), "Sent", []byte("From: alice@example.org\r\nSubject: hello\r\n\r\nhi\r\n"), nil)
	var ie *imap.Error
	if errors.As(err, &ie) {
		// The server refused (no such mailbox): not retried elsewhere.
		fmt.Println("refused:", ie.Type)
	}
	res, err = pool.Append(context.Background(), "INBOX", []byte("From: alice@example.org\r\nSubject: hello\r\n\r\nhi\r\n"), nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Replica, res.UID, strings.HasSuffix(res.MessageID, "@hamail.invalid"))
	// Output:
	// refused: NO
	// imap1 2 true
}

// Do runs an operation on a healthy replica. A read is Repeatable: if the
// connection breaks it runs again on the next replica.
func ExamplePool_Do() {
	set, pool := startExample()
	defer set.Close()
	defer pool.Close()
	err := pool.Do(context.Background(), imapfailover.Repeatable, func(ctx context.Context, c *imapfailover.Conn) error {
		return c.Exec(ctx, "status", func(cl *imapclient.Client) error {
			st, err := cl.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
			if err != nil {
				return err
			}
			fmt.Println(c.Replica(), *st.NumMessages)
			return nil
		})
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: imap1 1
}

// Hooks feed metrics: here, counting connections and failovers.
func ExampleHooks() {
	set, pool := startExample()
	defer set.Close()
	pool.Close()
	var connects, failovers int
	var replicas []imapfailover.Replica
	for i, r := range set.Replicas() {
		replicas = append(replicas, imapfailover.Replica{Name: r.Name(), Addr: r.Addr(), Priority: i, TLS: imapfailover.TLSNone, Username: set.Username(), Password: set.Password()})
	}
	pool, err := imapfailover.New(&imapfailover.Options{
		Replicas: replicas,
		Hooks: imapfailover.Hooks{
			Connected: func(replica string, err error) { connects++ },
			Failover: func(from, to string, err error) {
				failovers++
				fmt.Println("failover", from, "->", to)
			},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := set.Replica(0).Stop(); err != nil {
		log.Fatal(err)
	}
	if _, err := pool.Mailbox("INBOX", nil).Sync(context.Background(), func(context.Context, *imapfailover.Message) error { return nil }); err != nil {
		log.Fatal(err)
	}
	fmt.Println(connects, "connection attempts,", failovers, "failover")
	// Output:
	// failover imap1 -> imap2
	// 2 connection attempts, 1 failover
}
