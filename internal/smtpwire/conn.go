package smtpwire

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
)

// Stage names the step of the dialogue an error happened in.
type Stage int

// Stages, in dialogue order.
const (
	StageGreeting Stage = iota // waiting for the 220 banner
	StageHello                 // EHLO / HELO
	StageStartTLS              // STARTTLS and the TLS handshake
	StageAuth                  // AUTH exchange
	StageMail                  // MAIL FROM (and, pipelined, the whole command group)
	StageRcpt                  // RCPT TO
	StageData                  // DATA, up to the 354
	StageBody                  // sending the message and the final dot
	StageDataEnd               // waiting for the reply after the final dot
	StageReset                 // RSET
	StageNoop                  // NOOP
	StageQuit                  // QUIT
)

var stageNames = [...]string{"greeting", "EHLO", "STARTTLS", "AUTH", "MAIL FROM", "RCPT TO", "DATA", "message body", "end of data", "RSET", "NOOP", "QUIT"}

func (s Stage) String() string {
	if s < 0 || int(s) >= len(stageNames) {
		return "Stage(" + strconv.Itoa(int(s)) + ")"
	}
	return stageNames[s]
}

// Timeouts bound each command: the time from sending it to the end of its
// reply. A zero field takes the default, which is the RFC 5321 §4.5.3.2
// minimum where the RFC gives one, else Postfix's default.
type Timeouts struct {
	Greeting  time.Duration // 5 min (§4.5.3.2.1 initial 220)
	Hello     time.Duration // 5 min (Postfix smtp_helo_timeout)
	StartTLS  time.Duration // 5 min, including the handshake (Postfix smtp_starttls_timeout)
	Auth      time.Duration // 5 min per exchange step
	Mail      time.Duration // 5 min (§4.5.3.2.2)
	Rcpt      time.Duration // 5 min (§4.5.3.2.3)
	DataInit  time.Duration // 2 min (§4.5.3.2.4)
	DataBlock time.Duration // 3 min per write of the body (§4.5.3.2.5)
	DataEnd   time.Duration // 10 min after the final dot (§4.5.3.2.6)
	Reset     time.Duration // 20 s (Postfix smtp_rset_timeout)
	Noop      time.Duration // 20 s, like RSET
	Quit      time.Duration // 5 min (Postfix smtp_quit_timeout)
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Greeting, 5*time.Minute)
	def(&t.Hello, 5*time.Minute)
	def(&t.StartTLS, 5*time.Minute)
	def(&t.Auth, 5*time.Minute)
	def(&t.Mail, 5*time.Minute)
	def(&t.Rcpt, 5*time.Minute)
	def(&t.DataInit, 2*time.Minute)
	def(&t.DataBlock, 3*time.Minute)
	def(&t.DataEnd, 10*time.Minute)
	def(&t.Reset, 20*time.Second)
	def(&t.Noop, 20*time.Second)
	def(&t.Quit, 5*time.Minute)
	return t
}

// Options configure a Conn. A nil *Options or a zero field means the
// default.
type Options struct {
	// LocalName is the EHLO/HELO argument; default "localhost".
	LocalName string
	Timeouts  Timeouts
	// Transcript receives the dialogue, one "C: " or "S: " line per
	// protocol line. AUTH arguments and responses are replaced by
	// "<redacted>", and the message body by its size. Writes happen on the
	// calling goroutine; the writer must be safe if shared.
	Transcript io.Writer
	// MaxLineLength bounds a reply line, without CRLF; default 2048 (RFC
	// 5321 §4.5.3.1.5 allows 512). A longer line is a protocol error.
	MaxLineLength int
	// MaxReplyLines bounds the lines of one reply; default 256.
	MaxReplyLines int
}

