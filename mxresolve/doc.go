// Package mxresolve decides where mail for a domain goes: the ordered list of
// mail exchangers, each with its addresses, per RFC 5321 §5.1.
package mxresolve
