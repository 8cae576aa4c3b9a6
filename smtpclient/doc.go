// Package smtpclient sends one message to its recipients over every path that
// can work: relays in priority tiers and direct MX delivery, with a circuit
// breaker per host (RFC 5321, RFC 3207, RFC 4954, RFC 2920).
package smtpclient
