// Package loadgen sends a stream of generated messages over a fixed number
// of reused SMTP connections with internal/smtpwire, to measure the
// throughput of the wire layer against a sink such as Postfix's smtp-sink;
// with Config.Client it sends through smtpclient.Client instead, measuring
// what an importer of the library gets (pool, breaker, classification).
// The program is in cmd/loadgen; compare.sh runs it side by side with
// Postfix's smtp-source.
//
// Each worker holds one connection for the whole run: EHLO once, then
// MAIL/RCPT/DATA per message (pipelined when the server offers PIPELINING,
// RFC 2920) with RSET between messages as a pooled connection gets it, and
// QUIT at the end.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/internal/smtpwire"
	"github.com/hamail/hamail/smtpclient"
)

// Config describes a run. Zero fields take the defaults noted.
type Config struct {
	Addr     string // server host:port (required)
	Conns    int    // connections, one worker each; default 16
	Messages int    // messages in total; default 20000
	Size     int    // body size in bytes; default 2048
	// Reset says how RSET is sent between messages on a connection, as a
	// pooled connection gets it: ResetPipelined (the default) sends it in
	// the same write as the next MAIL when the server offers PIPELINING
	// (smtpwire's ResetNext), ResetLockstep waits for its reply first,
	// ResetNone sends none.
	Reset ResetMode
	// GoSMTP uses go-smtp's client instead of smtpwire, as a baseline
	// (lockstep, no context; RSET makes it send EHLO again).
	GoSMTP bool
	// Client sends through an smtpclient.Client with one relay (Addr) and
	// a pool of Conns connections: Conns goroutines call Send in a loop.
	// Reset is then the client's business.
	Client    bool
	LocalName string // EHLO name; default "loadgen.example.org"
	From      string // default "loadgen@example.org"
	To        string // default "sink@example.net"
	// Dialer opens connections; nil means a net.Dialer with a 30 s timeout.
	Dialer interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
}

// ResetMode says how RSET is sent between messages.
type ResetMode string

// Reset modes.
const (
	ResetPipelined ResetMode = "pipelined"
	ResetLockstep  ResetMode = "lockstep"
	ResetNone      ResetMode = "none"
)

// Result summarises a run.
type Result struct {
	Sent     int           // messages accepted by the server
	Failed   int           // messages refused or lost
	Elapsed  time.Duration // from the first connection to the last reply
	FirstErr error         // the first failure, if any
}

// Rate is the accepted messages per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

// Body returns a message of about size bytes: a few header fields and
// 78-character lines, the shape smtp-source sends.
func Body(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: loadgen@example.org\r\nTo: sink@example.net\r\nSubject: load test\r\n\r\n")
	line := strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789", 3)[:78] + "\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	if rest := size - b.Len(); rest > 2 {
		b.WriteString(line[:rest-2] + "\r\n")
	}
	return b.Bytes()
}

// Run sends cfg.Messages messages and returns when they are all answered,
// a connection cannot be opened, or ctx ends. Failed messages are counted,
// not retried.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Addr == "" {
		return Result{}, errors.New("loadgen: no address")
	}
	if cfg.Conns <= 0 {
		cfg.Conns = 16
	}
	if cfg.Messages <= 0 {
		cfg.Messages = 20000
	}
	if cfg.Size <= 0 {
		cfg.Size = 2048
	}
	switch cfg.Reset {
	case "":
		cfg.Reset = ResetPipelined
	case ResetPipelined, ResetLockstep, ResetNone:
	default:
		return Result{}, fmt.Errorf("loadgen: unknown reset mode %q", cfg.Reset)
	}
	if cfg.LocalName == "" {
		cfg.LocalName = "loadgen.example.org"
	}
	if cfg.From == "" {
		cfg.From = "loadgen@example.org"
	}
	if cfg.To == "" {
		cfg.To = "sink@example.net"
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{Timeout: 30 * time.Second}
	}
	body := Body(cfg.Size)
	if cfg.Client {
		return runClient(ctx, cfg, body)
	}
	rcpts := []smtpwire.Recipient{{Addr: cfg.To}}

	var (
		tl             = newTally(cfg.Messages)
		wg             sync.WaitGroup
		connectFailure atomic.Bool
	)
	for range cfg.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := cfg.Dialer.DialContext(ctx, "tcp", cfg.Addr)
			if err != nil {
				connectFailure.Store(true)
				tl.setErr(err)
				return
			}
			if cfg.GoSMTP {
				runGoSMTP(nc, cfg, body, tl)
				return
			}
			c, err := smtpwire.NewConn(ctx, nc, &smtpwire.Options{LocalName: cfg.LocalName})
			if err != nil {
				connectFailure.Store(true)
				tl.setErr(err)
				return
			}
			defer c.Close()
			if err := c.Hello(ctx); err != nil {
				tl.setErr(err)
				return
			}
			r := bytes.NewReader(body)
			for first := true; tl.take(); first = false {
				if !first {
					switch cfg.Reset {
					case ResetPipelined:
						c.ResetNext()
					case ResetLockstep:
						if err := c.Reset(ctx); err != nil {
							tl.fail(err)
							return
						}
					}
				}
				r.Reset(body)
				if _, err := c.Send(ctx, cfg.From, nil, rcpts, r); err != nil {
					tl.fail(err)
					var ce *smtpwire.ConnError
					if errors.As(err, &ce) {
						return
					}
					continue
				}
				tl.sent.Add(1)
			}
			c.Quit(ctx)
		}()
	}
	wg.Wait()
	res := tl.result()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if connectFailure.Load() && res.Sent == 0 {
		return res, fmt.Errorf("loadgen: %w", res.FirstErr)
	}
	return res, nil
}

