package smtptest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// faultConn sits between the socket and go-smtp's server connection.
//
// go-smtp's server builds its EHLO reply, the greeting, the 354 to DATA and
// the STARTTLS upgrade itself, with no hook for a backend. faultConn sees
// every reply line go-smtp writes (go-smtp flushes one line per Write),
// recognises these replies by their fixed text in go-smtp v0.25.1 and
// rewrites, delays or drops them. TLS is done here, below go-smtp (whose
// TLSConfig stays nil, so it answers STARTTLS with "502 5.5.1 TLS not
// supported", which faultConn replaces by the real 220 and handshake): that
// keeps the rewriting working after STARTTLS.
//
// Read and Write are called only by go-smtp's connection goroutine; Close
// may be called from anywhere.
type faultConn struct {
	s   *Server
	id  int64
	raw net.Conn
	cur net.Conn // raw, or the *tls.Conn on top of it

	closeOnce sync.Once
	closed    chan struct{}

	// Read side.
	inject        []byte // bytes handed to go-smtp before the socket's
	pending       []byte // bytes read from the client during a delay
	lastReadLines int    // CRLFs in the last chunk read from the socket

	// Write side.
	wbuf    []byte
	greeted bool
	ehlo    []string // EHLO reply lines being collected
	swallow bool     // drop the next final reply line
	hangup  bool     // close after the next final reply line

	// Shared with the session (same goroutine).
	tlsState    *tls.ConnectionState
	authUser    string
	helo        string
	dataFaulted bool // the 354 was replaced; the body go-smtp reads is fake
}

func newFaultConn(s *Server, nc net.Conn, id int64) *faultConn {
	return &faultConn{s: s, id: id, raw: nc, cur: nc, closed: make(chan struct{})}
}

func (c *faultConn) Read(b []byte) (int, error) {
	if len(c.inject) > 0 {
		n := copy(b, c.inject)
		c.inject = c.inject[n:]
		return n, nil
	}
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		c.lastReadLines = bytes.Count(b[:n], []byte("\r\n"))
		return n, nil
	}
	n, err := c.cur.Read(b)
	c.lastReadLines = bytes.Count(b[:n], []byte("\r\n"))
	return n, err
}

func (c *faultConn) Write(p []byte) (int, error) {
	c.wbuf = append(c.wbuf, p...)
	for {
		i := bytes.IndexByte(c.wbuf, '\n')
		if i < 0 {
			break
		}
		line := string(c.wbuf[:i+1])
		c.wbuf = append(c.wbuf[:0], c.wbuf[i+1:]...)
		if err := c.replyLine(line); err != nil {
			c.wbuf = c.wbuf[:0]
			return 0, err
		}
	}
	return len(p), nil
}

func (c *faultConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.raw.Close()
		c.s.update(func() {
			if _, ok := c.s.conns[c.id]; ok {
				delete(c.s.conns, c.id)
				c.s.stats.Open--
			}
			if ci := c.s.connInfoLocked(c.id); ci != nil {
				ci.Open = false
			}
		})
	})
	return nil
}

func (c *faultConn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *faultConn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *faultConn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *faultConn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *faultConn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// sleep waits d, or until the connection is closed by the server or by
// the client; it reports whether the connection is still open. While it
// waits it keeps reading, so that a client giving up is noticed at once (as
// it would be by a server blocked in a write); what the client sends
// meanwhile is kept for go-smtp.
func (c *faultConn) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	peerGone := make(chan struct{})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 4096)
		for len(c.pending) < maxPending {
			n, err := c.cur.Read(buf)
			c.pending = append(c.pending, buf[:n]...)
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					close(peerGone)
				}
				return
			}
		}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	open := true
	select {
	case <-t.C:
	case <-c.closed:
		open = false
	case <-peerGone:
		open = false
	}
	c.raw.SetReadDeadline(time.Unix(1, 0)) // stop the reader
	<-readDone
	c.raw.SetReadDeadline(time.Time{})
	if !open {
		c.Close()
	}
	return open
}