// Conn is one SMTP client session on a connection (RFC 5321 §3).
//
// A Conn is not safe for concurrent use, except Close, which may be called
// from any goroutine to abort what is in progress.
type Conn struct {
	raw    net.Conn // the TCP connection; closing it ends everything
	nc     net.Conn // raw, or the TLS connection on top of it
	cw     connWriter
	bw     *bufio.Writer
	rr     replyReader
	opts   Options
	t      Timeouts
	closed atomic.Bool
	broken error // why the Conn is unusable, nil while usable

	greeting  *Reply
	helloDone bool
	esmtp     bool
	ext       map[string]string
	tlsState  *tls.ConnectionState
	bodyBuf   []byte
	// resetNext: send RSET in front of the next transaction (ResetNext).
	resetNext bool
}

// connWriter writes to the current connection; while blockTimeout is set
// (during the message body) each write gets its own deadline (RFC 5321
// §4.5.3.2.5: a timeout per data block, not per message).
type connWriter struct {
	c            *Conn
	blockTimeout time.Duration
	ctxDeadline  time.Time
}

func (w *connWriter) Write(p []byte) (int, error) {
	if w.blockTimeout > 0 {
		d := time.Now().Add(w.blockTimeout)
		if !w.ctxDeadline.IsZero() && w.ctxDeadline.Before(d) {
			d = w.ctxDeadline
		}
		w.c.nc.SetWriteDeadline(d)
	}
	return w.c.nc.Write(p)
}

// NewConn starts a session on nc, which must be freshly connected (or, for
// implicit TLS, a *tls.Conn), and reads the greeting. ctx governs the
// greeting only. A greeting other than 2xx is returned as *smtp.SMTPError.
// On any error nc is closed.
func NewConn(ctx context.Context, nc net.Conn, opts *Options) (*Conn, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.LocalName == "" {
		o.LocalName = "localhost"
	}
	if o.MaxLineLength <= 0 {
		o.MaxLineLength = 2048
	}
	if o.MaxReplyLines <= 0 {
		o.MaxReplyLines = 256
	}
	if err := checkLine("local name", o.LocalName); err != nil || strings.ContainsAny(o.LocalName, " \t") {
		nc.Close()
		return nil, invalid("local name %q", o.LocalName)
	}
	c := &Conn{raw: nc, nc: nc, opts: o, t: o.Timeouts.withDefaults()}
	if tc, ok := nc.(*tls.Conn); ok {
		c.raw = tc.NetConn()
	}
	c.cw.c = c
	c.bw = bufio.NewWriterSize(&c.cw, 16*1024)
	c.rr = replyReader{r: bufio.NewReaderSize(nc, max(4096, o.MaxLineLength+2)), maxLine: o.MaxLineLength, maxLines: o.MaxReplyLines}

	stop := c.watch(ctx)
	defer stop()
	c.deadline(ctx, c.t.Greeting)
	if tc, ok := nc.(*tls.Conn); ok {
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, c.fail(ctx, StageGreeting, err)
		}
		st := tc.ConnectionState()
		c.tlsState = &st
	}
	rep, err := c.readReply()
	if err != nil {
		return nil, c.fail(ctx, StageGreeting, err)
	}
	if rep.Code/100 != 2 {
		// RFC 5321 §3.1: after a 554 greeting the client should QUIT.
		c.bw.WriteString("QUIT\r\n")
		c.bw.Flush()
		c.Close()
		return nil, rep.SMTPError()
	}
	c.greeting = rep
	return c, nil
}

// Greeting returns the server's 220 reply.
func (c *Conn) Greeting() *Reply { return c.greeting }

// Close closes the connection without QUIT. It is safe to call from any
// goroutine and more than once.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.raw.Close()
}

// watch closes the connection when ctx ends; the returned func stops
// watching. If ctx ended just as the call finished, the connection is
// closed already, and the Conn is marked unusable.
func (c *Conn) watch(ctx context.Context) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	after := context.AfterFunc(ctx, func() { c.raw.Close() })
	return func() {
		if !after() && c.broken == nil {
			c.broken = &ConnError{Stage: StageNoop, Err: fmt.Errorf("%w: %w", ErrClosed, ctx.Err())}
		}
	}
}