// runGoSMTP is one worker using go-smtp's client.
func runGoSMTP(nc net.Conn, cfg Config, body []byte, tl *tally) {
	c := smtp.NewClient(nc)
	defer c.Close()
	if err := c.Hello(cfg.LocalName); err != nil {
		tl.setErr(err)
		return
	}
	send := func() error {
		if err := c.Mail(cfg.From, nil); err != nil {
			return err
		}
		if err := c.Rcpt(cfg.To, nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write(body); err != nil {
			return err
		}
		return w.Close()
	}
	for first := true; tl.take(); first = false {
		if !first && cfg.Reset != ResetNone {
			if err := c.Reset(); err != nil {
				tl.fail(err)
				return
			}
		}
		if err := send(); err != nil {
			tl.fail(err)
			continue
		}
		tl.sent.Add(1)
	}
	c.Quit()
}

// runClient sends through smtpclient.Client: Conns goroutines share one
// client whose pool holds at most Conns connections to the relay.
func runClient(ctx context.Context, cfg Config, body []byte) (Result, error) {
	c, err := smtpclient.New(&smtpclient.Options{
		LocalName: cfg.LocalName,
		Relays:    []smtpclient.Relay{{Name: "sink", Addr: cfg.Addr, TLS: smtpclient.TLSNone}},
		Dialer:    cfg.Dialer,
		Pool:      smtpclient.PoolOptions{MaxPerHost: cfg.Conns, IdleTimeout: time.Minute},
	})
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	r := bytes.NewReader(body)
	tl := newTally(cfg.Messages)
	var wg sync.WaitGroup
	for range cfg.Conns {
		wg.Go(func() {
			for tl.take() && ctx.Err() == nil {
				m := &smtpclient.Message{From: cfg.From, To: []smtpclient.Recipient{{Addr: cfg.To}}, Body: r, Size: int64(len(body))}
				res, err := c.Send(ctx, m)
				if err == nil && res.Recipients[0].Outcome != smtpclient.Delivered {
					err = res.Recipients[0].Err
				}
				if err != nil {
					tl.fail(err)
					continue
				}
				tl.sent.Add(1)
			}
		})
	}
	wg.Wait()
	res := tl.result()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.Sent == 0 && res.FirstErr != nil {
		return res, fmt.Errorf("loadgen: %w", res.FirstErr)
	}
	return res, nil
}

// tally is what the workers of a run share: which message is next, how
// many were sent and failed, and the first failure.
type tally struct {
	messages     int64
	start        time.Time
	next         atomic.Int64
	sent, failed atomic.Int64
	once         sync.Once
	firstErr     error
}

func newTally(messages int) *tally {
	return &tally{messages: int64(messages), start: time.Now()}
}

// take claims the next message; false once all are claimed.
func (t *tally) take() bool { return t.next.Add(1) <= t.messages }

// fail counts a failed message.
func (t *tally) fail(err error) {
	t.failed.Add(1)
	t.setErr(err)
}

// setErr keeps err if it is the run's first failure.
func (t *tally) setErr(err error) { t.once.Do(func() { t.firstErr = err }) }

// result sums the run up; call it once every worker has returned.
func (t *tally) result() Result {
	return Result{Sent: int(t.sent.Load()), Failed: int(t.failed.Load()), Elapsed: time.Since(t.start), FirstErr: t.firstErr}
}
