package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/smtpclient"
)

// spool is what the server needs of the Mailer: Send returns once the
// message is durable.
type spool interface {
	Send(ctx context.Context, m *hamail.Message) (string, error)
}

var _ spool = (*hamail.Mailer)(nil)

// ServerOptions configure a Server.
type ServerOptions struct {
	Hostname string
	TLS      *tls.Config // nil: no STARTTLS
	Users    *users
	// TrustedNetworks may send without AUTH.
	TrustedNetworks []netip.Prefix
	InsecureAuth    bool
	MaxMessageBytes int64
	MaxRecipients   int
	MaxConnections  int
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
	// SendTimeout bounds the wait for the queue to make a message durable.
	SendTimeout time.Duration
	Logger      *slog.Logger
	// Submitted, if set, counts each message's result: queued, refused,
	// deferred.
	Submitted func(result string)
	// Now is the clock of the Received fields; nil means time.Now.
	Now func() time.Time
}

// Server is the submission server (RFC 6409): SMTP with STARTTLS (RFC 3207)
// and AUTH PLAIN or LOGIN (RFC 4954, RFC 4616), which answers 250 to the final dot
// only once the message is durable in the queue.
//
// Shutdown stops it gracefully: the listener closes at once; a connection
// between transactions gets a 421 and is closed; a transaction in progress
// runs to its end (its message is queued and acknowledged), then its
// connection is ended the same way.
type Server struct {
	o     ServerOptions
	spool spool
	smtp  *smtp.Server
	log   *slog.Logger
	now   func() time.Time

	users atomic.Pointer[users]

	mu       sync.Mutex
	conns    map[*trackedConn]struct{}
	draining bool
	lns      []net.Listener
	changed  chan struct{} // signalled when a transaction ends
	// serving counts go-smtp's accept loops: only once they have all
	// returned may its Shutdown wait for the connections (its WaitGroup
	// must not be added to while it is waited on).
	serving sync.WaitGroup
}

// NewServer makes a Server; it does no I/O.
func NewServer(o ServerOptions, sp spool) *Server {
	s := &Server{o: o, spool: sp, log: o.Logger, now: o.Now, conns: map[*trackedConn]struct{}{}, changed: make(chan struct{}, 1)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.users.Store(o.Users)
	if s.o.SendTimeout <= 0 {
		s.o.SendTimeout = 2 * time.Minute
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = o.Hostname
	srv.TLSConfig = o.TLS
	srv.AllowInsecureAuth = o.InsecureAuth
	srv.MaxMessageBytes = o.MaxMessageBytes
	srv.MaxRecipients = o.MaxRecipients
	srv.ReadTimeout = o.ReadTimeout
	srv.WriteTimeout = o.WriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = slogLogger{s.log}
	s.smtp = srv
	return s
}

// SetUsers replaces the accounts allowed to AUTH; sessions already
// authenticated keep their identity.
func (s *Server) SetUsers(u *users) { s.users.Store(u) }

// slogLogger adapts go-smtp's logger.
type slogLogger struct{ l *slog.Logger }

func (l slogLogger) Printf(format string, v ...any) { l.l.Debug(fmt.Sprintf(format, v...)) }
func (l slogLogger) Println(v ...any)               { l.l.Debug(fmt.Sprint(v...)) }

// Serve accepts connections on ln until Shutdown, offering STARTTLS. It
// returns nil after a Shutdown. Serve and ServeTLS may be called for several
// listeners.
func (s *Server) Serve(ln net.Listener) error { return s.serve(ln, false) }

// ServeTLS is Serve for implicit TLS: the connection is TLS from its first
// byte (submissions, port 465, RFC 8314 §3.3).
func (s *Server) ServeTLS(ln net.Listener) error { return s.serve(ln, true) }

func (s *Server) serve(ln net.Listener, implicitTLS bool) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns = append(s.lns, ln)
	s.serving.Add(1)
	s.mu.Unlock()
	var l net.Listener = &trackingListener{Listener: ln, s: s, implicitTLS: implicitTLS}
	if implicitTLS {
		if s.o.TLS == nil {
			s.serving.Done()
			return errors.New("relayd: implicit TLS without a certificate")
		}
		l = tls.NewListener(l, s.o.TLS)
	}
	err := s.smtp.Serve(l)
	s.serving.Done()
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		return nil
	}
	return err
}

