// Package health keeps the shared view of which mail endpoints are up.
//
// It is the HAProxy health check and keepalived priority of a classic HA mail
// stack, inside the program: a checker probes targets (TCP connect, SMTP
// greeting and EHLO per RFC 5321, IMAP greeting and CAPABILITY per RFC 9051 /
// RFC 3501), applies rise/fall hysteresis, and accepts passive reports from
// clients that saw a success or a failure on a real connection. smtpclient and
// imapfailover read it through the View interface.
package health
