package health

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Prober runs one active probe of a target. It must return once ctx ends
// (the checker bounds each probe with the target's Timeout through ctx)
// and returns nil when the target is fit to use.
type Prober interface {
	Probe(ctx context.Context, t Target) error
}

// ProberFunc adapts a function to Prober.
type ProberFunc func(ctx context.Context, t Target) error

// Probe calls f.
func (f ProberFunc) Probe(ctx context.Context, t Target) error { return f(ctx, t) }

// Dialer opens network connections; *net.Dialer satisfies it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// NetProber is the default Prober: it connects to the target's address
// and runs the conversation its Kind names (see ProbeKind). Every read and
// write is bounded by ctx's deadline, and the connection is cut when ctx
// ends, so a server that accepts and never speaks fails the probe when its
// time is up.
type NetProber struct {
	// Dialer opens connections. Nil: a net.Dialer.
	Dialer Dialer
}

var _ Prober = (*NetProber)(nil)

// maxProbeRead bounds what a probe reads from a server, so that a broken
// or hostile peer cannot make it buffer without limit.
const maxProbeRead = 256 << 10

// maxLine bounds one reply line. RFC 5321 §4.5.3.1.5 allows 512 octets
// for SMTP replies; IMAP lines have no limit, but a probe's answers are
// short.
const maxLine = 8 << 10

// Probe runs the probe of t.Kind.
func (p *NetProber) Probe(ctx context.Context, t Target) error {
	switch t.Kind {
	case ProbeTCP:
		s, err := p.connect(ctx, t)
		if err != nil {
			return err
		}
		return s.close()
	case ProbeSMTP:
		return p.probeSMTP(ctx, t)
	case ProbeIMAP:
		return p.probeIMAP(ctx, t)
	default:
		return &ProbeError{Target: t.Name, Kind: t.Kind, Step: "connect",
			Err: fmt.Errorf("%w: unknown probe kind", ErrInvalidTarget)}
	}
}

// session is one probe connection.
type session struct {
	ctx    context.Context
	t      Target
	conn   net.Conn // raw TCP connection, or TLS over it
	raw    *budgetConn
	r      *bufio.Reader
	unhook func() bool // stops the cut-on-cancel hook
}

// budgetConn is the raw connection, counting what it reads.
type budgetConn struct {
	net.Conn
	left int
}

func (c *budgetConn) Read(b []byte) (int, error) {
	if c.left <= 0 {
		return 0, fmt.Errorf("%w: more than %d bytes", ErrMalformed, maxProbeRead)
	}
	if len(b) > c.left {
		b = b[:c.left]
	}
	n, err := c.Conn.Read(b)
	c.left -= n
	return n, err
}

func (p *NetProber) connect(ctx context.Context, t Target) (*session, error) {
	d := p.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	dctx := ctx
	if t.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, t.ConnectTimeout)
		defer cancel()
	}
	conn, err := d.DialContext(dctx, "tcp", t.Address)
	if err != nil {
		return nil, probeErr(ctx, t, "connect", 0, "", err)
	}
	raw := &budgetConn{Conn: conn, left: maxProbeRead}
	s := &session{ctx: ctx, t: t, conn: raw, raw: raw}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// A past deadline wakes a blocked read or write when ctx is canceled
	// before its deadline (the checker stopping, the target removed).
	s.unhook = context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	if t.TLS == ImplicitTLS {
		if err := s.startTLS(dctx); err != nil {
			s.abort()
			return nil, err
		}
	}
	s.r = bufio.NewReaderSize(s.conn, maxLine)
	return s, nil
}

// startTLS runs the TLS handshake over the raw connection.
func (s *session) startTLS(ctx context.Context) error {
	cfg := s.t.TLSConfig.Clone()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		host, _, _ := net.SplitHostPort(s.t.Address)
		cfg.ServerName = host
	}
	tc := tls.Client(s.raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return s.fail("tls", 0, "", err)
	}
	s.conn = tc
	s.r = bufio.NewReaderSize(tc, maxLine)
	return nil
}

func (s *session) abort() {
	s.unhook()
	s.raw.Close()
}

// close ends the session; its error is that of a cut connection only.
func (s *session) close() error {
	s.unhook()
	return s.raw.Close()
}

func (s *session) write(step, line string) error {
	if _, err := io.WriteString(s.conn, line); err != nil {
		return s.fail(step, 0, "", err)
	}
	return nil
}

// readLine reads one CRLF- or LF-terminated line without its ending.
func (s *session) readLine(step string) (string, error) {
	line, err := readLine(s.r)
	if err != nil {
		return "", s.fail(step, 0, "", err)
	}
	return line, nil
}

func readLine(r *bufio.Reader) (string, error) {
	b, err := r.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return "", fmt.Errorf("%w: line longer than %d bytes", ErrMalformed, maxLine)
	case errors.Is(err, io.EOF) && len(b) > 0:
		return "", io.ErrUnexpectedEOF
	case err != nil:
		return "", err
	}
	b = b[:len(b)-1]
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return string(b), nil
}

func (s *session) fail(step string, code int, text string, err error) error {
	return probeErr(s.ctx, s.t, step, code, text, err)
}

func probeErr(ctx context.Context, t Target, step string, code int, text string, err error) error {
	cerr := ctx.Err()
	var ne net.Error
	if dl, ok := ctx.Deadline(); cerr == nil && ok && !time.Now().Before(dl) && errors.As(err, &ne) && ne.Timeout() {
		// The connection's deadline is the context's: it can fire a hair
		// before the context's own timer.
		cerr = context.DeadlineExceeded
	}
	if cerr != nil && !errors.Is(err, cerr) {
		// Say why the connection was cut: the probe's time ran out.
		err = fmt.Errorf("%w: %w", cerr, err)
	}
	return &ProbeError{Target: t.Name, Kind: t.Kind, Step: step, Code: code, Text: text, Err: err}
}
