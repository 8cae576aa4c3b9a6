// Package queuetest is the conformance suite that every queue.Store passes.
//
// A store package calls Run from a test with a function that opens an
// empty store reading time from the given clock:
//
//	func TestConformance(t *testing.T) {
//		queuetest.Run(t, func(t *testing.T, now func() time.Time) queue.Store {
//			return memqueue.New(&memqueue.Options{Now: now})
//		})
//	}
//
// The suite checks ordering by due time, leases and their expiry and
// fencing, idempotent enqueue, per-recipient updates, bodies, listing,
// statistics, and that concurrent workers never hold the same lease. By
// default it drives a fake clock, so nothing sleeps; a store whose due times
// and leases follow a server's real clock sets Config.RealTime, and the
// suite then waits for real time to pass in steps of Config.Unit.
//
// Subtests run in parallel, each with its own store.
package queuetest
