// Package loopback listens on loopback TCP ports that outgoing connections
// cannot be handed, so that a test server stopped and started again on the
// same address finds its port still free.
//
// A listener on port 0 gets its port from the kernel's ephemeral range (on
// Linux /proc/sys/net/ipv4/ip_local_port_range, 32768–60999 by default),
// the range the kernel also draws from for the local port of every
// outgoing connection. Once such a server stops, any connection the
// machine opens (the test's own clients, other processes) may be given the
// port, and listening on it again fails with "address already in use" for
// as long as that connection lives.
//
// Listen picks instead a random free port outside the ephemeral range:
// from 10000 up to just below the range, or above it up to 65535. The
// kernel never hands such a port to an outgoing connection nor to another
// listener on port 0; only a program binding that very port can take it.
// Ports under 10000, where well-known and commonly configured services
// live, are left alone.
//
// The trade-off: the port is not reserved by the kernel, so another
// process, or another Listen of this package, may pick the same port
// while the server is stopped; with thousands of candidates chosen at
// random this is unlikely, but not impossible, while an ephemeral port
// is reused by outgoing connections as a matter of course. Where the
// ephemeral range cannot be read (systems other than Linux, a missing
// /proc) or leaves fewer than 1024 ports outside it above 10000, Listen
// falls back to port 0 and the protection is lost, not the listener.
//
// Listen retries a bounded number of times when a chosen port is in use.
// Functions are safe for concurrent use; the package keeps no state.
package loopback
