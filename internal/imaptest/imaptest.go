package imaptest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"github.com/hamail/hamail/internal/loopback"
	"github.com/hamail/hamail/internal/selfsigned"
)

// Default credentials of the user every replica holds.
const (
	DefaultUsername = "alice@example.org"
	DefaultPassword = "alice-secret"
)

// TLSMode says how the replicas offer TLS.
type TLSMode int

const (
	// TLSNone: plain text only.
	TLSNone TLSMode = iota
	// TLSStartTLS: plain text with STARTTLS (RFC 3501 §6.2.1).
	TLSStartTLS
	// TLSImplicit: TLS from the first byte (RFC 8314 §3.3).
	TLSImplicit
)

// Options configure a Set. A nil *Options or a zero field means the default.
type Options struct {
	// Replicas is the number of servers; default 2.
	Replicas int
	// Username and Password of the user; default DefaultUsername and
	// DefaultPassword.
	Username, Password string
	// Mailboxes created on every replica at start; default INBOX.
	Mailboxes []string
	// TLS selects how TLS is offered; default TLSNone.
	TLS TLSMode
	// NoIdle makes the replicas look like servers without IDLE (RFC
	// 2177): IMAP4rev2 and IDLE are removed from the capabilities they
	// announce. An IDLE sent anyway is still served (imapserver answers it
	// before asking the session) and counted by Replica.Idles. Not with
	// TLSStartTLS.
	NoIdle bool
}

// Set is a group of replicas holding the same mailboxes.
type Set struct {
	noIdle    bool
	username  string
	password  string
	tlsServer *tls.Config
	tlsClient *tls.Config
	tlsMode   TLSMode

	mu       sync.Mutex // serialises changes so UIDs are assigned in one order
	replicas []*Replica
}

// Replica is one server of a Set.
type Replica struct {
	name string
	set  *Set
	mem  *imapmemserver.Server
	user *imapmemserver.User

	mu       sync.Mutex
	addr     string
	srv      *imapserver.Server
	done     chan struct{} // closed when the Serve goroutine returns
	sessions int
	idles    int
}

// ErrUnknownReplica is returned when a change names a replica index the
// Set does not have.
var ErrUnknownReplica = errors.New("imaptest: unknown replica")

// DivergedError reports that the replicas a message was appended to gave
// it different UIDs: their content had already diverged.
type DivergedError struct {
	Mailbox string
	UIDs    map[string]imap.UID // replica name → UID
}

func (e *DivergedError) Error() string {
	return fmt.Sprintf("imaptest: replicas gave different UIDs in %s: %v", e.Mailbox, e.UIDs)
}

