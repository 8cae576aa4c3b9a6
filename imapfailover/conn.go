package imapfailover

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// watchConn is the TCP connection under go-imap's client. go-imap waits
// for the start of a response without any deadline, so a silent server
// would hang a command forever; while armed, watchConn gives reads a
// deadline of "timeout after the last byte received", so a stalled
// command fails, and the client then closes the connection. Deadlines that
// go-imap sets itself are kept when they are sooner.
//
// It also bounds the length of a response line: go-imap buffers a whole
// line in memory, so a server sending one without end would exhaust it.
// Literals (message bodies) count too; mail has a line break at least
// every 998 octets (RFC 5322 §2.1.1), so only a broken or hostile server
// reaches the limit.
type watchConn struct {
	net.Conn
	maxLine int

	mu      sync.Mutex
	armed   time.Duration
	libRead time.Time

	line     int // bytes read since the last LF; only Read touches it
	timedOut atomic.Bool
	tooLong  atomic.Bool
}

func (w *watchConn) effectiveLocked() time.Time {
	if w.armed <= 0 {
		return w.libRead
	}
	d := time.Now().Add(w.armed)
	if !w.libRead.IsZero() && w.libRead.Before(d) {
		return w.libRead
	}
	return d
}

func (w *watchConn) arm(d time.Duration) {
	w.mu.Lock()
	w.armed = d
	t := w.effectiveLocked()
	w.mu.Unlock()
	_ = w.Conn.SetReadDeadline(t)
}

func (w *watchConn) disarm() { w.arm(0) }

func (w *watchConn) Read(b []byte) (int, error) {
	n, err := w.Conn.Read(b)
	if i := bytes.LastIndexByte(b[:n], '\n'); i >= 0 {
		w.line = n - i - 1
	} else {
		w.line += n
	}
	if w.maxLine > 0 && w.line > w.maxLine {
		w.tooLong.Store(true)
		w.Conn.Close()
		return 0, ErrLineTooLong
	}
	if n > 0 {
		w.mu.Lock()
		if w.armed > 0 {
			// Progress: the server is alive, extend the deadline.
			_ = w.Conn.SetReadDeadline(w.effectiveLocked())
		}
		w.mu.Unlock()
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		w.timedOut.Store(true)
	}
	return n, err
}

func (w *watchConn) SetReadDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.libRead = t
	return w.Conn.SetReadDeadline(w.effectiveLocked())
}

func (w *watchConn) SetDeadline(t time.Time) error {
	if err := w.SetReadDeadline(t); err != nil {
		return err
	}
	return w.Conn.SetWriteDeadline(t)
}

// Conn is an authenticated connection to one replica, lent by a Pool.
// Every command runs through Exec, which bounds it by the context and by
// Options.CommandTimeout. A Conn is used by one goroutine at a time.
type Conn struct {
	pool    *Pool
	rep     *replicaState
	raw     *watchConn
	client  *imapclient.Client
	caps    imap.CapSet
	opened  time.Time
	dirty   atomic.Bool
	notify  chan struct{} // a token when the server sent unsolicited data
	broken  atomic.Bool
	byCtx   atomic.Bool
	lastUse time.Time

	selected   string
	selectedRO bool
	selectData *imap.SelectData
}

// Replica returns the name of the replica the connection is open to.
func (c *Conn) Replica() string { return c.rep.name }

// Caps returns the capabilities the server announced after authentication.
func (c *Conn) Caps() imap.CapSet { return c.caps }

// Broken reports whether the connection failed and will not be reused.
func (c *Conn) Broken() bool {
	if c.broken.Load() {
		return true
	}
	select {
	case <-c.client.Closed():
		c.broken.Store(true)
		return true
	default:
		return false
	}
}

// unilateral turns every unsolicited response into a resync mark: the
// data itself cannot be trusted (go-imap delivers unsolicited FETCH on its
// own goroutine, possibly after a later EXPUNGE).
func (c *Conn) unilateral() *imapclient.UnilateralDataHandler {
	return &imapclient.UnilateralDataHandler{
		Expunge: func(uint32) { c.markDirty() },
		Mailbox: func(*imapclient.UnilateralDataMailbox) { c.markDirty() },
		Fetch: func(msg *imapclient.FetchMessageData) {
			c.markDirty()
			for msg.Next() != nil {
				// drain, or the reader blocks
			}
		},
	}
}