// deadline bounds the next I/O by timeout and by ctx's deadline.
func (c *Conn) deadline(ctx context.Context, timeout time.Duration) {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	c.nc.SetDeadline(d)
}

// fail closes the connection and returns the *ConnError for err.
func (c *Conn) fail(ctx context.Context, stage Stage, err error) error {
	c.Close()
	var ne net.Error
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	} else if d, ok := ctx.Deadline(); ok && errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(d) {
		// The connection deadline was the context's, and fired just before
		// the context noticed.
		err = fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	} else if errors.Is(err, net.ErrClosed) && c.broken == nil {
		err = fmt.Errorf("%w: %v", ErrClosed, err)
	}
	ce := &ConnError{Stage: stage, Err: err}
	if c.broken == nil {
		c.broken = ce
	}
	return ce
}

// usable returns an error when the Conn cannot take a command.
func (c *Conn) usable(ctx context.Context, stage Stage) error {
	if c.broken != nil || c.closed.Load() {
		return &ConnError{Stage: stage, Err: ErrClosed}
	}
	if err := ctx.Err(); err != nil {
		return &ConnError{Stage: stage, Err: err}
	}
	return nil
}

func (c *Conn) logf(format string, args ...any) {
	if c.opts.Transcript != nil {
		fmt.Fprintf(c.opts.Transcript, format+"\n", args...)
	}
}

func (c *Conn) readReply() (*Reply, error) {
	var onLine func(string)
	if c.opts.Transcript != nil {
		onLine = func(l string) { c.logf("S: %s", l) }
	}
	return c.rr.readReply(onLine)
}

// queue buffers a command line; shown is what the transcript gets.
func (c *Conn) queue(line, shown string) {
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	if c.opts.Transcript != nil {
		c.logf("C: %s", shown)
	}
}

// roundTrip sends one command and reads its reply. A reply of any code is
// returned with a nil error; a 421 also closes the Conn (RFC 5321 §3.8).
func (c *Conn) roundTrip(ctx context.Context, stage Stage, timeout time.Duration, line, shown string) (*Reply, error) {
	if err := c.usable(ctx, stage); err != nil {
		return nil, err
	}
	stop := c.watch(ctx)
	defer stop()
	c.deadline(ctx, timeout)
	c.queue(line, shown)
	if err := c.bw.Flush(); err != nil {
		return nil, c.fail(ctx, stage, err)
	}
	rep, err := c.readReply()
	if err != nil {
		return nil, c.fail(ctx, stage, err)
	}
	c.checkClosing(rep)
	return rep, nil
}

// checkClosing marks the Conn closed after a 421: the server is shutting
// the channel (RFC 5321 §3.8, §4.2.3).
func (c *Conn) checkClosing(rep *Reply) {
	if rep.Code == 421 {
		c.broken = rep.SMTPError()
		c.Close()
	}
}

// Hello sends EHLO, or HELO when the server answers EHLO with 500 or 502
// (RFC 5321 §3.2), and records the advertised extensions. It is called by
// Send when needed.
func (c *Conn) Hello(ctx context.Context) error {
	name := c.opts.LocalName
	rep, err := c.roundTrip(ctx, StageHello, c.t.Hello, "EHLO "+name, "EHLO "+name)
	if err != nil {
		return err
	}
	esmtp := true
	if rep.Code == 500 || rep.Code == 502 {
		esmtp = false
		rep, err = c.roundTrip(ctx, StageHello, c.t.Hello, "HELO "+name, "HELO "+name)
		if err != nil {
			return err
		}
	}
	if rep.Code/100 != 2 {
		return rep.SMTPError()
	}
	c.ext = make(map[string]string)
	if esmtp {
		lines := strings.Split(rep.Message, "\n")
		for _, l := range lines[1:] {
			kw, param, _ := strings.Cut(strings.TrimSpace(l), " ")
			if kw != "" {
				c.ext[strings.ToUpper(kw)] = param
			}
		}
	}
	c.esmtp = esmtp
	c.helloDone = true
	return nil
}

