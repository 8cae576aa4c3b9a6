package jetstream

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/queuetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	n := startNode(t)
	nc := connect(t, n.url())
	var seq atomic.Int64
	queuetest.RunConfig(t, queuetest.Config{
		RealTime: true,
		New: func(t *testing.T, now func() time.Time) queue.Store {
			i := seq.Add(1)
			s, err := New(nc, &Options{
				Stream:   fmt.Sprintf("CONF%d", i),
				Subject:  fmt.Sprintf("conf%d", i),
				Replicas: 1,
				AckWait:  time.Second,
				Now:      now,
			})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	})
}
