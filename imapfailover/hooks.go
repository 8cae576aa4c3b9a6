package imapfailover

import "time"

// Hooks observe the pool, in the manner of net/http/httptrace: each field is
// an optional function, nil means not called. They exist so that metrics
// (failovers, reconnects, resync durations) need no dependency here.
//
// A hook is called synchronously from the goroutine doing the work, after
// the event and holding no lock of the Pool, so it may call Pool.Stats. It
// must return quickly and must not block: the connection or Watch it
// reports on waits for it. It must not call back into the Mailbox it
// reports on (its Sync or Watch is running) and must not modify what it is
// given.
type Hooks struct {
	// Connected is called after every attempt to open a connection to a
	// replica (dial, TLS, greeting, authentication), with nil on success
	// or the *Error that made it fail. Attempts abandoned because the
	// caller's context ended are reported too, with that error.
	Connected func(replica string, err error)
	// Failover is called when work moved from one replica to another
	// because the first failed: a Pool.Do or Append whose first replica
	// could not be used ran on another, or a Mailbox's Sync or Watch
	// resumed on another replica after the one it was using (or trying
	// first) failed. from is the replica that failed, to the one that then
	// served, err the failure that made it leave from. It is called once
	// the new replica has served (for a Mailbox: once its resync
	// completed). Moving away from a lagging replica or back to a better
	// one that is up again is not a failover and is not reported;
	// reconnecting to the same replica is reported by Connected only.
	Failover func(from, to string, err error)
	// Resynced is called after each completed resync of a mailbox (at the
	// start of Sync and Watch, after every reconnect and after every change
	// the server announced), with the replica it ran on, its duration
	// without the time spent in the caller's Handler, OnFlags and
	// OnExpunge, and its report. A resync that failed is not reported; the
	// failure shows as Connected or Failover events.
	Resynced func(mailbox, replica string, d time.Duration, r *SyncReport)
}

// failTracker turns a sequence of failures and successes on replicas into
// Failover events: the first replica that failed since the last success is
// the one work moved away from.
type failTracker struct {
	from string
	err  error
}

func (t *failTracker) failed(replica string, err error) {
	if t.from == "" {
		t.from, t.err = replica, err
	}
}

func (t *failTracker) served(h *Hooks, replica string) {
	from, err := t.from, t.err
	t.from, t.err = "", nil
	if from != "" && from != replica && h.Failover != nil {
		h.Failover(from, replica, err)
	}
}

func (h *Hooks) connected(replica string, err error) {
	if h.Connected != nil {
		h.Connected(replica, err)
	}
}
