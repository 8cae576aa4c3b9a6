// Package imaptest runs sets of in-process IMAP replicas for tests.
//
// A [Set] is N IMAP servers (go-imap v2's imapserver around one
// imapmemserver each) listening on 127.0.0.1:0. They hold the same user
// and are fed the same mailbox content through the Set, so that every
// replica gives a message the same UID and every mailbox the same
// UIDVALIDITY (RFC 3501 §2.3.1.1): each change (create, append, flag
// store, expunge, UIDVALIDITY reset) is applied to all replicas, or only
// to the replicas named, which simulates replication lag or split brain.
//
// Knobs that tests of failover need:
//
//   - [Replica.Stop] closes the listener and every live connection but
//     keeps the data; [Replica.Start] listens again on the same address.
//     Changes made through the Set while a replica is stopped still reach
//     it, as they would through replication once it is back.
//   - [Set.ResetUIDValidity] gives a mailbox a new UIDVALIDITY and new
//     UIDs for the same messages (flags and internal dates kept), as when
//     a mail store is rebuilt.
//   - [Replica.Search] and [Replica.Status] read a replica's content
//     without a connection, to assert what is stored where.
//
// The servers offer IMAP4rev1 and IMAP4rev2 (so UIDPLUS, MOVE, IDLE and
// ESEARCH) but not CONDSTORE, which imapmemserver lacks. Authentication
// over plain text is allowed (InsecureAuth) because the servers listen on
// loopback only; with [Options.TLS] they offer STARTTLS or implicit TLS
// with a self-signed certificate that [Set.ClientTLSConfig] trusts.
//
// All methods are safe for concurrent use. A Set made by [NewSet] is
// stopped by the test's Cleanup; one made by [Start] (for an Example or a
// demonstration program) by [Set.Close].
package imaptest
