package hamail

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/queue/jetstream"
)

// startNATS runs an embedded single-node JetStream server with synchronous
// writes, as queue/jetstream requires.
func startNATS(t *testing.T) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: t.TempDir(), SyncAlways: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s.ClientURL()
}

// openJetStream opens a store on its own connection, as a separate process
// would.
func openJetStream(t *testing.T, url string) *jetstream.Store {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s, err := jetstream.New(nc, &jetstream.Options{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Open(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSharedJetStreamQueue: two Mailers, as in two processes, share one
// JetStream queue; every message sent through either is delivered once,
// and the Mailers leave the stores they were given open.
func TestSharedJetStreamQueue(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	relay := smtptest.NewServer(t, nil)
	stores := []*jetstream.Store{openJetStream(t, url), openJetStream(t, url)}
	var mailers []*Mailer
	for _, s := range stores {
		mailers = append(mailers, open(t, &Options{Relays: relayOf(relay), SMTP: testSMTP(), Store: s, Runner: testRunner()}))
	}
	const each = 6
	var wg sync.WaitGroup
	for i, m := range mailers {
		wg.Go(func() {
			for j := range each {
				mid := fmt.Sprintf("<%d.%d@example.org>", i, j)
				if _, err := m.Send(waitCtx(t), &Message{From: "app@example.org", To: []string{"bob@example.com"},
					Body: strings.NewReader("Message-ID: " + mid + "\nSubject: x\n\nx\n")}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	msgs, err := relay.WaitMessages(waitCtx(t), 2*each)
	if err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, stores[0])
	seen := map[string]int{}
	for _, msg := range relay.Messages() {
		i := bytes.Index(msg.Body, []byte("Message-ID: "))
		if i < 0 {
			t.Fatalf("no Message-ID:\n%s", msg.Body)
		}
		seen[string(msg.Body[i+12:i+bytes.IndexByte(msg.Body[i:], '\r')])]++
	}
	if len(msgs) != 2*each || len(seen) != 2*each {
		t.Fatalf("%d messages, %d distinct: %v", len(msgs), len(seen), seen)
	}
	for _, m := range mailers {
		if err := m.Shutdown(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range stores {
		if _, err := s.Stats(waitCtx(t)); err != nil {
			t.Fatalf("a caller's store was closed: %v", err)
		}
	}
}