func (c *Conn) markDirty() {
	c.dirty.Store(true)
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// Exec runs fn with the connection's go-imap client. While fn runs, the
// connection is closed if ctx ends or if the server sends nothing for
// Options.CommandTimeout; fn then fails and the Conn is Broken. The error
// is an *Error: ErrTimeout, ErrConnLost or the context's error when the
// connection broke, or the server's *imap.Error (the connection stays
// usable). fn must finish every command it starts (Wait, Close).
func (c *Conn) Exec(ctx context.Context, op string, fn func(*imapclient.Client) error) error {
	return c.exec(ctx, op, c.pool.opts.CommandTimeout, fn)
}

func (c *Conn) exec(ctx context.Context, op string, timeout time.Duration, fn func(*imapclient.Client) error) error {
	if c.Broken() {
		return &Error{Replica: c.rep.name, Op: op, Err: ErrConnLost}
	}
	if err := ctx.Err(); err != nil {
		return &Error{Replica: c.rep.name, Op: op, Err: err}
	}
	c.raw.arm(timeout)
	stop := context.AfterFunc(ctx, func() {
		c.byCtx.Store(true)
		c.raw.Conn.Close()
	})
	err := fn(c.client)
	stop()
	c.raw.disarm()
	c.lastUse = c.pool.opts.Now()
	if err == nil {
		return nil
	}
	var imapErr *imap.Error
	switch {
	case c.byCtx.Load():
		c.broken.Store(true)
		cause := ctx.Err()
		if cause == nil {
			cause = context.Canceled
		}
		return &Error{Replica: c.rep.name, Op: op, Err: cause}
	case c.raw.tooLong.Load():
		c.broken.Store(true)
		return &Error{Replica: c.rep.name, Op: op, Err: ErrLineTooLong}
	case c.raw.timedOut.Load():
		c.broken.Store(true)
		c.raw.Conn.Close()
		return &Error{Replica: c.rep.name, Op: op, Err: ErrTimeout}
	case c.Broken():
		return &Error{Replica: c.rep.name, Op: op, Err: fmt.Errorf("%w: %w", ErrConnLost, err)}
	case errors.As(err, &imapErr):
		return &Error{Replica: c.rep.name, Op: op, Err: err}
	default:
		// An error we cannot place (a protocol violation, a local I/O
		// failure): the connection's state is unknown, do not reuse it.
		c.broken.Store(true)
		c.raw.Conn.Close()
		return &Error{Replica: c.rep.name, Op: op, Err: fmt.Errorf("%w: %w", ErrConnLost, err)}
	}
}

// Noop sends NOOP (RFC 3501 §6.1.2): a round trip that proves the server
// still answers.
func (c *Conn) Noop(ctx context.Context) error {
	return c.Exec(ctx, "noop", func(cl *imapclient.Client) error { return cl.Noop().Wait() })
}

// Select opens mailbox (EXAMINE when readOnly) with CONDSTORE when the
// server offers it (RFC 7162 §3.1.8), and returns the SELECT data.
func (c *Conn) Select(ctx context.Context, mailbox string, readOnly bool) (*imap.SelectData, error) {
	c.selected = ""
	var data *imap.SelectData
	err := c.Exec(ctx, "select", func(cl *imapclient.Client) error {
		var err error
		data, err = cl.Select(mailbox, &imap.SelectOptions{
			ReadOnly:  readOnly,
			CondStore: c.caps.Has(imap.CapCondStore),
		}).Wait()
		return err
	})
	if err != nil {
		return nil, err
	}
	c.selected, c.selectedRO, c.selectData = mailbox, readOnly, data
	return data, nil
}

// ensureSelected selects mailbox unless it already is; a read-write
// selection serves read-only callers too.
func (c *Conn) ensureSelected(ctx context.Context, mailbox string, readOnly bool) (*imap.SelectData, error) {
	if c.selected == mailbox && (readOnly || !c.selectedRO) && !c.dirty.Load() {
		return c.selectData, nil
	}
	return c.Select(ctx, mailbox, readOnly)
}

// close closes the connection without LOGOUT.
func (c *Conn) close() {
	c.broken.Store(true)
	c.raw.Conn.Close()
	<-c.client.Closed()
}

// dial opens, protects, greets and authenticates a connection to rs.
func (p *Pool) dial(ctx context.Context, rs *replicaState) (*Conn, error) {
	cfg := &rs.cfg
	dctx, cancel := context.WithTimeout(ctx, p.opts.DialTimeout)
	defer cancel()
	nc, err := p.opts.Dial(dctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, &Error{Replica: rs.name, Op: "dial", Err: err}
	}
	wc := &watchConn{Conn: nc, maxLine: p.opts.MaxLineLength}
	wc.arm(p.opts.DialTimeout)
	// The whole handshake is bounded by DialTimeout and ctx.
	stop := context.AfterFunc(dctx, func() { nc.Close() })
	defer stop()

	tlsCfg := cfg.TLSConfig
	if cfg.TLS != TLSNone {
		if tlsCfg == nil {
			tlsCfg = &tls.Config{}
		} else {
			tlsCfg = tlsCfg.Clone()
		}
		if tlsCfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(cfg.Addr)
			tlsCfg.ServerName = host
		}
	}
	c := &Conn{pool: p, rep: rs, raw: wc, notify: make(chan struct{}, 1), opened: p.opts.Now()}
	copts := &imapclient.Options{UnilateralDataHandler: c.unilateral(), TLSConfig: tlsCfg}
	fail := func(op string, err error) (*Conn, error) {
		nc.Close()
		if c.client != nil {
			<-c.client.Closed()
		}
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case wc.tooLong.Load():
			err = ErrLineTooLong
		case dctx.Err() != nil || wc.timedOut.Load():
			err = fmt.Errorf("%w: %w", ErrTimeout, err)
		}
		return nil, &Error{Replica: rs.name, Op: op, Err: err}
	}
	switch cfg.TLS {
	case TLSImplicit:
		tc := tls.Client(wc, tlsCfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			return fail("tls", err)
		}
		c.client = imapclient.New(tc, copts)
	case TLSStartTLS:
		cl, err := imapclient.NewStartTLS(wc, copts)
		if err != nil {
			return fail("starttls", err)
		}
		c.client = cl
	default:
		c.client = imapclient.New(wc, copts)
	}
	if err := c.client.WaitGreeting(); err != nil {
		return fail("greeting", err)
	}
	if cfg.SASL != nil {
		if err := c.client.Authenticate(cfg.SASL()); err != nil {
			return fail("authenticate", err)
		}
	} else if err := c.client.Login(cfg.Username, cfg.Password).Wait(); err != nil {
		return fail("login", err)
	}
	c.caps = c.client.Caps()
	if c.caps == nil {
		return fail("capability", errors.New("no capabilities"))
	}
	wc.disarm()
	if dctx.Err() != nil {
		return fail("dial", dctx.Err())
	}
	c.lastUse = p.opts.Now()
	return c, nil
}
