package bbolt_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
	"github.com/hamail/hamail/queue/queuetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	queuetest.Run(t, func(t *testing.T, now func() time.Time) queue.Store {
		s, err := bbolt.Open(filepath.Join(t.TempDir(), "queue.db"), &bbolt.Options{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// With every body in a spool file, the suite checks the spool path too.
func TestConformanceSpooled(t *testing.T) {
	t.Parallel()
	queuetest.Run(t, func(t *testing.T, now func() time.Time) queue.Store {
		s, err := bbolt.Open(filepath.Join(t.TempDir(), "queue.db"), &bbolt.Options{Now: now, InlineBodyMax: -1})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
