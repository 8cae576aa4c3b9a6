// Package bbolt is the embedded, durable queue.Store: one bbolt database
// file (go.etcd.io/bbolt) and a spool directory beside it.
//
// # Durability
//
// Enqueue, Lease, Record and Complete return only after their transaction
// is committed with fdatasync; bbolt's NoSync is never used. Concurrent
// writes are committed together by one goroutine (group commit): it takes
// every operation queued at that moment, up to Options.MaxBatch, into one
// db.Update, so that N concurrent enqueues cost one commit instead of N.
// Unlike db.Batch it never waits for more operations to arrive, so a lone
// caller pays no added latency. Each operation checks its own
// preconditions and gets its own error; only a failed write or commit fails
// the group, and then nothing of it is written.
//
// A database file is used by one process at a time (bbolt takes a file
// lock; Open waits Options.LockTimeout for it).
//
// # Layout
//
//	msgs:   id → record (envelope, recipient states, created, attempts,
//	        due time, lease token; JSON behind a version and CRC-32C header)
//	bodies: id ‖ be32(n) → chunk n of the body, for bodies up to
//	        Options.InlineBodyMax; chunks of an eighth of a page, so that
//	        bodies fill pages instead of each taking whole pages of its
//	        own (a 4 KiB body stored whole takes two 4 KiB pages)
//	sched:  be64(due, Unix ns) ‖ id → "L" while leased, else empty
//	dedup:  caller key → id, while the item is queued
//	keys:   caller key → be64(until) ‖ id of a completed item, kept for
//	        Options.KeyRetention
//	keyexp: be64(until) ‖ key → empty, the expiry index of keys, pruned a
//	        few entries per commit
//	dead:   id → reason and raw bytes of a quarantined record
//	meta:   layout version
//
// sched is the only due-time index: Lease is a range scan from its start to
// now. Leasing moves the item's key to the lease expiry and bumps the
// fencing token (a bucket sequence), so an expired lease needs no sweep —
// the item is simply due again — and Record and Complete check the token
// first. IDs are made by queue.NewID outside the transaction and sort by
// time, so the oldest item is the first key of msgs.
//
// # Bodies
//
// Bodies larger than Options.InlineBodyMax (64 KiB by default) are written
// to a spool file named by the ID, fsynced, and the spool directory is
// fsynced (once per commit group) before the record that refers to the file
// is committed. A bbolt file never shrinks, and a burst of large values
// leaves it at its high-water mark; spool files give their space back to
// the file system as soon as the item completes, keep large writes out of
// the single writer's transaction, and let the fsync of each large body run
// in the producer's goroutine in parallel with other commits. Small bodies
// stay inline, where a separate file would cost a create, an fsync and an
// unlink per message. Spool files that no record names (an Enqueue that
// crashed before its commit, or a Complete that crashed after its commit)
// are removed by Open.
//
// # Bad input and full disks
//
// A record that fails its checksum or cannot be decoded is quarantined when
// Lease meets it: moved to the dead bucket, counted in Stats.Quarantined,
// listed with its reason and bytes by Store.Quarantined, and named in an
// error wrapping queue.ErrCorrupt that Lease returns with the good items,
// so the rest of the queue keeps flowing. Records are also
// refused when their envelope would not pass queue.Envelope.Validate, so a
// damaged record never reaches an SMTP command line. A body that is gone or
// has another length than its record says makes Body fail with
// queue.ErrCorrupt naming the item.
//
// A full disk, a file size limit (RLIMIT_FSIZE) or Options.MaxSize makes
// the operation fail with queue.ErrStorageFull, and nothing of it is
// written: a commit either lands whole or not at all, and a spool file
// whose record did not commit is removed. bbolt reports a failure to grow
// its file without the system error, so after a failed commit the store
// checks whether the file system (or the process's file size limit) still
// has room for the next growth and says so in the error.
//
// # Lifecycle
//
// Open creates the file if needed, removes orphaned spool files and starts
// the commit loop; Close stops it after the operations already submitted
// and closes the file. All methods are safe for concurrent use.
package bbolt
