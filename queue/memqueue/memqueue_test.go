package memqueue_test

import (
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/memqueue"
	"github.com/hamail/hamail/queue/queuetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	queuetest.Run(t, func(t *testing.T, now func() time.Time) queue.Store {
		return memqueue.New(&memqueue.Options{Now: now})
	})
}
