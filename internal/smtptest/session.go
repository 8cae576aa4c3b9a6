package smtptest

import (
	"bytes"
	"errors"
	"io"
	"net"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

type backend struct{ s *Server }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	fc, ok := c.Conn().(*faultConn)
	if !ok {
		return nil, errors.New("smtptest: unexpected connection type")
	}
	return &session{s: b.s, c: fc}, nil
}

// session is go-smtp's per-connection backend state. go-smtp calls it from
// the connection's goroutine only.
type session struct {
	s *Server
	c *faultConn

	haveMail  bool
	from      string
	mopts     smtp.MailOptions
	rcpts     []Recipient
	rcptIndex int
	pipelined bool
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

func errParam(what string) error {
	return &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: what + " parameter not supported"}
}

var errTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message size exceeds fixed limit"}

// fault applies a session-level fault before go-smtp writes the reply. A
// non-nil return is the reply.
func (ss *session) fault(f Fault, ok bool) error {
	if !ok {
		return nil
	}
	if !ss.c.sleep(f.Delay) {
		return net.ErrClosed
	}
	if f.Drop {
		ss.c.Close()
		return net.ErrClosed
	}
	if f.Hangup {
		ss.c.hangup = true
	}
	if f.Reply != nil {
		return f.Reply
	}
	return nil
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	ss.s.update(func() { ss.s.stats.Mail++ })
	ss.pipelined = ss.c.lastReadLines > 1
	caps := ss.s.capabilities()
	switch {
	case opts.Body == smtp.Body8BitMIME && !caps.EightBitMIME:
		return errParam("BODY=8BITMIME")
	case opts.UTF8 && !caps.SMTPUTF8:
		return errParam("SMTPUTF8")
	case (opts.Return != "" || opts.EnvelopeID != "") && !caps.DSN:
		return errParam("RET/ENVID")
	case opts.Size > 0 && !caps.Size:
		return errParam("SIZE")
	case opts.Size > 0 && caps.MaxSize > 0 && opts.Size > caps.MaxSize:
		return errTooBig
	}
	if err := ss.fault(ss.s.takeFault(StageMail)); err != nil {
		return err
	}
	ss.haveMail = true
	ss.from = from
	ss.mopts = *opts
	ss.rcpts = nil
	ss.rcptIndex = 0
	return nil
}

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	ss.s.update(func() { ss.s.stats.Rcpt++ })
	index := ss.rcptIndex
	ss.rcptIndex++
	if (len(opts.Notify) > 0 || opts.OriginalRecipient != "") && !ss.s.capabilities().DSN {
		return errParam("NOTIFY/ORCPT")
	}
	if err := ss.fault(ss.s.takeRcptFault(to, index)); err != nil {
		return err
	}
	ss.rcpts = append(ss.rcpts, Recipient{Addr: to, Opts: *opts})
	return nil
}

func (ss *session) Data(r io.Reader) error {
	if ss.c.dataFaulted {
		ss.c.dataFaulted = false
		io.Copy(io.Discard, r)
		return nil
	}
	if f, ok := ss.s.takeFault(StageBody); ok {
		if !ss.c.stall(f.Delay) {
			return net.ErrClosed
		}
		if f.Drop {
			io.CopyN(io.Discard, r, 1)
			ss.c.Close()
			return net.ErrClosed
		}
	}
	var body []byte
	var size int64
	var err error
	if ss.s.opts.DiscardBodies {
		size, err = io.Copy(io.Discard, r)
	} else {
		var buf bytes.Buffer
		size, err = buf.ReadFrom(r)
		body = buf.Bytes()
	}
	if err != nil {
		return err
	}
	if maxSize := ss.s.capabilities().MaxSize; maxSize > 0 && size > maxSize {
		return errTooBig
	}
	f, ok := ss.s.takeFault(StageDataEnd)
	msg := Message{
		ConnID:     ss.c.id,
		Helo:       ss.c.helo,
		From:       ss.from,
		MailOpts:   ss.mopts,
		Rcpts:      append([]Recipient(nil), ss.rcpts...),
		Body:       body,
		Size:       size,
		TLS:        ss.c.tlsState,
		AuthUser:   ss.c.authUser,
		Pipelined:  ss.pipelined,
		Reply:      smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued"},
		Unanswered: f.Drop,
	}
	if f.Reply != nil && !f.Drop {
		msg.Reply = *f.Reply
	}
	ss.s.update(func() {
		ss.s.msgs = append(ss.s.msgs, msg)
		ss.s.stats.Messages++
	})
	return ss.fault(f, ok)
}

func (ss *session) Reset() {
	ss.haveMail = false
	ss.from = ""
	ss.mopts = smtp.MailOptions{}
	ss.rcpts = nil
	ss.rcptIndex = 0
}

func (ss *session) Logout() error { return nil }

func (ss *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (ss *session) Auth(mech string) (sasl.Server, error) {
	ss.s.update(func() { ss.s.stats.Auth++ })
	caps := ss.s.capabilities()
	if !caps.authMech(mech) {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	if caps.AuthTLSOnly && ss.c.tlsState == nil {
		return nil, &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "Encryption required for requested authentication mechanism"}
	}
	if err := ss.fault(ss.s.takeFault(StageAuth)); err != nil {
		return nil, err
	}
	check := func(user, pass string) error {
		want, ok := ss.s.opts.Users[user]
		if !ok || want != pass {
			return smtp.ErrAuthFailed
		}
		ss.c.authUser = user
		ss.s.update(func() {
			if ci := ss.s.connInfoLocked(ss.c.id); ci != nil {
				ci.AuthUser = user
			}
		})
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return smtp.ErrAuthFailed
			}
			return check(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login), which go-sasl implements only as a client.
type loginServer struct {
	check    func(user, pass string) error
	step     int
	username string
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		l.step++
		if len(response) == 0 {
			return []byte("Username:"), false, nil
		}
		l.username = string(response)
		l.step++
		return []byte("Password:"), false, nil
	case 1:
		l.username = string(response)
		l.step++
		return []byte("Password:"), false, nil
	case 2:
		l.step++
		return nil, true, l.check(l.username, string(response))
	}
	return nil, true, smtp.ErrAuthFailed
}
