package smtptest

import (
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Stage names a point of the SMTP dialogue at which a Fault can be injected.
type Stage int

// The stages a Fault can be attached to. Each names the reply the server
// sends, so StageData is the reply to the DATA command (normally 354) and
// StageDataEnd the reply after the final dot.
const (
	StageGreeting Stage = iota // the 220 banner (RFC 5321 §4.3.1)
	StageEHLO                  // the reply to EHLO
	StageHELO                  // the reply to HELO
	StageStartTLS              // the reply to STARTTLS (RFC 3207)
	StageAuth                  // the first reply to AUTH (RFC 4954)
	StageMail                  // the reply to MAIL FROM
	StageRcpt                  // the reply to every RCPT TO (see also SetRcptFault)
	StageData                  // the reply to DATA (354 normally)
	StageDataEnd               // the reply after the final dot
	StageRset                  // the reply to RSET
	// StageBody acts while the message body is received: Delay stops
	// reading it for that long (a stalled server, for per-block write
	// timeouts; send more than the socket buffers hold), Drop closes the
	// connection after the first bytes of the body, so the message is
	// never complete. Reply is not used.
	StageBody
	numStages
)

var stageNames = [...]string{"greeting", "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "end of data", "RSET", "body"}

func (s Stage) String() string {
	if s < 0 || s >= numStages {
		return "stage(?)"
	}
	return stageNames[s]
}

// Fault describes how the server misbehaves at a stage. The zero Fault is
// normal behaviour.
//
// Delay is applied first (it ends early when the connection is closed).
// Then, if Drop is set, the connection is closed without a reply; otherwise
// Reply, when non-nil, replaces the normal reply; if Hangup is set the
// connection is closed after the reply was written (a 421 in RFC 5321 §3.8
// style).
type Fault struct {
	Reply  *smtp.SMTPError
	Delay  time.Duration
	Drop   bool
	Hangup bool
	// Times limits the fault to the next Times occurrences; zero means
	// until the fault is replaced or cleared.
	Times int
}

// Reply is shorthand for a Fault that answers with the given code,
// enhanced code and text.
func Reply(code int, enhanced smtp.EnhancedCode, text string) Fault {
	return Fault{Reply: &smtp.SMTPError{Code: code, EnhancedCode: enhanced, Message: text}}
}

// Capabilities says what the server advertises in its EHLO reply. Changing
// them affects the next EHLO on every connection.
//
// The server enforces what it advertises: a MAIL or RCPT parameter for an
// extension that is not advertised is refused with 555 5.5.4 (RFC 5321
// §4.1.1.11), so a client that sends one anyway is caught.
type Capabilities struct {
	Pipelining   bool // RFC 2920
	StartTLS     bool // RFC 3207; only advertised before TLS is active
	EightBitMIME bool // RFC 6152
	SMTPUTF8     bool // RFC 6531
	DSN          bool // RFC 3461
	Chunking     bool // RFC 3030 (go-smtp implements BDAT)
	// Size advertises SIZE (RFC 1870). MaxSize is the advertised and
	// enforced limit; zero means SIZE without a fixed limit.
	Size    bool
	MaxSize int64
	// Auth lists the advertised SASL mechanisms; "PLAIN" and "LOGIN" are
	// implemented. Empty means no AUTH. Credentials come from Options.Users.
	Auth []string
	// AuthTLSOnly advertises and accepts AUTH only once TLS is active
	// (like Postfix's smtpd_tls_auth_only); in clear, AUTH gets 538 5.7.11.
	AuthTLSOnly bool
	// Extra keywords appended verbatim to the EHLO reply.
	Extra []string
}

// DefaultCapabilities is what a new server advertises unless
// Options.Capabilities says otherwise: PIPELINING, STARTTLS, 8BITMIME,
// SMTPUTF8, DSN and SIZE without a limit; no AUTH.
func DefaultCapabilities() Capabilities {
	return Capabilities{
		Pipelining:   true,
		StartTLS:     true,
		EightBitMIME: true,
		SMTPUTF8:     true,
		DSN:          true,
		Size:         true,
	}
}

func (c Capabilities) clone() Capabilities {
	c.Auth = append([]string(nil), c.Auth...)
	c.Extra = append([]string(nil), c.Extra...)
	return c
}

func (c Capabilities) authMech(mech string) bool {
	for _, m := range c.Auth {
		if strings.EqualFold(m, mech) {
			return true
		}
	}
	return false
}

// faultKey identifies where a fault is attached.
type faultKey struct {
	stage Stage
	addr  string // RCPT by address (lower case)
	index int    // RCPT by 0-based index in the transaction, -1 when unused
}

// takeFault returns the fault for k and consumes one occurrence of it.
// The caller holds s.mu.
func (s *Server) takeFaultLocked(k faultKey) (Fault, bool) {
	f, ok := s.faults[k]
	if !ok {
		return Fault{}, false
	}
	if f.Times > 0 {
		f.Times--
		if f.Times == 0 {
			delete(s.faults, k)
		} else {
			s.faults[k] = f
		}
	}
	return f, true
}

func (s *Server) takeFault(stage Stage) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.takeFaultLocked(faultKey{stage: stage, index: -1})
}

// takeRcptFault looks for a fault for this recipient by address, then by
// index, then for every RCPT.
func (s *Server) takeRcptFault(addr string, index int) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.takeFaultLocked(faultKey{stage: StageRcpt, addr: strings.ToLower(addr), index: -1}); ok {
		return f, true
	}
	if f, ok := s.takeFaultLocked(faultKey{stage: StageRcpt, index: index}); ok {
		return f, true
	}
	return s.takeFaultLocked(faultKey{stage: StageRcpt, index: -1})
}

// SetFault attaches f to stage for every connection, open or new; it takes
// effect for the next command. A zero Fault removes it.
func (s *Server) SetFault(stage Stage, f Fault) {
	s.setFault(faultKey{stage: stage, index: -1}, f)
}

// SetRcptFault attaches f to RCPT TO commands for addr (compared without
// regard to case). It takes precedence over SetRcptIndexFault and
// SetFault(StageRcpt, ...).
func (s *Server) SetRcptFault(addr string, f Fault) {
	s.setFault(faultKey{stage: StageRcpt, addr: strings.ToLower(addr), index: -1}, f)
}

// SetRcptIndexFault attaches f to the index-th RCPT TO (0-based) of each
// transaction.
func (s *Server) SetRcptIndexFault(index int, f Fault) {
	s.setFault(faultKey{stage: StageRcpt, index: index}, f)
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.faults)
}

func (s *Server) setFault(k faultKey, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == (Fault{}) {
		delete(s.faults, k)
		return
	}
	s.faults[k] = f
}

// SetCapabilities replaces what the server advertises from the next EHLO on.
func (s *Server) SetCapabilities(c Capabilities) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.caps = c.clone()
}

// Capabilities returns what the server currently advertises.
func (s *Server) Capabilities() Capabilities {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.caps.clone()
}

func (s *Server) capabilities() Capabilities {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.caps // read-only use; slices are never mutated in place
}
