package smtptest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/internal/loopback"
	"github.com/hamail/hamail/internal/selfsigned"
)

// ErrRunning is returned by Start when the server is already listening.
var ErrRunning = errors.New("smtptest: server already running")

// Options configure a Server. The zero value is usable.
type Options struct {
	// Domain is the host name in the greeting; default "mx.example.test".
	Domain string
	// Addr is the listen address; default "127.0.0.1:0". Port 0 on a
	// loopback IP address gets a free port outside the kernel's ephemeral
	// range (see internal/loopback), so that no outgoing connection can
	// take it while the server is stopped; other addresses are used as
	// given. After the first Start the chosen port is kept for later
	// Starts.
	Addr string
	// Capabilities advertised at first; nil means DefaultCapabilities().
	Capabilities *Capabilities
	// Users maps AUTH user names to passwords.
	Users map[string]string
	// ImplicitTLS makes the server speak TLS from the first byte (the
	// submissions port of RFC 8314) instead of offering STARTTLS.
	ImplicitTLS bool
	// DiscardBodies records only the size of each message, not its bytes
	// (for benchmarks).
	DiscardBodies bool
	// MaxLineLength for commands and message lines; default go-smtp's 2000.
	MaxLineLength int
	// Debug, when set, receives the plain text of every connection (after
	// TLS decryption).
	Debug io.Writer
	// Logger receives internal errors of the SMTP server; nil discards.
	Logger *slog.Logger
}

// Server is an SMTP server on loopback that records what it receives and
// misbehaves on request. All methods are safe for concurrent use.
type Server struct {
	opts   Options
	tlsCfg *tls.Config
	pool   *x509.CertPool

	// life serialises Start and Stop.
	life    sync.Mutex
	srv     *smtp.Server
	ln      net.Listener
	serveWG sync.WaitGroup

	mu       sync.Mutex
	addr     string
	running  bool
	caps     Capabilities
	faults   map[faultKey]Fault
	conns    map[int64]*faultConn
	connInfo []ConnInfo
	nextID   int64
	msgs     []Message
	stats    Stats
	changed  chan struct{} // closed and replaced on every recorded event
}

// ConnInfo describes a connection the server accepted.
type ConnInfo struct {
	ID         int64
	RemoteAddr string
	Helo       string               // last EHLO/HELO argument
	TLS        *tls.ConnectionState // nil while in clear
	AuthUser   string               // "" if not authenticated
	Open       bool
}

// Stats counts what the server saw. Command counters count commands that
// reached the point where the server replies, whatever the reply.
type Stats struct {
	Connections int // accepted
	Open        int // currently open
	EHLO        int
	HELO        int
	StartTLS    int
	Auth        int
	Mail        int
	Rcpt        int
	Data        int
	Rset        int
	Noop        int
	Quit        int
	Messages    int // recorded messages (see Message)
}

// Message is one message the server received completely (up to the final
// dot).
type Message struct {
	ConnID   int64
	Helo     string
	From     string
	MailOpts smtp.MailOptions
	Rcpts    []Recipient // accepted recipients, in order
	Body     []byte      // nil with Options.DiscardBodies
	Size     int64       // body size in bytes, after dot-unstuffing
	TLS      *tls.ConnectionState
	AuthUser string
	// Pipelined is true when MAIL FROM arrived in the same read as other
	// commands, which only happens when the client pipelines (RFC 2920).
	Pipelined bool
	// Reply is the reply sent (or being sent) after the final dot.
	Reply smtp.SMTPError
	// Unanswered is true when the connection was dropped after the final
	// dot without a reply: the client cannot know the message arrived.
	Unanswered bool
}

// Recipient is an accepted RCPT TO.
type Recipient struct {
	Addr string
	Opts smtp.RcptOptions
}

