package smtpclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Client sends messages. It is safe for concurrent use; Close releases its
// pooled connections.
type Client struct {
	opts      Options
	relays    *relaySet
	fallback  *relaySet
	br        *breakers
	pool      *pool[*conn]
	log       *slog.Logger
	hooks     Hooks
	dialer    Dialer
	tr        transport
	now       func() time.Time
	transMu   sync.Mutex // serializes transcript lines
	closeOnce sync.Once
	closed    atomic.Bool
}

// New checks the options and makes a Client. It does no I/O.
func New(o *Options) (*Client, error) {
	var opts Options
	if o != nil {
		opts = *o
	}
	if opts.LocalName == "" {
		opts.LocalName = "localhost"
	}
	if opts.MXPort == 0 {
		opts.MXPort = 25
	}
	if opts.MaxMXAddresses <= 0 {
		opts.MaxMXAddresses = 5
	}
	if opts.FailbackDelay <= 0 {
		opts.FailbackDelay = 10 * time.Second
	}
	if opts.MaxRecipients <= 0 {
		opts.MaxRecipients = 100
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	setDefault := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	tm := &opts.Timeouts
	setDefault(&tm.Connect, 30*time.Second)
	setDefault(&tm.Greeting, 5*time.Minute)
	setDefault(&tm.Hello, 5*time.Minute)
	setDefault(&tm.StartTLS, 5*time.Minute)
	setDefault(&tm.Auth, 5*time.Minute)
	setDefault(&tm.Mail, 5*time.Minute)
	setDefault(&tm.Rcpt, 5*time.Minute)
	setDefault(&tm.DataInit, 2*time.Minute)
	setDefault(&tm.DataBlock, 3*time.Minute)
	setDefault(&tm.DataEnd, 10*time.Minute)
	setDefault(&tm.Reset, 20*time.Second)
	setDefault(&tm.Quit, 10*time.Second)

	c := &Client{opts: opts, now: opts.Now, dialer: opts.Dialer, log: opts.Logger}
	if c.dialer == nil {
		c.dialer = &net.Dialer{}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if opts.Hooks != nil {
		c.hooks = *opts.Hooks
	}
	c.tr = wireTransport{c}
	c.pool = newPool[*conn](opts.Pool, opts.Now)
	var err error
	if len(opts.Relays) > 0 {
		if c.relays, err = newRelaySet(opts.Relays, opts.Balance, opts.FailbackDelay, opts.Health, opts.Now); err != nil {
			return nil, err
		}
	}
	if len(opts.FallbackRelays) > 0 {
		if c.fallback, err = newRelaySet(opts.FallbackRelays, opts.Balance, opts.FailbackDelay, opts.Health, opts.Now); err != nil {
			return nil, err
		}
	}
	var relayNames []string
	addrOf := map[string]string{}
	for _, rs := range []*relaySet{c.relays, c.fallback} {
		if rs == nil {
			continue
		}
		for _, tier := range rs.tiers {
			for _, r := range tier {
				// A name is one host for the pool, the breaker and the
				// health checker: a relay listed also as a fallback must
				// be the same host.
				if a, ok := addrOf[r.t.key()]; ok {
					if a != r.t.info.Addr {
						return nil, fmt.Errorf("smtpclient: relay name %q names two addresses", r.t.key())
					}
					continue
				}
				addrOf[r.t.key()] = r.t.info.Addr
				relayNames = append(relayNames, r.t.key())
			}
		}
	}
	c.br = newBreakers(opts.Breaker, opts.Health, &c.hooks, relayNames)
	if err := c.checkMX(); err != nil {
		return nil, err
	}
	return c, nil
}

// Stats returns a snapshot of the connection pools.
func (c *Client) Stats() Stats { return c.pool.stats() }

// Close closes idle pooled connections (politely, with QUIT) and makes
// further Sends fail with ErrClosed. Sessions in progress finish and close
// their connections.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.pool.close()
	})
	return nil
}

