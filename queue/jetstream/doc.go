// Package jetstream is a queue.Store on NATS JetStream, for senders on
// several machines that share one mail queue. Any number of runners in any
// number of processes lease from the same queue; each item is held by one
// runner at a time, and the item of a runner that crashed goes to another
// once its lease runs out. Replication, leader election and durable
// storage are the NATS servers' work; the package adds the mail queue's
// semantics on top.
//
// # Server requirements
//
// The store checks what it can at start-up (Store.Open, or the first call)
// and fails with an error wrapping ErrUnsupportedServer or ErrStreamConfig:
// the version of the server it is connected to, that JetStream answers,
// and the stream's settings as the cluster stored them (a stream leader
// older than 2.12 drops AllowMsgSchedules, which the check then reports).
// The other servers' versions and their sync setting are not visible to a
// client; they are the operator's part. The requirements:
//
//   - nats-server 2.12 or later on every server of the cluster, with
//     JetStream enabled: retries are scheduled messages
//     (StreamConfig.AllowMsgSchedules), which older servers silently lack.
//   - Synchronous writes: "jetstream { sync_interval: always }" in the
//     server configuration (server.Options.SyncAlways when embedding). The
//     default flushes to disk every two minutes, and a server that loses
//     power can then lose writes it has acknowledged; with R3 a quorum of
//     fsynced copies is what makes an acknowledged Enqueue durable.
//   - Three servers and Options.Replicas 3 (the default), so that an
//     acknowledged write survives the loss of any one server and the queue
//     keeps working while one is down.
//   - A max_payload large enough for ordinary messages (the default 1 MiB
//     is fine): larger bodies go to a JetStream object store.
//
// An existing stream must be a file-backed work queue with message
// schedules, no limits that drop messages (MaxAge, MaxMsgs, MaxBytes,
// MaxMsgsPerSubject), no direct get (reads of an item's latest version go
// to the stream leader), and the default synchronous persist mode, with
// Options.Replicas replicas; an existing body bucket must be file-backed,
// unsealed and as replicated.
//
// # Layout
//
// One work-queue stream (Options.Stream) with these subjects under the
// prefix Options.Subject:
//
//	<prefix>.ready.<id>  the item's version that is due now
//	<prefix>.sched.<id>  the version waiting for its next attempt: a
//	                     scheduled message (Nats-Schedule "@at <time>") that
//	                     the server republishes to ready.<id> when due
//	<prefix>.key.<hash>  the claim of an idempotency key: the item ID
//	<prefix>.quar.<id>.record
//	                     a record that could not be decoded, set aside
//
// A version carries the whole item (envelope, per-recipient state, counters)
// and its body, unless the body is larger than half the server's max payload;
// then the body is an object named by the item ID in the object store bucket
// Options.Stream+"_BODIES", written before the item and deleted after it;
// Store.SweepBodies removes those that a process stopping in between left.
//
// Runners share one durable pull consumer on ready.*. A lease is a delivery
// not yet acknowledged: the consumer's AckWait (Options.AckWait) is the
// server-side lease, renewed with in-progress acknowledgements for leases
// longer than it. A renewal counts only once the server confirms it before
// the old AckWait ran out; until then the Store's own view of the lease
// ends where the server's may. Complete acknowledges the delivery, and the
// work-queue retention deletes it. Record publishes the next version to
// sched.<id> (or ready.<id> when due at once) and then acknowledges the
// delivered one.
// That publish is a compare-and-set on the item's latest version across
// ready.<id> and sched.<id> (Nats-Expected-Last-Subject-Sequence with
// Nats-Expected-Last-Subject-Sequence-Subject), so of two runners that both
// believe they hold an item only one writes. If a runner stops between the
// publish and the acknowledgement, the old version comes back after AckWait,
// is found not to be the latest, and is dropped: there is no extra attempt.
// It is dropped only when a newer version is read: the delivered version
// stays in the stream until it is acknowledged, so a read that misses it
// is a stale answer (a server that still answers as the stream's leader
// after a partition healed) and the delivery is handed back instead.
//
// Scheduled messages survive restarts and leader changes: they are stream
// messages, replicated like any other, and the new leader fires them.
//
// # Prefetch
//
// Each Lease pulls at least Options.Prefetch deliveries and keeps those it
// was not asked for to hand out on the next calls, saving a round trip to
// the consumer leader per item. The server's AckWait of a kept delivery
// runs from the pull, so it is handed back (negatively acknowledged) after
// at most a second or a tenth of AckWait, whichever is shorter, and never
// handed out later than that: by then the server could have given it to
// another runner.
//
// # Idempotency
//
// Every first version carries its item ID as Nats-Msg-Id, so a publish
// retried through a leader election is stored once. A queue.Message Key is
// claimed by a compare-and-set publish on key.<hash>; the item is then
// published on condition that the claim is still the latest, so concurrent
// enqueues with one key on any number of machines agree on one item. The
// claim is deleted when the item completes.
//
// # Guarantees and limits
//
// Enqueue returns once the stream leader has the version stored on a
// quorum of Options.Replicas (the PubAck); without a quorum it keeps
// trying through leader elections for up to a minute, or until its
// context ends, and then fails: it never reports an unreplicated write as
// durable. A failed Enqueue may still have been stored (the answer was
// lost); retrying it with the same Message Key stores it once.
//
// Delivery is at least once. A runner that stalls past its lease while
// another takes the item over can make a second delivery attempt; the
// fencing keeps the stale runner from overwriting the item's state: Record
// is a compare-and-set on the item's latest version, and a lease on a
// redelivered item checks that version again before Complete. Complete of
// an item delivered once (the common case) relies on the lease clock of
// its Store value: it is refused from AckWait less a tenth before the
// server can redeliver, so only a process paused for longer than that tenth
// between the check and the acknowledgement (or an acknowledgement held up
// that long, by a leader election) can complete an item another runner
// holds, which repeats a delivery but loses none. Repeated attempts
// are bounded by the deliveries outstanding when a runner or a server
// fails: the attempts under way plus the prefetched ones.
//
// Leases are held by the Store value that made them: Record and Complete
// must be called on it. Due times follow the servers' clocks. List and Stats
// read the stream's subject index, at a cost that grows with the queue: they
// are for operators, not for the delivery path. Stats counts deliveries
// prefetched by other Store values as leased.
//
// # Failures and partitions
//
// With three servers and R3 the queue keeps working while any one server
// is down or cut off: the other two elect leaders for the stream and the
// consumer (a few seconds, during which calls retry), scheduled retries
// fire on the new stream leader, and a restarted server catches up from
// the others.
//
// In a network partition the side with a quorum carries on. A Store whose
// connection lands on the minority side cannot reach the leaders: its
// Enqueue fails as above, its Lease returns errors or nothing, and the
// leases it held can be neither recorded nor completed (a cut-off server
// that still believes it leads the consumer may confirm renewals until it
// notices it lost its quorum, so the Store's lease clock is no fence here;
// the writes are). After AckWait the majority side hands those items to
// other runners, so an attempt made on the minority side during the
// partition may be repeated; no acknowledged item is lost, and nothing the
// minority side wrote without a quorum was reported as written.
//
// When a partition heals, the server that was cut off can force the stream
// and consumer groups into new elections. A lease whose renewal finds no
// consumer leader before the server's AckWait ends is lost: Record and
// Complete fail with queue.ErrLeaseLost, and the item is delivered again
// once AckWait has passed. Give the client every
// server's URL so that it reconnects to a server of the majority when its
// own server goes down; a server that is up but cut off keeps its clients
// until the partition heals.
//
// A Store is safe for concurrent use. New does no I/O; Close stops the lease
// renewal and hands held leases back; the caller owns the NATS connection.
package jetstream