// NewSet starts a Set for a test; the test fails if it cannot start, and
// the Set is closed by the test's Cleanup.
func NewSet(t testing.TB, opts *Options) *Set {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Start starts a Set outside a test (in an Example, a demonstration
// program); Close stops it.
func Start(opts *Options) (*Set, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Replicas <= 0 {
		o.Replicas = 2
	}
	if o.Username == "" {
		o.Username = DefaultUsername
	}
	if o.Password == "" {
		o.Password = DefaultPassword
	}
	if len(o.Mailboxes) == 0 {
		o.Mailboxes = []string{"INBOX"}
	}
	s := &Set{username: o.Username, password: o.Password, tlsMode: o.TLS, noIdle: o.NoIdle}
	if o.TLS != TLSNone {
		srvCfg, cliCfg, err := selfSigned()
		if err != nil {
			return nil, fmt.Errorf("imaptest: certificate: %w", err)
		}
		s.tlsServer, s.tlsClient = srvCfg, cliCfg
	}
	for i := range o.Replicas {
		r := &Replica{name: fmt.Sprintf("imap%d", i+1), set: s, mem: imapmemserver.New()}
		r.user = imapmemserver.NewUser(o.Username, o.Password)
		r.mem.AddUser(r.user)
		for _, mb := range o.Mailboxes {
			if err := r.user.Create(mb, nil); err != nil {
				s.Close()
				return nil, fmt.Errorf("imaptest: create %s: %w", mb, err)
			}
		}
		r.addr = "127.0.0.1:0"
		if err := r.Start(); err != nil {
			s.Close()
			return nil, fmt.Errorf("imaptest: start %s: %w", r.name, err)
		}
		s.replicas = append(s.replicas, r)
	}
	return s, nil
}

// Close stops every replica.
func (s *Set) Close() {
	for _, r := range s.replicas {
		_ = r.Stop()
	}
}

// Len returns the number of replicas.
func (s *Set) Len() int { return len(s.replicas) }

// Replica returns replica i (0-based).
func (s *Set) Replica(i int) *Replica { return s.replicas[i] }

// Replicas returns all replicas in order.
func (s *Set) Replicas() []*Replica { return append([]*Replica(nil), s.replicas...) }

// Username returns the user's login name.
func (s *Set) Username() string { return s.username }

// Password returns the user's password.
func (s *Set) Password() string { return s.password }

// ClientTLSConfig returns a client configuration that trusts the replicas'
// certificate, or nil when the Set has no TLS.
func (s *Set) ClientTLSConfig() *tls.Config {
	if s.tlsClient == nil {
		return nil
	}
	return s.tlsClient.Clone()
}

func (s *Set) pick(on []int) ([]*Replica, error) {
	if len(on) == 0 {
		return s.replicas, nil
	}
	rs := make([]*Replica, 0, len(on))
	for _, i := range on {
		if i < 0 || i >= len(s.replicas) {
			return nil, fmt.Errorf("%w: %d", ErrUnknownReplica, i)
		}
		rs = append(rs, s.replicas[i])
	}
	return rs, nil
}

// Create creates a mailbox on the replicas named by index (all when none).
func (s *Set) Create(mailbox string, on ...int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, err := s.pick(on)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := r.user.Create(mailbox, nil); err != nil {
			return fmt.Errorf("imaptest: %s: create %s: %w", r.name, mailbox, err)
		}
	}
	return nil
}

type literal struct {
	*bytes.Reader
}

// Append stores msg in mailbox on the replicas named by index (all when
// none) with the given flags and returns its UID. If the replicas assign
// different UIDs the message is stored anyway and a *DivergedError is
// returned with the first replica's UID.
func (s *Set) Append(mailbox string, msg []byte, flags []imap.Flag, on ...int) (imap.UID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, err := s.pick(on)
	if err != nil {
		return 0, err
	}
	// One internal date for every copy, as replication would keep it.
	when := time.Now().Truncate(time.Second)
	uids := make(map[string]imap.UID, len(rs))
	var first imap.UID
	diverged := false
	for i, r := range rs {
		data, err := r.user.Append(mailbox, literal{bytes.NewReader(msg)}, &imap.AppendOptions{Flags: flags, Time: when})
		if err != nil {
			return 0, fmt.Errorf("imaptest: %s: append to %s: %w", r.name, mailbox, err)
		}
		uids[r.name] = data.UID
		if i == 0 {
			first = data.UID
		} else if data.UID != first {
			diverged = true
		}
	}
	if diverged {
		return first, &DivergedError{Mailbox: mailbox, UIDs: uids}
	}
	return first, nil
}

// withSession runs f with mailbox selected in a server-side session of r.
func (r *Replica) withSession(mailbox string, f func(*imapmemserver.UserSession) error) error {
	sess := imapmemserver.NewUserSession(r.user)
	defer sess.Close()
	if _, err := sess.Select(mailbox, nil); err != nil {
		return fmt.Errorf("imaptest: %s: select %s: %w", r.name, mailbox, err)
	}
	return f(sess)
}

// Store changes the flags of the messages with the given UIDs on the
// replicas named by index (all when none).
func (s *Set) Store(mailbox string, uids imap.UIDSet, op imap.StoreFlagsOp, flags []imap.Flag, on ...int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, err := s.pick(on)
	if err != nil {
		return err
	}
	for _, r := range rs {
		err := r.withSession(mailbox, func(sess *imapmemserver.UserSession) error {
			// Silent: the server writes no FETCH response, so no writer is needed.
			return sess.Store(nil, uids, &imap.StoreFlags{Op: op, Silent: true, Flags: flags}, nil)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Expunge removes the messages with the given UIDs on the replicas named by
// index (all when none). Sessions that have the mailbox selected are told
// with EXPUNGE responses.
func (s *Set) Expunge(mailbox string, uids imap.UIDSet, on ...int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, err := s.pick(on)
	if err != nil {
		return err
	}
	for _, r := range rs {
		err := r.withSession(mailbox, func(sess *imapmemserver.UserSession) error {
			err := sess.Store(nil, uids, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil)
			if err != nil {
				return err
			}
			return sess.Expunge(nil, &uids)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// ResetUIDValidity gives mailbox a new UIDVALIDITY on the replicas named by
// index (all when none): the mailbox is recreated and its messages copied
// back in UID order with their flags and internal dates, so they get new
// UIDs from 1. Replicas reset together get the same new UIDVALIDITY. It
// returns the first replica's new UIDVALIDITY.
func (s *Set) ResetUIDValidity(mailbox string, on ...int) (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, err := s.pick(on)
	if err != nil {
		return 0, err
	}
	var first uint32
	for i, r := range rs {
		v, err := r.resetUIDValidity(mailbox)
		if err != nil {
			return 0, err
		}
		if i == 0 {
			first = v
		}
	}
	return first, nil
}

func (r *Replica) resetUIDValidity(mailbox string) (uint32, error) {
	tmp := mailbox + ".imaptest-reset"
	if err := r.user.Rename(mailbox, tmp, nil); err != nil {
		return 0, fmt.Errorf("imaptest: %s: rename %s: %w", r.name, mailbox, err)
	}
	// Create allocates the next UIDVALIDITY of the user (RFC 3501
	// §2.3.1.1: a new mailbox with an old name must get a new one).
	if err := r.user.Create(mailbox, nil); err != nil {
		return 0, fmt.Errorf("imaptest: %s: create %s: %w", r.name, mailbox, err)
	}
	err := r.withSession(tmp, func(sess *imapmemserver.UserSession) error {
		all := imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}
		_, err := sess.Copy(all, mailbox)
		return err
	})
	if err != nil {
		return 0, err
	}
	if err := r.user.Delete(tmp); err != nil {
		return 0, fmt.Errorf("imaptest: %s: delete %s: %w", r.name, tmp, err)
	}
	st, err := r.Status(mailbox)
	if err != nil {
		return 0, err
	}
	return st.UIDValidity, nil
}

// Name returns the replica's name: imap1, imap2, …
func (r *Replica) Name() string { return r.name }

// Addr returns the replica's address (host:port); it stays the same across
// Stop and Start.
func (r *Replica) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr
}

// Running reports whether the replica accepts connections.
func (r *Replica) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.srv != nil
}

// Sessions returns how many connections the replica has accepted since the
// Set started.
func (r *Replica) Sessions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions
}

// Idles returns how many IDLE commands the replica has received.
func (r *Replica) Idles() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.idles
}

// Start listens on the replica's address again after Stop. It is a no-op
// when the replica is running.
func (r *Replica) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		return nil
	}
	ln, err := listen(r.addr)
	if err != nil {
		return fmt.Errorf("imaptest: %s: listen %s: %w", r.name, r.addr, err)
	}
	if r.set.tlsMode == TLSImplicit {
		ln = tls.NewListener(ln, r.set.tlsServer)
	}
	if r.set.noIdle {
		ln = noIdleListener{ln}
	}
	r.addr = ln.Addr().String()
	opts := &imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			r.mu.Lock()
			r.sessions++
			r.mu.Unlock()
			return &session{replica: r}, nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true, // loopback only
		Logger:       discardLogger{},
	}
	if r.set.tlsMode == TLSStartTLS {
		opts.TLSConfig = r.set.tlsServer
	}
	srv := imapserver.New(opts)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
		// Serve leaves ln open when Close came first (a Stop right after
		// Start), which would keep the address taken.
		ln.Close()
	}()
	r.srv, r.done = srv, done
	return nil
}

