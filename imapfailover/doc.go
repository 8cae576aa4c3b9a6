// Package imapfailover reads a mailbox from a set of IMAP replicas and moves
// to a healthy one when the current one fails, without missing a message
// or handing one out twice.
//
// A [Pool] holds the replicas (address, priority, TLS mode, credentials or
// a SASL client) and a few authenticated connections. It picks replicas
// by priority, after those a [health.View] reports Down or that failed
// recently, checks an idle connection with NOOP before reusing it, and
// [Pool.Do] runs an operation again on the next replica only when it is
// [Repeatable]. Every command is bounded by [Options.CommandTimeout]
// (go-imap has no read deadline: the connection is closed), by
// [Options.MaxLineLength] and by its context.
//
// A [Mailbox] keeps per-mailbox state in a [StateStore] ([FileStore] is
// durable: a snapshot written to a temporary file, fsynced and renamed,
// and an fsynced journal of changes since; [MemoryStore] is not): the
// UIDVALIDITY, the highest UID handled, the HIGHESTMODSEQ per replica and
// a fingerprint of every known message. Each (re)connection resyncs
// (RFC 4549 §4): new messages by an explicit UID range above the last
// handled, flag changes by CHANGEDSINCE where the server has CONDSTORE
// (RFC 7162 §3.1.4) or by a flags fetch otherwise, expunges by UID SEARCH
// (compact with ESEARCH, RFC 4731). A replica whose UIDNEXT shows it lacks
// handled messages is not trusted for expunges and is left for a better
// one; a new UIDVALIDITY (RFC 3501 §2.3.1.1) is mapped back onto handled
// messages by Message-ID, or a fingerprint of Date, From, Subject and size.
// QRESYNC is never enabled: go-imap v2 cannot parse VANISHED.
// Unsolicited responses only mark the mailbox for a resync.
//
// [Mailbox.Watch] waits with IDLE (RFC 2177), leaves it every
// [Options.Heartbeat] to send NOOP, which finds half-open connections,
// and on failure resumes on the next healthy replica. The state is saved
// after each handled message, so with a FileStore each message is handed
// out once across failovers and restarts; only a crash between the
// handler's return and the save repeats one. [Pool.Append] adds a
// Message-ID when missing and, when a connection breaks before the tagged
// OK, searches the next replica for it before appending again.
//
// [Options.Hooks] report connections, failovers and resyncs for metrics.
//
// A Pool and its Mailboxes are safe for concurrent use; one Mailbox runs
// one Sync or Watch at a time. [New] and [Pool.Mailbox] do no I/O;
// connections open on demand, Watch runs until its context ends, and
// [Pool.Close] closes every connection.
package imapfailover