// Shutdown stops accepting, closes idle connections, lets the transactions
// in progress finish and waits for every connection to end. When ctx ends
// first, the remaining connections are cut (their messages were not
// acknowledged, so the clients still hold them) and ctx's error returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	lns := s.lns
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	loopsDone := make(chan struct{})
	go func() {
		s.serving.Wait()
		close(loopsDone)
	}()
	select {
	case <-loopsDone:
	case <-ctx.Done():
		s.smtp.Close()
		return ctx.Err()
	}
	done := make(chan struct{})
	go func() {
		// go-smtp's Shutdown closes its listeners and waits for the
		// connections; it never cuts one.
		s.smtp.Shutdown(context.Background())
		close(done)
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		s.closeIdle()
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			s.smtp.Close()
			<-done
			return ctx.Err()
		case <-s.changed:
		case <-tick.C:
		}
	}
}

// closeIdle ends every connection that is not inside a transaction.
func (s *Server) closeIdle() {
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeIfIdle()
	}
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// trackingListener registers each connection, and turns away those beyond
// MaxConnections with a 421 (RFC 5321 §3.8).
type trackingListener struct {
	net.Listener
	s           *Server
	implicitTLS bool // a reply in clear would mean nothing to the client
}

func (l *trackingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, s: l.s}
		l.s.mu.Lock()
		full := l.s.o.MaxConnections > 0 && len(l.s.conns) >= l.s.o.MaxConnections
		draining := l.s.draining
		if !full && !draining {
			l.s.conns[tc] = struct{}{}
		}
		l.s.mu.Unlock()
		if full || draining {
			// Not in the accept loop: a client that does not read must
			// not hold up the others.
			go func() {
				if !l.implicitTLS {
					c.SetWriteDeadline(time.Now().Add(5 * time.Second))
					io.WriteString(c, "421 4.7.0 "+l.s.o.Hostname+" too many connections, try again later\r\n")
				}
				c.Close()
			}()
			continue
		}
		return tc, nil
	}
}

// trackedConn is a client connection and whether a transaction is in
// progress on it.
type trackedConn struct {
	net.Conn
	s *Server

	mu      sync.Mutex
	inTxn   bool
	closing bool
	once    sync.Once

	// bodyTimeout, while a message is being received, is the read
	// deadline renewed before every read of the connection: go-smtp sets
	// one deadline when DATA arrives, and its data reader fills a whole
	// buffer per call, so only the connection sees each block arrive.
	bodyTimeout atomic.Int64

	// authFailures counts refused AUTH attempts; past maxAuthFailures the
	// connection may not try again (a password guesser must reconnect,
	// within MaxConnections).
	authFailures int
}

const maxAuthFailures = 3

func (c *trackedConn) Read(p []byte) (int, error) {
	if d := time.Duration(c.bodyTimeout.Load()); d > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(d))
	}
	return c.Conn.Read(p)
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return err
}

// begin marks the start of a transaction (MAIL); it fails once the
// connection is being closed for shutdown.
func (c *trackedConn) begin() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.inTxn = true
	return true
}

// end marks the end of a transaction (after the reply to the final dot,
// RSET, or the end of the session).
func (c *trackedConn) end() {
	c.mu.Lock()
	c.inTxn = false
	c.mu.Unlock()
	select {
	case c.s.changed <- struct{}{}:
	default:
	}
}

func (c *trackedConn) closeIfIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inTxn {
		return
	}
	c.closing = true
	// Not Close: a reply may be on its way (go-smtp ends a transaction
	// before it answers RSET). A read deadline in the past fails the read
	// of the next command instead, go-smtp answers it with a 421 and
	// closes (RFC 5321 §3.8). go-smtp sets its own deadline before each
	// command, so this is done again at every pass until the end.
	c.Conn.SetReadDeadline(time.Now())
}

// unwrap finds the trackedConn under a connection go-smtp hands over (a
// *tls.Conn after STARTTLS).
func unwrap(c net.Conn) *trackedConn {
	for {
		switch v := c.(type) {
		case *trackedConn:
			return v
		case *tls.Conn:
			c = v.NetConn()
		default:
			return nil
		}
	}
}