// New returns a stopped server with a fresh self-signed certificate. It
// does no network I/O; call Start.
func New(opts *Options) (*Server, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Domain == "" {
		o.Domain = "mx.example.test"
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.MaxLineLength == 0 {
		o.MaxLineLength = 2000
	}
	users := make(map[string]string, len(o.Users))
	for u, p := range o.Users {
		users[u] = p
	}
	o.Users = users
	caps := DefaultCapabilities()
	if o.Capabilities != nil {
		caps = o.Capabilities.clone()
	}
	cert, err := selfsigned.New(&selfsigned.Options{Host: o.Domain, Organization: "smtptest", CA: true})
	if err != nil {
		return nil, fmt.Errorf("smtptest: %w", err)
	}
	return &Server{
		opts:    o,
		tlsCfg:  &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		pool:    selfsigned.Pool(cert),
		addr:    o.Addr,
		caps:    caps,
		faults:  make(map[faultKey]Fault),
		conns:   make(map[int64]*faultConn),
		changed: make(chan struct{}),
	}, nil
}

// NewServer starts a server for a test and stops it when the test ends.
// It fails the test if the server cannot start.
func NewServer(tb testing.TB, opts *Options) *Server {
	tb.Helper()
	s, err := New(opts)
	if err != nil {
		tb.Fatalf("smtptest: %v", err)
	}
	if err := s.Start(); err != nil {
		tb.Fatalf("smtptest: %v", err)
	}
	tb.Cleanup(func() { s.Stop() })
	return s
}

// Start listens (again) and serves connections. After a Stop it listens on
// the same address.
func (s *Server) Start() error {
	s.life.Lock()
	defer s.life.Unlock()
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return ErrRunning
	}
	addr := s.addr
	s.mu.Unlock()

	ln, err := listen(addr)
	if err != nil {
		return fmt.Errorf("smtptest: listen %s: %w", addr, err)
	}
	srv := smtp.NewServer(backend{s})
	srv.Domain = s.opts.Domain
	srv.MaxLineLength = s.opts.MaxLineLength
	// Capabilities and TLS are handled by faultConn (see conn.go), so
	// go-smtp parses every parameter and the session decides.
	srv.AllowInsecureAuth = true
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.Debug = s.opts.Debug
	srv.ErrorLog = slogLogger{s.opts.Logger}

	s.mu.Lock()
	s.addr = ln.Addr().String()
	s.running = true
	s.mu.Unlock()
	s.srv, s.ln = srv, ln
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		srv.Serve(listener{Listener: ln, s: s})
	}()
	return nil
}

// listen binds addr. Port 0 on a loopback IP address is chosen outside
// the ephemeral range: Start after Stop binds the same port again, and a
// port from the ephemeral range may meanwhile have become the local port
// of any outgoing connection on the machine, or the port of another
// listener on port 0.
func listen(addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && port == "0" {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			return loopback.Listen("tcp", host)
		}
	}
	return net.Listen("tcp", addr)
}

// Stop closes the listener and every open connection, and waits until the
// server's goroutines have ended. Recorded messages are kept. Stop on a
// stopped server does nothing.
func (s *Server) Stop() error {
	s.life.Lock()
	defer s.life.Unlock()
	s.mu.Lock()
	if !s.running {
		s.mu.Unlock()
		return nil
	}
	s.running = false
	open := make([]*faultConn, 0, len(s.conns))
	for _, c := range s.conns {
		open = append(open, c)
	}
	s.mu.Unlock()

	// Stop accepting first: go-smtp's Serve must be done adding to its
	// WaitGroup before Shutdown waits on it.
	s.ln.Close()
	s.serveWG.Wait()
	for _, c := range open {
		c.Close()
	}
	// Shutdown waits for the connection goroutines, which end quickly
	// because their connections are closed. Its error is the listener's
	// second Close, which means nothing here.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
	s.srv, s.ln = nil, nil
	s.broadcast()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("smtptest: stopping: connections did not end: %w", err)
	}
	return nil
}

// Restart is Stop followed by Start on the same address.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.Start()
}

