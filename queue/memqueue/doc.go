// Package memqueue is a queue.Store in memory, for tests and short-lived
// programs. It is NOT durable: everything it holds is lost when the
// process ends. Use queue/bbolt for mail that must survive a crash.
//
// A Store is safe for concurrent use. New does no I/O; Close makes later
// calls fail with queue.ErrClosed.
package memqueue
