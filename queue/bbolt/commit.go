package bbolt

import (
	"errors"
	"fmt"
	"runtime"

	bolt "go.etcd.io/bbolt"

	"github.com/hamail/hamail/queue"
)

// request is one write operation for the commit loop.
type request struct {
	// fn applies the operation inside the group's transaction. It must
	// check its preconditions before changing anything and report a failed
	// precondition with reject: that error goes to this caller alone and
	// the group commits. Any other error (a bbolt write failing half-way)
	// aborts the group, which is then retried one operation per
	// transaction, so that no half-applied operation is ever committed.
	fn func(tx *bolt.Tx) error
	// spool: the operation refers to a spool file that the directory
	// fsync of the group must cover.
	spool bool
	err   error
	done  chan struct{}
}

type rejection struct{ err error }

func (r *rejection) Error() string { return r.err.Error() }
func (r *rejection) Unwrap() error { return r.err }

func reject(err error) error { return &rejection{err} }

type abortError struct{ err error }

func (a *abortError) Error() string { return a.err.Error() }
func (a *abortError) Unwrap() error { return a.err }

// do submits r to the commit loop and waits for its commit. It waits even
// if the caller's context ends: the operation may already be in a
// transaction, and its result must be known.
func (s *Store) do(r *request) error {
	r.done = make(chan struct{})
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return queue.ErrClosed
	}
	s.reqs <- r
	s.closeMu.RUnlock()
	<-r.done
	var rj *rejection
	if errors.As(r.err, &rj) {
		return rj.err
	}
	return r.err
}

// loop is the group commit: one goroutine takes every write request queued
// at the moment and commits them in one db.Update, so that N concurrent
// enqueues cost one pair of fdatasyncs instead of N. Unlike db.Batch it
// does not wait for more requests to arrive: a lone caller is committed at
// once, and the batch grows by itself while a commit is in progress.
func (s *Store) loop() {
	defer close(s.loopDone)
	batch := make([]*request, 0, s.maxBatch)
	for {
		r, ok := <-s.reqs
		if !ok {
			return
		}
		batch = append(batch[:0], r)
		batch = s.gather(batch)
		s.commit(batch)
		for _, r := range batch {
			close(r.done)
		}
		clear(batch)
	}
}

// gather adds to batch the requests queued now. Callers released by the
// previous commit are runnable but, on a machine with few cores, most have
// not yet been scheduled to submit their next request; committing without
// them would split every round of callers into a small group and a large
// one, each paying a full commit. So when a drain found something, the
// loop yields its processor to those runnable goroutines and drains again,
// until a yield brings nothing new. This is no timed wait: a lone caller
// costs one yield to an empty run queue.
func (s *Store) gather(batch []*request) []*request {
	for i := range maxYields {
		n := len(batch)
	drain:
		for len(batch) < s.maxBatch {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					return batch
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		if len(batch) >= s.maxBatch || (i > 0 && len(batch) == n) {
			return batch
		}
		runtime.Gosched()
	}
	return batch
}

// maxYields bounds the yields of one gather, so that producers arriving
// without end cannot hold a commit back.
const maxYields = 16

func (s *Store) commit(batch []*request) {
	var dirErr error
	for _, r := range batch {
		if r.spool {
			// One directory fsync makes every spool file of the group
			// durable by name before the records that name them commit.
			dirErr = syncDir(s.spoolDir)
			break
		}
	}
	group := batch[:0:0]
	for _, r := range batch {
		if r.spool && dirErr != nil {
			r.err = fmt.Errorf("syncing spool directory: %w", storageErr(dirErr))
			continue
		}
		group = append(group, r)
	}
	if len(group) == 0 {
		return
	}
	var next int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		s.groupBytes = 0
		for _, r := range group {
			r.err = r.fn(tx)
			var rj *rejection
			if r.err != nil && !errors.As(r.err, &rj) {
				return &abortError{r.err}
			}
		}
		if err := pruneKeys(tx, s.now(), 64); err != nil {
			return &abortError{err}
		}
		next = firstDue(tx)
		return nil
	})
	var ab *abortError
	if errors.As(err, &ab) && len(group) > 1 {
		for _, r := range group {
			s.commit([]*request{r})
		}
		return
	}
	if err != nil {
		if ab != nil {
			err = ab.err
		}
		err = s.commitErr(err)
		for _, r := range group {
			r.err = err
		}
		return
	}
	s.nextMu.Lock()
	s.next = next
	close(s.changed)
	s.changed = make(chan struct{})
	s.nextMu.Unlock()
}