// listen binds addr, retrying for a short bounded time: right after Stop
// the kernel may still hold the port for a moment.
func listen(addr string) (net.Listener, error) {
	// An automatic loopback port is taken outside the kernel's ephemeral
	// range, so that Stop and Start find it free again: a port from that
	// range may meanwhile be the local end of any outgoing connection.
	if host, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		return loopback.Listen("tcp", host)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop closes the listener and every live connection; the data stays. It
// is a no-op when the replica is stopped.
func (r *Replica) Stop() error {
	r.mu.Lock()
	srv, done := r.srv, r.done
	r.srv, r.done = nil, nil
	r.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Close()
	<-done
	return err
}

// Status returns the replica's view of mailbox: UIDVALIDITY, UIDNEXT and
// the number of messages.
func (r *Replica) Status(mailbox string) (*imap.StatusData, error) {
	st, err := r.user.Status(mailbox, &imap.StatusOptions{UIDValidity: true, UIDNext: true, NumMessages: true})
	if err != nil {
		return nil, fmt.Errorf("imaptest: %s: status %s: %w", r.name, mailbox, err)
	}
	return st, nil
}

// Search returns the UIDs of the messages of mailbox that match criteria
// on this replica, in ascending order.
func (r *Replica) Search(mailbox string, criteria *imap.SearchCriteria) ([]imap.UID, error) {
	if criteria == nil {
		criteria = &imap.SearchCriteria{}
	}
	var uids []imap.UID
	err := r.withSession(mailbox, func(sess *imapmemserver.UserSession) error {
		data, err := sess.Search(imapserver.NumKindUID, criteria, &imap.SearchOptions{})
		if err != nil {
			return err
		}
		uids = data.AllUIDs()
		return nil
	})
	return uids, err
}

// SearchMessageID returns the UIDs of the messages of mailbox whose
// Message-ID header contains id.
func (r *Replica) SearchMessageID(mailbox, id string) ([]imap.UID, error) {
	return r.Search(mailbox, &imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: id}}})
}