// CloseConnections closes every open connection without a reply, as a
// crashing or idle-timing-out server would; the listener stays open.
func (s *Server) CloseConnections() {
	s.mu.Lock()
	open := make([]*faultConn, 0, len(s.conns))
	for _, c := range s.conns {
		open = append(open, c)
	}
	s.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

// Addr returns the listen address, host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Domain returns the host name in the greeting.
func (s *Server) Domain() string { return s.opts.Domain }

// CertPool returns a pool holding the server's certificate, for clients
// that verify it. The certificate is valid for 127.0.0.1, ::1, localhost
// and the server's Domain.
func (s *Server) CertPool() *x509.CertPool { return s.pool }

// ClientTLSConfig returns a client configuration that trusts the server's
// certificate for serverName (use "localhost", "127.0.0.1" or Domain).
func (s *Server) ClientTLSConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: s.pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
}

// Messages returns the messages received so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Conns returns what is known about every connection accepted so far.
func (s *Server) Conns() []ConnInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ConnInfo(nil), s.connInfo...)
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Reset forgets recorded messages, connections and counters (faults and
// capabilities stay).
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = nil
	open := s.stats.Open
	s.stats = Stats{Open: open}
	kept := s.connInfo[:0]
	for _, ci := range s.connInfo {
		if ci.Open {
			kept = append(kept, ci)
		}
	}
	s.connInfo = kept
}

// WaitMessages waits until at least n messages were recorded and returns
// them all, or returns ctx's error.
func (s *Server) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	var out []Message
	_, err := s.Wait(ctx, func(st Stats) bool { return st.Messages >= n })
	if err == nil {
		out = s.Messages()
	}
	return out, err
}

// WaitConns waits until at least n connections were accepted.
func (s *Server) WaitConns(ctx context.Context, n int) error {
	_, err := s.Wait(ctx, func(st Stats) bool { return st.Connections >= n })
	return err
}

// WaitIdle waits until no connection is open.
func (s *Server) WaitIdle(ctx context.Context) error {
	_, err := s.Wait(ctx, func(st Stats) bool { return st.Open == 0 })
	return err
}

// Wait waits until cond holds for the counters and returns them. cond is
// called with no lock held each time something is recorded.
func (s *Server) Wait(ctx context.Context, cond func(Stats) bool) (Stats, error) {
	for {
		s.mu.Lock()
		st, ch := s.stats, s.changed
		s.mu.Unlock()
		if cond(st) {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, fmt.Errorf("smtptest: waiting: %w", ctx.Err())
		}
	}
}

// broadcast wakes waiters. The caller must not hold s.mu.
func (s *Server) broadcast() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.broadcastLocked()
}

func (s *Server) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// update runs f under the lock and wakes waiters.
func (s *Server) update(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
	s.broadcastLocked()
}

func (s *Server) connInfoLocked(id int64) *ConnInfo {
	for i := len(s.connInfo) - 1; i >= 0; i-- {
		if s.connInfo[i].ID == id {
			return &s.connInfo[i]
		}
	}
	return nil
}

// listener hands go-smtp connections wrapped in faultConn.
type listener struct {
	net.Listener
	s *Server
}

func (l listener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	s := l.s
	s.mu.Lock()
	s.nextID++
	c := newFaultConn(s, nc, s.nextID)
	if !s.running {
		s.mu.Unlock()
		nc.Close()
		return c, nil // go-smtp sees a closed connection and ends it
	}
	s.conns[c.id] = c
	s.connInfo = append(s.connInfo, ConnInfo{ID: c.id, RemoteAddr: nc.RemoteAddr().String(), Open: true})
	s.stats.Connections++
	s.stats.Open++
	s.broadcastLocked()
	s.mu.Unlock()
	return c, nil
}

// slogLogger adapts *slog.Logger to go-smtp's Logger.
type slogLogger struct{ l *slog.Logger }

func (l slogLogger) Printf(format string, v ...any) {
	if l.l != nil {
		l.l.Warn(fmt.Sprintf(format, v...))
	}
}

func (l slogLogger) Println(v ...any) {
	if l.l != nil {
		l.l.Warn(fmt.Sprint(v...))
	}
}