// maxPending bounds what sleep keeps of a client that goes on sending.
const maxPending = 1 << 20

// stall waits d without reading, like a server that stopped reading; it
// reports whether the connection is still open.
func (c *faultConn) stall(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.closed:
		return false
	}
}

func (c *faultConn) writeRaw(s string) error {
	_, err := c.cur.Write([]byte(s))
	return err
}

func isFinal(line string) bool { return len(line) >= 4 && line[3] == ' ' }

// replyLine handles one reply line written by go-smtp.
func (c *faultConn) replyLine(line string) error {
	text := strings.TrimRight(line, "\r\n")
	switch {
	case !c.greeted:
		c.greeted = true
		if c.s.opts.ImplicitTLS {
			if err := c.handshake(); err != nil {
				return err
			}
		}
		f, _ := c.s.takeFault(StageGreeting)
		if f.Reply != nil && f.Reply.Code/100 != 2 {
			// A server refusing service closes after saying so (RFC 5321 §3.1).
			f.Hangup = true
		}
		return c.apply(f, line)
	case c.swallow && isFinal(text):
		c.swallow = false
		return nil
	case c.ehlo != nil || strings.HasPrefix(text, "250-Hello "):
		c.ehlo = append(c.ehlo, text[4:])
		if isFinal(text) {
			lines := c.ehlo
			c.ehlo = nil
			return c.finishEHLO(lines)
		}
		return nil
	case strings.HasPrefix(text, "250 2.0.0 Hello "):
		c.sawHello(strings.TrimPrefix(text, "250 2.0.0 Hello "), false)
		f, _ := c.s.takeFault(StageHELO)
		return c.apply(f, line)
	case strings.HasPrefix(text, "354 "):
		c.s.update(func() { c.s.stats.Data++ })
		f, _ := c.s.takeFault(StageData)
		if f.Reply != nil && !f.Drop {
			// go-smtp now reads the message body. Feed it an empty one
			// and hide go-smtp's reply to it, so the dialogue goes on as
			// if DATA had been refused.
			c.inject = []byte(".\r\n")
			c.swallow = true
			c.dataFaulted = true
		}
		return c.apply(f, line)
	case text == "502 5.5.1 TLS not supported":
		c.s.update(func() { c.s.stats.StartTLS++ })
		caps := c.s.capabilities()
		if !caps.StartTLS || c.tlsState != nil || c.s.opts.ImplicitTLS {
			return c.writeRaw(line)
		}
		f, _ := c.s.takeFault(StageStartTLS)
		if f.Reply != nil || f.Drop {
			return c.apply(f, line)
		}
		if !c.sleep(f.Delay) {
			return net.ErrClosed
		}
		if err := c.writeRaw("220 2.0.0 Ready to start TLS\r\n"); err != nil {
			return err
		}
		return c.handshake()
	case text == "250 2.0.0 Session reset":
		c.s.update(func() { c.s.stats.Rset++ })
		f, _ := c.s.takeFault(StageRset)
		return c.apply(f, line)
	case text == "250 2.0.0 I have successfully done nothing":
		c.s.update(func() { c.s.stats.Noop++ })
	case text == "221 2.0.0 Bye":
		c.s.update(func() { c.s.stats.Quit++ })
	}
	if err := c.writeRaw(line); err != nil {
		return err
	}
	if c.hangup && isFinal(text) {
		c.hangup = false
		c.Close()
	}
	return nil
}

// apply sends normal (a complete reply) or the fault's replacement.
func (c *faultConn) apply(f Fault, normal string) error {
	if !c.sleep(f.Delay) {
		return net.ErrClosed
	}
	if f.Drop {
		c.Close()
		return net.ErrClosed
	}
	out := normal
	if f.Reply != nil {
		out = formatReply(f.Reply)
	}
	err := c.writeRaw(out)
	if f.Hangup || c.hangup {
		c.hangup = false
		c.Close()
	}
	return err
}