// session is one SMTP session (a new one after STARTTLS, RFC 3207 §4.2).
type session struct {
	s      *Server
	tc     *trackedConn
	helo   string
	remote string
	tls    *tls.ConnectionState
	user   string
	users  *users // the accounts user was checked against
	// trusted: the client is in TrustedNetworks and may send without AUTH.
	trusted bool

	from     string
	mailOpts smtp.MailOptions
	rcpts    []string
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	netc := c.Conn()
	tc := unwrap(netc)
	if tc == nil {
		return nil, errors.New("relayd: connection not tracked")
	}
	ss := &session{s: s, tc: tc, helo: c.Hostname(), remote: netc.RemoteAddr().String()}
	if ap, err := netip.ParseAddrPort(ss.remote); err == nil {
		for _, p := range s.o.TrustedNetworks {
			if p.Contains(ap.Addr().Unmap()) {
				ss.trusted = true
				break
			}
		}
	}
	if st, ok := c.TLSConnectionState(); ok {
		ss.tls = &st
	}
	return ss, nil
}

func smtpErr(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

var errShuttingDown = smtpErr(421, smtp.EnhancedCode{4, 3, 2}, "Service shutting down, try again later")

// AuthMechanisms offers PLAIN and LOGIN when there are accounts; go-smtp
// offers AUTH only under TLS unless InsecureAuth is set (RFC 4954 §4: no
// plain passwords in clear).
func (ss *session) AuthMechanisms() []string {
	if ss.s.users.Load() == nil {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.tc.authFailures >= maxAuthFailures {
		return nil, smtpErr(421, smtp.EnhancedCode{4, 7, 0}, "Too many authentication failures on this connection")
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(ss.authenticate), nil
	case sasl.Login:
		// Outlook, older PHP mailers and many devices know only LOGIN.
		return &loginServer{auth: func(user, pass string) error { return ss.authenticate("", user, pass) }}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// authenticate checks credentials (authzid, authcid, password: RFC 4616).
func (ss *session) authenticate(identity, username, password string) error {
	us := ss.s.users.Load()
	if us == nil || !sameIdentity(identity, username) || us.verify(username, password) != nil {
		ss.tc.authFailures++
		ss.s.log.Warn("auth failed", "remote", ss.remote, "user", username, "failures", ss.tc.authFailures)
		return smtp.ErrAuthFailed
	}
	ss.user, ss.users = username, us
	ss.s.log.Debug("auth", "remote", ss.remote, "user", username)
	return nil
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): "Username:" and "Password:" challenges, the
// username possibly sent as the initial response.
type loginServer struct {
	auth func(user, pass string) error
	step int
	user string
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		if response == nil {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.user, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.user, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.auth(l.user, string(response))
	}
	return nil, true, errors.New("relayd: unexpected LOGIN response")
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.user == "" && !ss.trusted {
		// RFC 4954 §6: 530 5.7.0 Authentication required.
		return smtpErr(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required")
	}
	if from != "" {
		if _, err := smtpclient.ParseAddress(from); err != nil {
			return smtpErr(553, smtp.EnhancedCode{5, 1, 7}, "Bad sender address syntax")
		}
	}
	if ss.user != "" && !ss.users.mayUse(ss.user, from) {
		ss.s.log.Warn("sender refused", "remote", ss.remote, "user", ss.user, "from", from)
		// RFC 6409 §6.1: the MSA may check that the sender is the
		// authenticated user's.
		return smtpErr(553, smtp.EnhancedCode{5, 7, 1}, "Sender address not allowed for this user")
	}
	if ss.s.isDraining() || !ss.tc.begin() {
		return errShuttingDown
	}
	ss.from = from
	if opts != nil {
		ss.mailOpts = *opts
	}
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if _, err := smtpclient.ParseAddress(to); err != nil {
		return smtpErr(553, smtp.EnhancedCode{5, 1, 3}, "Bad recipient address syntax")
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

// Data queues the message and returns only once the queue holds it durably:
// the 250 that go-smtp then sends is the promise RFC 5321 §4.1.1.4 speaks of
// ("the receiver MUST be able to deliver it"), so it must survive a crash.
func (ss *session) Data(r io.Reader) error {
	id := newTxnID()
	body := &bodyReader{r: r}
	if t := ss.s.o.ReadTimeout; t > 0 {
		ss.tc.bodyTimeout.Store(int64(t))
		defer ss.tc.bodyTimeout.Store(0)
	}
	msg := &hamail.Message{
		From:     ss.from,
		To:       ss.rcpts,
		Body:     io.MultiReader(strings.NewReader(ss.received(id)), newHeaderCompleter(body, ss.s.o.Hostname, id, ss.s.now())),
		SMTPUTF8: ss.mailOpts.UTF8,
	}
	// The message's fate must not depend on a signal that arrives while
	// it is being written: the session ends its transaction first.
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.o.SendTimeout)
	defer cancel()
	start := time.Now()
	qid, err := ss.s.spool.Send(ctx, msg)
	if err != nil {
		reply := ss.failure(err, body.err)
		if reply.Code >= 500 {
			ss.s.count("refused")
		} else {
			ss.s.count("deferred")
		}
		return reply
	}
	ss.s.count("queued")
	ss.s.log.Info("queued", "id", qid, "user", ss.user, "from", ss.from, "rcpts", len(ss.rcpts), "bytes", body.n, "took", time.Since(start))
	return smtpErr(250, smtp.EnhancedCode{2, 0, 0}, "OK queued as "+qid)
}

// failure is the reply to a message the queue did not take.
func (ss *session) failure(err, bodyErr error) *smtp.SMTPError {
	if bodyErr != nil {
		// The client's side failed (too big, connection lost, timeout);
		// go-smtp's data reader errors are SMTP replies already.
		ss.s.log.Info("message not received", "remote", ss.remote, "user", ss.user, "err", bodyErr)
		var se *smtp.SMTPError
		if errors.As(bodyErr, &se) {
			return se
		}
		if errors.Is(bodyErr, smtp.ErrTooLongLine) {
			// RFC 5321 §4.5.3.1.6: the line is longer than this server
			// accepts; sending it again will not help.
			return smtpErr(554, smtp.EnhancedCode{5, 6, 0}, "Message has a line too long")
		}
		return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Error reading the message")
	}
	if errors.Is(err, hamail.ErrInvalidMessage) {
		ss.s.log.Warn("message refused", "remote", ss.remote, "user", ss.user, "err", err)
		return smtpErr(554, smtp.EnhancedCode{5, 6, 0}, "Message refused: "+firstLine(err.Error()))
	}
	if errors.Is(err, queue.ErrStorageFull) {
		// RFC 5321 §4.2.3 452, RFC 3463 4.3.1: mail system full.
		ss.s.log.Error("queue full", "remote", ss.remote, "user", ss.user, "err", err)
		return smtpErr(452, smtp.EnhancedCode{4, 3, 1}, "Queue full, try again later")
	}
	ss.s.log.Error("queue failed", "remote", ss.remote, "user", ss.user, "err", err)
	return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "Queue unavailable, try again later")
}

func (ss *session) Reset() {
	ss.from, ss.rcpts, ss.mailOpts = "", nil, smtp.MailOptions{}
	ss.tc.end()
}

func (ss *session) Logout() error {
	ss.Reset()
	return nil
}

// received is the trace field this server prepends (RFC 5321 §4.4), with
// the protocol keyword of RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA).
func (ss *session) received(id string) string {
	proto := "ESMTP"
	if ss.tls != nil {
		proto += "S"
	}
	if ss.user != "" {
		proto += "A"
	}
	host, _, _ := net.SplitHostPort(ss.remote)
	if strings.Contains(host, ":") {
		host = "IPv6:" + host // an address literal (RFC 5321 §4.1.3)
	}
	tlsInfo := ""
	if ss.tls != nil {
		tlsInfo = fmt.Sprintf("\r\n\t(using %s with cipher %s)", tls.VersionName(ss.tls.Version), tls.CipherSuiteName(ss.tls.CipherSuite))
	}
	return fmt.Sprintf("Received: from %s ([%s])\r\n\tby %s (relayd) with %s id %s%s;\r\n\t%s\r\n",
		sanitize(ss.helo), host, ss.s.o.Hostname, proto, id, tlsInfo, ss.s.now().Format(time.RFC1123Z))
}

// sanitize keeps a client-given name from breaking the header.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x21 || r > 0x7e || r == '(' || r == ')' || r == ';' {
			return '_'
		}
		return r
	}, s)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func newTxnID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// bodyReader reads the message, counting bytes and keeping the first error.
type bodyReader struct {
	r   io.Reader
	n   int64
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

func (s *Server) count(result string) {
	if s.o.Submitted != nil {
		s.o.Submitted(result)
	}
}
