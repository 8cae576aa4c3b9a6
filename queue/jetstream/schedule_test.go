package jetstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// These tests pin down the server behaviour the store is built on, so an
// upgrade of nats-server that changes it fails here first.

func scheduleStream(replicas int) natsjs.StreamConfig {
	return natsjs.StreamConfig{
		Name:              "SCHED",
		Subjects:          []string{"q.ready.*", "q.sched.*"},
		Retention:         natsjs.WorkQueuePolicy,
		Storage:           natsjs.FileStorage,
		Replicas:          replicas,
		AllowMsgSchedules: true,
	}
}

// checkSchedule publishes a schedule and waits for its firing on the
// target subject through a work-queue consumer.
func checkSchedule(t *testing.T, ctx context.Context, js natsjs.JetStream, kill func()) {
	t.Helper()
	st, err := js.Stream(ctx, "SCHED")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, natsjs.ConsumerConfig{
		Durable:       "runners",
		FilterSubject: "q.ready.*",
		AckPolicy:     natsjs.AckExplicitPolicy,
		AckWait:       30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(2 * time.Second)
	m := nats.NewMsg("q.sched.x1")
	m.Header.Set("Hamail-Attempt", "3")
	m.Data = []byte("payload")
	if _, err := js.PublishMsg(ctx, m, natsjs.WithScheduleAt(at), natsjs.WithScheduleTarget("q.ready.x1")); err != nil {
		t.Fatalf("publish schedule: %v", err)
	}
	// A second schedule on the same subject replaces the first.
	m.Header.Set("Hamail-Attempt", "4")
	pa, err := js.PublishMsg(ctx, m, natsjs.WithScheduleAt(at), natsjs.WithScheduleTarget("q.ready.x1"))
	if err != nil {
		t.Fatalf("publish schedule again: %v", err)
	}
	if kill != nil {
		kill()
	}
	// Nothing is ready before the time.
	if b, err := cons.Fetch(1, natsjs.FetchMaxWait(500*time.Millisecond)); err == nil {
		for msg := range b.Messages() {
			t.Fatalf("message %s delivered before its time", msg.Subject())
		}
	}
	var got natsjs.Msg
	deadline := time.Now().Add(20 * time.Second)
	for got == nil && time.Now().Before(deadline) {
		b, err := cons.Fetch(1, natsjs.FetchMaxWait(time.Second))
		if err != nil {
			continue
		}
		for msg := range b.Messages() {
			got = msg
		}
	}
	if got == nil {
		t.Fatal("scheduled message never fired")
	}
	if time.Now().Before(at.Add(-1100 * time.Millisecond)) {
		t.Fatalf("fired at %v, more than a second before %v", time.Now(), at)
	}
	if got.Subject() != "q.ready.x1" || string(got.Data()) != "payload" || got.Headers().Get("Hamail-Attempt") != "4" {
		t.Fatalf("fired message %s %q attempt %q", got.Subject(), got.Data(), got.Headers().Get("Hamail-Attempt"))
	}
	// The schedule itself is gone once it fired.
	if _, err := st.GetLastMsgForSubject(ctx, "q.sched.x1"); !errors.Is(err, natsjs.ErrMsgNotFound) {
		t.Fatalf("schedule still stored after firing: %v", err)
	}
	md, _ := got.Metadata()
	if md.Sequence.Stream <= pa.Sequence {
		t.Fatalf("fired copy seq %d not after schedule %d", md.Sequence.Stream, pa.Sequence)
	}
	// Compare-and-set over every subject of one item: a write that
	// expects an older sequence is refused.
	cas := func(seq uint64) error {
		m := nats.NewMsg("q.sched.x1")
		m.Header.Set("Nats-Expected-Last-Subject-Sequence-Subject", "q.*.x1")
		_, err := js.PublishMsg(ctx, m, natsjs.WithExpectLastSequencePerSubject(seq),
			natsjs.WithScheduleAt(time.Now().Add(time.Hour)), natsjs.WithScheduleTarget("q.ready.x1"))
		return err
	}
	if err := cas(pa.Sequence); err == nil {
		t.Fatal("compare-and-set with a stale sequence accepted")
	}
	if err := cas(md.Sequence.Stream); err != nil {
		t.Fatalf("compare-and-set with the latest sequence: %v", err)
	}
	if err := got.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestServerScheduleSingleNode(t *testing.T) {
	t.Parallel()
	n := startNode(t)
	nc := connect(t, n.url())
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, scheduleStream(1)); err != nil {
		t.Fatal(err)
	}
	checkSchedule(t, ctx, js, nil)
}

func TestServerScheduleSurvivesLeaderKill(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	nc := connect(t, c.urls())
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, scheduleStream(3)); err != nil {
		t.Fatal(err)
	}
	checkSchedule(t, ctx, js, func() {
		leader := c.streamLeader(ctx, js, "SCHED")
		leader.shutdown()
	})
}
