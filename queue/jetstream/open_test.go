package jetstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

func TestVersionAtLeast(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v    string
		want bool
	}{
		{"2.12.0", true},
		{"v2.12.0", true},
		{"2.12.3", true},
		{"2.15.2", true},
		{"3.0.0", true},
		{"2.12.0-RC.1", true},
		{"2.11.9", false},
		{"2.9.25", false},
		{"1.99.99", false},
		{"2.12", true},
		{"2", false},
		{"two.twelve", false},
		{"", false},
	} {
		if got := versionAtLeast(tc.v, minServer); got != tc.want {
			t.Errorf("versionAtLeast(%q) = %v, want %v", tc.v, got, tc.want)
		}
	}
}

// oldServer speaks just enough of the NATS protocol to accept a client
// connection while announcing the given version.
func oldServer(t *testing.T, version string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				fmt.Fprintf(c, "INFO {\"server_id\":\"OLD\",\"version\":%q,\"proto\":1,\"headers\":true,\"max_payload\":1048576}\r\n", version)
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(line, "PING") {
						if _, err := c.Write([]byte("PONG\r\n")); err != nil {
							return
						}
					}
				}
			})
		}
	})
	return "nats://" + l.Addr().String()
}

// Open refuses servers the store cannot work with, and existing streams
// whose settings would lose or misplace mail, with typed errors.
func TestOpenChecks(t *testing.T) {
	t.Parallel()

	t.Run("ServerTooOld", func(t *testing.T) {
		t.Parallel()
		nc, err := nats.Connect(oldServer(t, "2.11.4"), nats.NoReconnect())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		s, err := New(nc, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = s.Open(ctx)
		if !errors.Is(err, ErrUnsupportedServer) || !strings.Contains(err.Error(), "2.11.4") {
			t.Fatalf("Open against nats-server 2.11.4: %v, want ErrUnsupportedServer naming the version", err)
		}
		// Every other call reports it too, instead of failing obscurely.
		_, err = s.Enqueue(ctx, &queue.Message{Envelope: testEnvelope(1)})
		if !errors.Is(err, ErrUnsupportedServer) {
			t.Errorf("Enqueue against an old server: %v", err)
		}
	})

	t.Run("JetStreamDisabled", func(t *testing.T) {
		t.Parallel()
		n := &testNode{t: t, opts: baseOptions(t, "nojs")}
		n.opts.JetStream = false
		n.start()
		t.Cleanup(n.shutdown)
		s, err := New(connect(t, n.url()), &Options{Replicas: 1})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := s.Open(ctx); !errors.Is(err, ErrUnsupportedServer) {
			t.Fatalf("Open without JetStream: %v, want ErrUnsupportedServer", err)
		}
	})

	n := startNode(t)
	t.Run("BodyBucketInMemory", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		nc := connect(t, n.url())
		js, err := natsjs.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.CreateObjectStore(ctx, natsjs.ObjectStoreConfig{Bucket: "MEMBODIES_BODIES", Storage: natsjs.MemoryStorage}); err != nil {
			t.Fatal(err)
		}
		s, err := New(nc, &Options{Stream: "MEMBODIES", Subject: "membodies", Replicas: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Open(ctx); !errors.Is(err, ErrStreamConfig) || !strings.Contains(err.Error(), "body bucket") {
			t.Fatalf("Open with bodies in memory: %v, want ErrStreamConfig about the body bucket", err)
		}
	})
	for _, tc := range []struct {
		name string
		edit func(*natsjs.StreamConfig)
		want string
	}{
		{"NoSchedules", func(c *natsjs.StreamConfig) { c.AllowMsgSchedules = false }, "message schedules"},
		{"Limits", func(c *natsjs.StreamConfig) { c.MaxAge = time.Hour }, "limits"},
		{"Retention", func(c *natsjs.StreamConfig) { c.Retention = natsjs.LimitsPolicy }, "retention"},
		{"Memory", func(c *natsjs.StreamConfig) { c.Storage = natsjs.MemoryStorage }, "storage"},
		{"DirectGet", func(c *natsjs.StreamConfig) { c.AllowDirect = true }, "direct get"},
		{"AsyncPersist", func(c *natsjs.StreamConfig) { c.PersistMode = natsjs.AsyncPersistMode }, "asynchronous"},
	} {
		t.Run("Stream"+tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			nc := connect(t, n.url())
			js, err := natsjs.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			name := "CHECK" + strings.ToUpper(tc.name)
			cfg := natsjs.StreamConfig{
				Name:              name,
				Subjects:          []string{strings.ToLower(name) + ".>"},
				Retention:         natsjs.WorkQueuePolicy,
				Storage:           natsjs.FileStorage,
				Replicas:          1,
				AllowMsgSchedules: true,
			}
			tc.edit(&cfg)
			if _, err := js.CreateStream(ctx, cfg); err != nil {
				t.Fatalf("creating the misconfigured stream: %v", err)
			}
			s, err := New(nc, &Options{Stream: name, Subject: strings.ToLower(name), Replicas: 1})
			if err != nil {
				t.Fatal(err)
			}
			err = s.Open(ctx)
			if !errors.Is(err, ErrStreamConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open on a stream with %s: %v, want ErrStreamConfig mentioning %q", tc.name, err, tc.want)
			}
			var qe *queue.Error
			if !errors.As(err, &qe) || qe.Op != "open" {
				t.Errorf("error %v is not a *queue.Error of Op open", err)
			}
		})
	}
}