// Extension reports whether the server advertised the EHLO keyword name
// (case-insensitive) and its parameters. It is false before Hello.
func (c *Conn) Extension(name string) (param string, ok bool) {
	param, ok = c.ext[strings.ToUpper(name)]
	return param, ok
}

// MaxMessageSize returns the SIZE limit the server advertised (RFC 1870).
// ok is false when SIZE is not advertised or has no fixed limit ("SIZE"
// or "SIZE 0").
func (c *Conn) MaxMessageSize() (size int64, ok bool) {
	param, adv := c.Extension("SIZE")
	if !adv {
		return 0, false
	}
	n, err := strconv.ParseInt(param, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

// StartTLS upgrades the connection (RFC 3207) and sends EHLO again, as
// §4.2 requires. It returns an error wrapping ErrNotAdvertised, without
// I/O, if the server did not offer STARTTLS; a refusal as
// *smtp.SMTPError; a handshake failure as *ConnError (the Conn is then
// closed). cfg must name the server (ServerName) or skip verification.
func (c *Conn) StartTLS(ctx context.Context, cfg *tls.Config) error {
	if cfg == nil {
		return invalid("nil TLS configuration")
	}
	if c.tlsState != nil {
		return invalid("TLS is already active")
	}
	if !c.helloDone {
		if err := c.Hello(ctx); err != nil {
			return err
		}
	}
	if _, ok := c.Extension("STARTTLS"); !ok {
		return fmt.Errorf("%w: STARTTLS", ErrNotAdvertised)
	}
	rep, err := c.roundTrip(ctx, StageStartTLS, c.t.StartTLS, "STARTTLS", "STARTTLS")
	if err != nil {
		return err
	}
	if rep.Code != 220 {
		if rep.Positive() {
			return c.fail(ctx, StageStartTLS, protocolErr("unexpected reply %d to STARTTLS", rep.Code))
		}
		return rep.SMTPError()
	}
	if c.rr.r.Buffered() > 0 {
		// Plain text after the 220 would be read as if it had come over
		// TLS (the STARTTLS command injection of CVE-2011-0411).
		return c.fail(ctx, StageStartTLS, protocolErr("data received after 220 to STARTTLS"))
	}
	stop := c.watch(ctx)
	defer stop()
	c.deadline(ctx, c.t.StartTLS)
	tc := tls.Client(c.raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return c.fail(ctx, StageStartTLS, err)
	}
	st := tc.ConnectionState()
	c.nc = tc
	c.tlsState = &st
	c.rr.r.Reset(tc)
	c.helloDone = false
	c.ext = nil
	return c.Hello(ctx)
}

// TLSConnectionState returns the TLS state once TLS is active (after
// StartTLS, or from the start with implicit TLS).
func (c *Conn) TLSConnectionState() (tls.ConnectionState, bool) {
	if c.tlsState == nil {
		return tls.ConnectionState{}, false
	}
	return *c.tlsState, true
}

// Auth authenticates with a (RFC 4954). The mechanism's arguments never
// reach the transcript. A refusal is returned as *smtp.SMTPError. Whether
// AUTH may be sent on an unencrypted connection is the caller's decision.
func (c *Conn) Auth(ctx context.Context, a sasl.Client) error {
	if !c.helloDone {
		if err := c.Hello(ctx); err != nil {
			return err
		}
	}
	if _, ok := c.Extension("AUTH"); !ok {
		return fmt.Errorf("%w: AUTH", ErrNotAdvertised)
	}
	mech, ir, err := a.Start()
	if err != nil {
		return fmt.Errorf("smtpwire: AUTH: %w", err)
	}
	if err := checkLine("SASL mechanism", mech); err != nil || strings.ContainsAny(mech, " \t") {
		return invalid("SASL mechanism %q", mech)
	}
	cmd := "AUTH " + mech
	if ir != nil {
		cmd += " " + encodeSASL(ir)
	}
	rep, err := c.roundTrip(ctx, StageAuth, c.t.Auth, cmd, "AUTH "+mech+" <redacted>")
	// A SASL exchange has a few steps; a server asking for more is broken.
	for step := 0; err == nil && rep.Code == 334 && step < 32; step++ {
		var resp []byte
		challenge, derr := base64.StdEncoding.DecodeString(rep.Message)
		if derr != nil {
			derr = protocolErr("AUTH challenge is not base64")
			return c.cancelAuth(ctx, derr)
		}
		resp, err = a.Next(challenge)
		if err != nil {
			return c.cancelAuth(ctx, fmt.Errorf("smtpwire: AUTH %s: %w", mech, err))
		}
		// A response is plain base64, so an empty one is an empty line;
		// "=" stands for an empty initial response only (RFC 4954 §4).
		rep, err = c.roundTrip(ctx, StageAuth, c.t.Auth, base64.StdEncoding.EncodeToString(resp), "<redacted>")
	}
	if err != nil {
		return err
	}
	switch {
	case rep.Code == 235 || rep.Code/100 == 2:
		return nil
	case rep.Positive():
		return c.fail(ctx, StageAuth, protocolErr("unexpected reply %d to AUTH", rep.Code))
	}
	return rep.SMTPError()
}

// cancelAuth ends an exchange the client cannot continue (RFC 4954 §4:
// the client sends "*" and the server answers 501).
func (c *Conn) cancelAuth(ctx context.Context, cause error) error {
	if _, err := c.roundTrip(ctx, StageAuth, c.t.Auth, "*", "*"); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// encodeSASL encodes an initial response (RFC 4954 §4).
func encodeSASL(b []byte) string {
	if len(b) == 0 {
		return "="
	}
	return base64.StdEncoding.EncodeToString(b)
}

// Reset sends RSET, abandoning any transaction (RFC 5321 §4.1.1.5). It is
// also a cheap check that a pooled connection still works.
func (c *Conn) Reset(ctx context.Context) error {
	return c.simple(ctx, StageReset, c.t.Reset, "RSET")
}

// ResetNext arranges for RSET to go in front of the next Send. When the
// server offers PIPELINING, RSET travels in the same write as MAIL, RCPT and
// DATA (RFC 2920 §3.1 allows it in a group), so a reused connection is
// reset without the round trip Reset costs; otherwise Send sends it alone
// first. Send then fails with StageReset if the server does not answer RSET
// with 2xx; nothing of the transaction can have been delivered then.
func (c *Conn) ResetNext() { c.resetNext = true }

// Noop sends NOOP (RFC 5321 §4.1.1.9).
func (c *Conn) Noop(ctx context.Context) error {
	return c.simple(ctx, StageNoop, c.t.Noop, "NOOP")
}

// Quit sends QUIT and closes the connection, whatever the reply.
func (c *Conn) Quit(ctx context.Context) error {
	defer c.Close()
	rep, err := c.roundTrip(ctx, StageQuit, c.t.Quit, "QUIT", "QUIT")
	if err != nil {
		return err
	}
	c.broken = &ConnError{Stage: StageQuit, Err: ErrClosed}
	if rep.Code != 221 {
		return rep.SMTPError()
	}
	return nil
}

func (c *Conn) simple(ctx context.Context, stage Stage, timeout time.Duration, cmd string) error {
	rep, err := c.roundTrip(ctx, stage, timeout, cmd, cmd)
	if err != nil {
		return err
	}
	if rep.Code/100 != 2 {
		return rep.SMTPError()
	}
	return nil
}
