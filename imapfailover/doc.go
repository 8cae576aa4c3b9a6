// Package imapfailover reads a mailbox from a set of IMAP replicas and moves
// to a healthy one when the current one fails, resynchronising by UID
// (RFC 9051, RFC 3501, RFC 4549, RFC 7162).
package imapfailover