func (c *faultConn) sawHello(helo string, ehlo bool) {
	c.helo = helo
	c.s.update(func() {
		if ehlo {
			c.s.stats.EHLO++
		} else {
			c.s.stats.HELO++
		}
		if ci := c.s.connInfoLocked(c.id); ci != nil {
			ci.Helo = helo
		}
	})
}

// finishEHLO answers EHLO with the configured capabilities instead of
// go-smtp's fixed list. lines[0] is "Hello <domain>".
func (c *faultConn) finishEHLO(lines []string) error {
	c.sawHello(strings.TrimPrefix(lines[0], "Hello "), true)
	f, _ := c.s.takeFault(StageEHLO)
	caps := c.s.capabilities()
	out := []string{lines[0]}
	if caps.Pipelining {
		out = append(out, "PIPELINING")
	}
	if caps.EightBitMIME {
		out = append(out, "8BITMIME")
	}
	out = append(out, "ENHANCEDSTATUSCODES")
	if caps.Chunking {
		out = append(out, "CHUNKING")
	}
	if caps.StartTLS && c.tlsState == nil && !c.s.opts.ImplicitTLS {
		out = append(out, "STARTTLS")
	}
	if len(caps.Auth) > 0 && (c.tlsState != nil || !caps.AuthTLSOnly) {
		out = append(out, "AUTH "+strings.Join(caps.Auth, " "))
	}
	if caps.SMTPUTF8 {
		out = append(out, "SMTPUTF8")
	}
	if caps.DSN {
		out = append(out, "DSN")
	}
	if caps.Size {
		if caps.MaxSize > 0 {
			out = append(out, fmt.Sprintf("SIZE %d", caps.MaxSize))
		} else {
			out = append(out, "SIZE")
		}
	}
	out = append(out, caps.Extra...)
	var b strings.Builder
	for i, l := range out {
		sep := "-"
		if i == len(out)-1 {
			sep = " "
		}
		b.WriteString("250" + sep + l + "\r\n")
	}
	return c.apply(f, b.String())
}

func (c *faultConn) handshake() error {
	tc := tls.Server(c.raw, c.s.tlsCfg)
	c.raw.SetDeadline(time.Now().Add(30 * time.Second))
	err := tc.Handshake()
	c.raw.SetDeadline(time.Time{})
	if err != nil {
		c.Close()
		return err
	}
	st := tc.ConnectionState()
	c.cur = tc
	c.tlsState = &st
	c.authUser = "" // RFC 3207 §4.2: forget what was learnt in clear
	c.s.update(func() {
		if ci := c.s.connInfoLocked(c.id); ci != nil {
			ci.TLS = &st
			ci.AuthUser = ""
		}
	})
	return nil
}

// formatReply renders e as go-smtp would: an enhanced code on the last
// line, X.0.0 when unset (RFC 2034 §3), none for NoEnhancedCode.
func formatReply(e *smtp.SMTPError) string {
	ec := e.EnhancedCode
	if ec == smtp.EnhancedCodeNotSet {
		switch e.Code / 100 {
		case 2, 4, 5:
			ec = smtp.EnhancedCode{e.Code / 100, 0, 0}
		default:
			ec = smtp.NoEnhancedCode
		}
	}
	lines := strings.Split(e.Message, "\n")
	var b strings.Builder
	for i, l := range lines {
		if i < len(lines)-1 {
			fmt.Fprintf(&b, "%03d-%s\r\n", e.Code, l)
			continue
		}
		if ec == smtp.NoEnhancedCode {
			fmt.Fprintf(&b, "%03d %s\r\n", e.Code, l)
		} else {
			fmt.Fprintf(&b, "%03d %d.%d.%d %s\r\n", e.Code, ec[0], ec[1], ec[2], l)
		}
	}
	return b.String()
}