// session is imapmemserver's session with two differences: it
// authenticates against the replica's user, and IDLE first reports the
// changes queued since the last command. imapmemserver's IDLE waits only
// for changes made after it started, so a message appended between a
// client's last command and its IDLE would go unreported until the next
// command; real servers (Dovecot) report it at once (RFC 2177 allows
// updates at any time during IDLE).
type session struct {
	*imapmemserver.UserSession // nil until login
	replica                    *Replica
}

var _ imapserver.SessionIMAP4rev2 = (*session)(nil)

func (s *session) Login(username, password string) error {
	if err := s.replica.user.Login(username, password); err != nil {
		return imapserver.ErrAuthFailed
	}
	s.UserSession = imapmemserver.NewUserSession(s.replica.user)
	return nil
}

func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	r := s.replica
	r.mu.Lock()
	r.idles++
	r.mu.Unlock()
	if err := s.UserSession.Poll(w, true); err != nil {
		return err
	}
	return s.UserSession.Idle(w, stop)
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}

// selfSigned makes a certificate for imap.example.org, localhost,
// 127.0.0.1 and ::1 valid for a day, and the client configuration that
// trusts it.
func selfSigned() (server, client *tls.Config, err error) {
	cert, err := selfsigned.New(&selfsigned.Options{Host: "imap.example.org", CA: true})
	if err != nil {
		return nil, nil, err
	}
	server = &tls.Config{Certificates: []tls.Certificate{cert}}
	client = &tls.Config{RootCAs: selfsigned.Pool(cert), ServerName: "127.0.0.1"}
	return server, client, nil
}

// noIdleListener hides IDLE from the capabilities the server announces.
type noIdleListener struct{ net.Listener }

func (l noIdleListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return noIdleConn{c}, nil
}

type noIdleConn struct{ net.Conn }

func (c noIdleConn) Write(b []byte) (int, error) {
	if !bytes.Contains(b, []byte("CAPABILITY")) {
		return c.Conn.Write(b)
	}
	out := bytes.ReplaceAll(b, []byte(" IMAP4rev2"), nil)
	out = bytes.ReplaceAll(out, []byte(" IDLE"), nil)
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
