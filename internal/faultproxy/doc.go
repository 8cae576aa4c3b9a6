// Package faultproxy is a TCP proxy for tests that sits between a client and
// any server on loopback and injects the network failures that high
// availability code must survive: a peer that accepts and then never answers
// (black hole), connections torn down with a TCP RST, a port where nothing
// listens (refused), and added latency.
//
// A Proxy listens on 127.0.0.1 with a kernel-chosen port. Point the code
// under test at Addr() instead of the server's address, then switch modes at
// any time with SetMode and SetLatency. A mode change applies to connections
// that are already open as well as to new ones:
//
//   - Pass forwards bytes both ways (after the configured latency).
//   - BlackHole accepts connections and reads and discards what the client
//     sends; nothing reaches the server and nothing comes back. An open
//     connection that is black-holed loses the bytes sent while the mode
//     lasts and resumes forwarding when the mode changes back to Pass; a
//     connection accepted in BlackHole mode never reaches the server and
//     stays silent until it is closed.
//   - Reset closes every open connection with an RST (SO_LINGER 0) and
//     resets each new connection right after accepting it.
//   - Refuse closes the listening socket, so dials fail with "connection
//     refused"; open connections are left as they are. Leaving Refuse
//     listens again on the same address.
//
// Latency is a separate knob: in Pass mode every chunk read from either side
// waits that long before it is written to the other side.
//
// A Proxy is safe for concurrent use. Close stops the listener, closes every
// connection and returns once all of the proxy's goroutines have ended. Start
// is the test helper: it fails the test if the proxy cannot listen and
// registers Close with t.Cleanup.
package faultproxy