// sendState is one Send call in progress.
type sendState struct {
	env       *envelope
	res       *Result
	attempted bool
	lastSkip  error
}

func (s *sendState) set(p parsedRecipient, o Outcome, host string, r *Reply, err error) {
	rr := &s.res.Recipients[p.index]
	rr.Outcome, rr.Host, rr.Reply, rr.Err = o, host, r, err
}

// Send delivers m to its recipients, right now, over every path that can
// work: the relays tier by tier, then (with a Resolver) each domain's mail
// exchangers, then the fallback relays. A recipient that fails temporarily
// on a host is offered to the next; a recipient accepted by a host is never
// sent again in the same call; a recipient whose outcome is Unknown (the
// connection was lost after the final dot) is not retried in the same call.
//
// Invalid input returns a nil Result and an error (*AddressError,
// ErrNoRecipients, ...) before any I/O, as does a closed Client
// (ErrClosed). Otherwise the Result is never nil
// and has one entry per recipient. The error is non-nil only when nothing
// could be attempted (it wraps ErrNoHostAvailable or ErrNoRoute) or when
// ctx ended (it wraps ctx.Err()); recipients delivered before ctx ended are
// still reported Delivered.
func (c *Client) Send(ctx context.Context, m *Message) (*Result, error) {
	env, err := validate(m)
	if err != nil {
		return nil, err
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	s := &sendState{env: env, res: &Result{Recipients: make([]RecipientResult, len(m.To))}}
	for i, r := range m.To {
		s.res.Recipients[i] = RecipientResult{Recipient: r.Addr, Outcome: Temporary, Err: ErrNoHostAvailable}
	}
	if c.relays == nil && !c.hasMX() && c.fallback == nil {
		for i := range s.res.Recipients {
			s.res.Recipients[i].Err = ErrNoRoute
		}
		return s.res, ErrNoRoute
	}
	pending := env.rcpts
	if c.relays != nil {
		pending = c.deliverVia(ctx, s, c.relays.order(), pending)
	}
	if c.hasMX() && len(pending) > 0 && ctx.Err() == nil {
		pending = c.deliverMX(ctx, s, pending)
	}
	if c.fallback != nil && len(pending) > 0 && ctx.Err() == nil {
		c.deliverVia(ctx, s, c.fallback.order(), pending)
	}
	if err := ctx.Err(); err != nil {
		for i := range s.res.Recipients {
			rr := &s.res.Recipients[i]
			if rr.Outcome == Temporary && rr.Err == ErrNoHostAvailable {
				rr.Err = err
			}
		}
		return s.res, fmt.Errorf("smtpclient: send interrupted: %w", err)
	}
	if !s.attempted {
		if s.lastSkip != nil {
			return s.res, fmt.Errorf("%w: %w", ErrNoHostAvailable, s.lastSkip)
		}
		return s.res, ErrNoHostAvailable
	}
	return s.res, nil
}

// deliverVia offers the pending recipients to each target in turn and
// returns those that may still go to another host.
func (c *Client) deliverVia(ctx context.Context, s *sendState, targets []*target, pending []parsedRecipient) []parsedRecipient {
	for _, t := range targets {
		if len(pending) == 0 || ctx.Err() != nil {
			break
		}
		pending = c.attempt(ctx, s, t, pending)
	}
	return pending
}

// errorsIsAny reports whether err matches one of targets.
func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// lineWriter writes a session's transcript lines, each prefixed by the host,
// as whole lines under the client's transcript lock.
type lineWriter struct {
	c      *Client
	prefix string
	buf    []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := indexNL(w.buf)
		if i < 0 {
			return len(p), nil
		}
		line := w.buf[:i+1]
		w.c.transMu.Lock()
		_, err := io.WriteString(w.c.opts.Transcript, w.prefix+string(line))
		w.c.transMu.Unlock()
		w.buf = append(w.buf[:0], w.buf[i+1:]...)
		if err != nil {
			return len(p), err
		}
	}
}

func indexNL(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}
