// Package smtptest runs an in-process SMTP server on loopback for tests: it
// records what it receives and misbehaves on request.
//
// The server is go-smtp's (RFC 5321 with ENHANCEDSTATUSCODES, RFC 2034 and
// 3463) behind a connection wrapper that adds what go-smtp's backend
// interface cannot do: choosing the advertised EHLO keywords (PIPELINING
// RFC 2920, STARTTLS RFC 3207, AUTH RFC 4954 with PLAIN and LOGIN, SIZE
// RFC 1870, 8BITMIME RFC 6152, SMTPUTF8 RFC 6531, DSN RFC 3461, CHUNKING
// RFC 3030), replacing the greeting, the 354 to DATA and the EHLO reply, and
// dropping a connection at any point, including after the final dot and
// before the reply.
//
// # Recording
//
// Each message received up to the final dot is a Message: envelope (MAIL
// FROM with its parameters, accepted recipients with theirs), body, TLS
// state, AUTH identity, the connection it came on, whether its commands were
// pipelined, and the reply given after the dot — or Unanswered when the
// connection was dropped instead, the case where a client cannot know
// whether the message was delivered (RFC 5321 §4.5.3.2.6). Connections are
// described by ConnInfo and counted in Stats. Wait, WaitMessages, WaitConns
// and WaitIdle block until something happened or the context ends, so tests
// never sleep.
//
// # Faults
//
// A Fault (reply replacement, delay, drop, hang-up, limited to a number of
// occurrences) is attached to a Stage with SetFault, or to a recipient by
// address or index with SetRcptFault and SetRcptIndexFault. SetCapabilities
// changes the EHLO keywords. Both take effect for the next command on every
// open connection. A refused DATA (a Fault with a Reply at StageData) leaves
// the connection usable, as a real server's would.
//
// The server refuses MAIL and RCPT parameters of extensions it does not
// advertise (555 5.5.4), and enforces its SIZE limit (552 5.3.4), so tests
// catch clients that ignore the EHLO reply.
//
// # TLS
//
// Every server has its own self-signed certificate for 127.0.0.1, ::1,
// localhost and Options.Domain; CertPool and ClientTLSConfig let clients
// verify it. STARTTLS is offered by default; Options.ImplicitTLS makes the
// server speak TLS from the first byte instead.
//
// # Lifecycle and concurrency
//
// New makes a stopped server without I/O; Start listens on Options.Addr
// (127.0.0.1:0 by default); Stop closes the listener and every connection
// and waits for the server's goroutines; Start again listens on the same
// port, so clients see a restarted server. An automatic port on loopback
// is chosen outside the kernel's ephemeral range (internal/loopback): a
// port from that range, once free, may be handed to any outgoing
// connection on the machine, and Start after Stop would then fail with
// "address already in use". NewServer does New and Start for
// a test and registers Stop as cleanup. All methods are safe for concurrent
// use.
package smtptest
