// Command relayd is a mail submission server (RFC 6409) in front of hamail's
// durable queue: programs and users submit over SMTP with STARTTLS (RFC 3207)
// and AUTH PLAIN or LOGIN (RFC 4954, RFC 4616), relayd answers 250 to the final dot
// only once the message is durable on disk, then delivers it through the
// configured relays (in failover tiers, with health probes and circuit
// breakers) and/or the recipients' mail exchangers, retrying for days and
// bouncing (RFC 3464) what cannot be delivered.
//
// As a submission agent should (RFC 6409 §8), it adds a Received field and,
// when the message has none, Date and Message-ID fields.
//
// It also picks up what "hasend -queue DIR" drops into DIR/maildrop, so that
// local programs using the sendmail interface share the same queue.
//
// Usage:
//
//	relayd -config /etc/relayd.json
//	relayd -queue-dir /var/spool/relayd -users-file /etc/relayd/users \
//	    -tls-cert cert.pem -tls-key key.pem -relay smtp.example.net:587 \
//	    -relay-user me -relay-password-file /etc/relayd/relay.pw
//	relayd -hash-password < password     # a line for the users file
//
// The configuration file is JSON; every key has a flag of the same name with
// "-" for "_", which overrides it (relays also have -relay and its -relay-*
// flags). relayd -print-config prints the effective configuration:
//
//	{
//	  "hostname": "submit.example.org",
//	  "listen": ":587",
//	  "listen_tls": ":465",
//	  "tls_cert": "/etc/relayd/cert.pem",
//	  "tls_key": "/etc/relayd/key.pem",
//	  "users_file": "/etc/relayd/users",
//	  "trusted_networks": ["127.0.0.0/8", "::1/128"],
//	  "queue_dir": "/var/spool/relayd",
//	  "relays": [
//	    {"addr": "smtp1.example.net:587", "priority": 0, "tls": "verify", "user": "me", "password_file": "/etc/relayd/relay.pw"},
//	    {"addr": "smtp2.example.net:587", "priority": 0},
//	    {"addr": "backup.example.com:25", "priority": 1, "tls": "may"}
//	  ],
//	  "fallback_relays": [],
//	  "mx": false,
//	  "probe": true,
//	  "http_listen": "127.0.0.1:9587",
//	  "max_queue_bytes": 0,
//	  "max_message_bytes": 26214400,
//	  "max_recipients": 100,
//	  "max_connections": 100,
//	  "read_timeout": "5m",
//	  "write_timeout": "1m",
//	  "shutdown_timeout": "30s",
//	  "retry_min": "5m",
//	  "retry_max": "1h7m",
//	  "lifetime": "120h",
//	  "attempt_timeout": "10m",
//	  "breaker_open": "1m",
//	  "pickup_interval": "1s",
//	  "log_level": "info"
//	}
//
// The users file holds "name:bcrypt-hash" lines (htpasswd -nbB name password
// writes them too), with an optional third field listing the envelope senders
// the account may use ("alice:$2y$...:alice@example.org,@example.net,<>");
// MAIL FROM any other address gets 553 5.7.1. Only authenticated users may
// send (530 5.7.0 otherwise), except clients in trusted_networks (Postfix's
// mynetworks: local applications, an internal subnet), and AUTH is offered
// only under TLS (STARTTLS on listen, or implicit TLS on listen_tls) unless
// insecure_auth is set.
//
// HTTP (http_listen): /metrics serves Prometheus metrics from a private
// registry (hamail_* from the metrics package, relayd_submissions_total, Go
// and process metrics); /healthz answers 200 with the queue's depth while
// relayd accepts mail and its queue answers, 503 otherwise; with probe set,
// /healthz/relays gives the relays' health.
//
// Signals: SIGTERM or SIGINT stop relayd gracefully: it stops accepting
// connections, closes idle ones, lets each transaction in progress finish (its
// message is queued and acknowledged), lets deliveries in flight finish for up
// to shutdown_timeout, closes the queue and exits 0. What is not delivered
// stays queued for the next start. After a crash (SIGKILL, power loss),
// every acknowledged message is still in the queue and is delivered after the
// restart, at least once: a crash between a next hop's reply and the queue's
// record of it can repeat that delivery, never lose it.
//
// SIGHUP reloads the users file (a file that does not load is logged and the
// accounts stay as they were); sessions already authenticated are not
// affected.
//
// Exit statuses: 0 after a graceful shutdown, 1 when the server could not
// start or failed, 64 for a bad command line, 78 for a bad configuration.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

const usageHead = `Usage: relayd [-config FILE] [flags]
       relayd -hash-password < password

A submission server: accepts mail with STARTTLS and AUTH into a durable queue
(250 only once the message is on disk) and delivers it through the relays or
the recipients' MX hosts. See the package documentation for the JSON config.

Flags (each overrides the config key of the same name, "_" for "-"):
`

const usageTail = `
Signals: SIGTERM/SIGINT graceful shutdown; SIGHUP reloads the users file.

Exit statuses: 0 after a graceful shutdown (SIGTERM, SIGINT), 1 start-up or
runtime failure, 64 bad command line, 78 bad configuration.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
