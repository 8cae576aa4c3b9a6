package hamail

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/hamail/hamail/metrics"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/queue/bbolt"
	"github.com/hamail/hamail/smtpclient"
)

// Errors of the Mailer. Send wraps them; test with errors.Is.
var (
	// ErrClosed: Shutdown or Close was called; nothing more is taken.
	ErrClosed = errors.New("hamail: mailer closed")
	// ErrInvalidMessage: the message cannot be queued as given (a bad
	// address, no recipient, no body). Nothing was stored. The error is a
	// *MessageError.
	ErrInvalidMessage = errors.New("hamail: invalid message")
	// ErrNoRecipients: the message has no recipient.
	ErrNoRecipients = errors.New("no recipients")
	// ErrNoBody: the message has no body.
	ErrNoBody = errors.New("no body")
	// ErrNoQueue: Open was given neither Options.Store nor Options.Dir.
	ErrNoQueue = errors.New("hamail: neither Options.Store nor Options.Dir is set")
)

// MessageError says why Send refused a message before storing anything.
// errors.Is(err, ErrInvalidMessage) holds for it, and errors.As finds the
// cause, for example a *smtpclient.AddressError.
type MessageError struct {
	// Field names what is wrong: "From", "To[2]", "To", "Body",
	// "Envelope".
	Field string
	Err   error
}

func (e *MessageError) Error() string {
	return fmt.Sprintf("hamail: invalid message: %s: %v", e.Field, e.Err)
}

// Unwrap returns ErrInvalidMessage and the cause.
func (e *MessageError) Unwrap() []error { return []error{ErrInvalidMessage, e.Err} }

// Mailer sends mail through a durable queue: Send stores the message and
// returns; a runner delivers it in the background through an
// smtpclient.Client, retries it and bounces it. Create it with Open; it is
// safe for concurrent use.
type Mailer struct {
	client   *smtpclient.Client
	store    queue.Store
	ownStore bool
	metrics  *metrics.Metrics
	name     string
	log      *slog.Logger

	mu     sync.Mutex
	closed bool
	sends  sync.WaitGroup

	runCancel  context.CancelFunc // stops leasing
	hardCtx    context.Context    // ends when the attempts in flight are cut
	hardCancel context.CancelFunc
	runDone    chan struct{}

	shutOnce sync.Once
	shutDone chan struct{}
	shutErr  error // set before shutDone is closed
}

// Open opens the queue (Options.Store, or the embedded store in
// Options.Dir), builds the SMTP client and starts delivering in a
// goroutine. Messages left in the queue by an earlier process are
// delivered too. Stop the Mailer with Shutdown or Close.
func Open(o *Options) (*Mailer, error) {
	if o == nil {
		o = &Options{}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var so smtpclient.Options
	if o.SMTP != nil {
		so = *o.SMTP
	}
	if len(o.Relays) > 0 {
		so.Relays = o.Relays
	}
	if o.Resolver != nil {
		so.Resolver = o.Resolver
	}
	if len(o.FallbackRelays) > 0 {
		so.FallbackRelays = o.FallbackRelays
	}
	if o.Health != nil {
		so.Health = o.Health
	}
	if so.Logger == nil {
		so.Logger = o.Logger
	}
	if len(so.Relays) == 0 && so.Resolver == nil {
		return nil, fmt.Errorf("hamail: open: %w", smtpclient.ErrNoRoute)
	}
	if o.Metrics != nil {
		so.Hooks = chainSMTPHooks(so.Hooks, o.Metrics.SMTPHooks())
	}
	client, err := smtpclient.New(&so)
	if err != nil {
		return nil, fmt.Errorf("hamail: open: %w", err)
	}

	m := &Mailer{
		client:   client,
		store:    o.Store,
		metrics:  o.Metrics,
		name:     o.Name,
		log:      log,
		runDone:  make(chan struct{}),
		shutDone: make(chan struct{}),
	}
	if m.name == "" {
		m.name = "mail"
	}
	if m.store == nil {
		if o.Dir == "" {
			client.Close()
			return nil, fmt.Errorf("hamail: open: %w", ErrNoQueue)
		}
		if err := os.MkdirAll(o.Dir, 0o700); err != nil {
			client.Close()
			return nil, fmt.Errorf("hamail: open: %w", err)
		}
		bo := o.Bolt
		if bo == nil {
			bo = &bbolt.Options{}
		}
		if bo.Logger == nil {
			c := *bo
			c.Logger = o.Logger
			bo = &c
		}
		s, err := bbolt.Open(filepath.Join(o.Dir, "queue.db"), bo)
		if err != nil {
			client.Close()
			return nil, fmt.Errorf("hamail: open: %w", err)
		}
		m.store, m.ownStore = s, true
	}

	var ro queue.RunnerOptions
	if o.Runner != nil {
		ro = *o.Runner
	}
	if ro.Logger == nil {
		ro.Logger = o.Logger
	}
	if mt := o.Metrics; mt != nil {
		if user := ro.OnAttempt; user != nil {
			ro.OnAttempt = func(a *queue.Attempt) {
				mt.OnAttempt(a)
				user(a)
			}
		} else {
			ro.OnAttempt = mt.OnAttempt
		}
		user := ro.OnNotice
		ro.OnNotice = func(ctx context.Context, n *queue.Notice) error {
			if user != nil {
				if err := user(ctx, n); err != nil {
					return err // offered again later: counted then
				}
			}
			mt.OnNotice(n)
			return nil
		}
		mt.WatchQueue(m.name, m.store)
		mt.WatchClient(m.name, client)
	}

	hardCtx, hardCancel := context.WithCancel(context.Background())
	runCtx, runCancel := context.WithCancel(context.Background())
	m.hardCtx, m.hardCancel, m.runCancel = hardCtx, hardCancel, runCancel
	runner := queue.NewRunner(m.store, &deliverer{client: client, hardStop: hardCtx}, &ro)
	go func() {
		defer close(m.runDone)
		if err := runner.Run(runCtx); err != nil {
			// The store was closed under the runner (queue.ErrClosed).
			m.log.Error("hamail: delivery runner stopped", "err", err)
		}
	}()
	return m, nil
}

// Send validates the message, stores it durably and returns its queue ID:
// once Send returns nil, the message survives a crash and is delivered
// (at least once), retried or bounced in the background.
//
// A message that cannot be sent as given (bad address, no recipient, no
// body) gets a *MessageError (errors.Is ErrInvalidMessage) and nothing is
// stored. After Shutdown or Close, Send fails with ErrClosed. Other
// errors come from the store (queue.ErrStorageFull, ...) and also leave
// nothing stored.
func (m *Mailer) Send(ctx context.Context, msg *Message) (string, error) {
	qm, err := queueMessage(msg)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return "", ErrClosed
	}
	m.sends.Add(1)
	m.mu.Unlock()
	defer m.sends.Done()
	id, err := m.store.Enqueue(ctx, qm)
	if err != nil {
		return "", fmt.Errorf("hamail: send: %w", err)
	}
	return id, nil
}

// queueMessage checks msg and builds what the queue stores.
func queueMessage(msg *Message) (*queue.Message, error) {
	if msg == nil {
		return nil, &MessageError{Field: "Message", Err: errors.New("nil message")}
	}
	env := queue.Envelope{From: msg.From, EnvID: msg.EnvID, Ret: msg.Ret, SMTPUTF8: msg.SMTPUTF8}
	if msg.From != "" {
		a, err := smtpclient.ParseAddress(msg.From)
		if err != nil {
			return nil, &MessageError{Field: "From", Err: err}
		}
		env.SMTPUTF8 = env.SMTPUTF8 || !a.ASCII
	}
	if len(msg.To)+len(msg.Recipients) == 0 {
		return nil, &MessageError{Field: "To", Err: ErrNoRecipients}
	}
	env.Recipients = make([]queue.Recipient, 0, len(msg.To)+len(msg.Recipients))
	for i, to := range msg.To {
		env.Recipients = append(env.Recipients, queue.Recipient{Address: to, Notify: msg.Notify})
		if err := checkRecipient(&env, to); err != nil {
			return nil, &MessageError{Field: fmt.Sprintf("To[%d]", i), Err: err}
		}
	}
	for i, r := range msg.Recipients {
		env.Recipients = append(env.Recipients, r)
		if err := checkRecipient(&env, r.Address); err != nil {
			return nil, &MessageError{Field: fmt.Sprintf("Recipients[%d]", i), Err: err}
		}
	}
	if err := env.Validate(); err != nil {
		return nil, &MessageError{Field: "Envelope", Err: err}
	}
	if msg.Body == nil {
		return nil, &MessageError{Field: "Body", Err: ErrNoBody}
	}
	return &queue.Message{Key: msg.Key, Envelope: env, Body: newCRLFReader(msg.Body)}, nil
}

// checkRecipient checks a forward path and notes in env whether it needs
// SMTPUTF8.
func checkRecipient(env *queue.Envelope, addr string) error {
	a, err := smtpclient.ParseAddress(addr)
	if err != nil {
		return err
	}
	env.SMTPUTF8 = env.SMTPUTF8 || !a.ASCII
	return nil
}

// Shutdown stops the Mailer gracefully: Send fails with ErrClosed at once,
// no more messages are leased, the attempts in flight are allowed to finish
// until ctx ends (then they are cut, and what they had not finished stays
// queued for the next Open), the SMTP client is closed and so is the store
// if the Mailer opened it. Nothing queued is lost either way. It returns
// ctx's error if attempts had to be cut, and the errors of closing. It is
// idempotent and safe to call concurrently; every call waits for the end.
func (m *Mailer) Shutdown(ctx context.Context) error {
	m.shutOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		go m.shutdown()
	})
	var cut error
	select {
	case <-m.shutDone:
	case <-ctx.Done():
		cut = ctx.Err()
		m.hardCancel()
		<-m.shutDone
	}
	return errors.Join(cut, m.shutErr)
}

// Close is Shutdown without a grace period: attempts in flight are cut at
// once and their messages stay queued (at least once: one cut after the
// server's final reply is sent again later). It returns the errors of
// closing.
func (m *Mailer) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := m.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		err = m.shutErr
	}
	return err
}

func (m *Mailer) shutdown() {
	defer close(m.shutDone)
	m.runCancel()
	// Sends in progress finish their Enqueue before the store closes,
	// unless the caller stops waiting: then a store that closes under them
	// fails them and keeps nothing half-written.
	sendsDone := make(chan struct{})
	go func() {
		m.sends.Wait()
		close(sendsDone)
	}()
	select {
	case <-sendsDone:
	case <-m.hardCtx.Done():
	}
	// The runner returns once the attempts in flight are recorded; after a
	// hard stop their contexts are cancelled, so that is prompt.
	<-m.runDone
	m.hardCancel()
	var errs []error
	if err := m.client.Close(); err != nil && !errors.Is(err, smtpclient.ErrClosed) {
		errs = append(errs, err)
	}
	if m.metrics != nil {
		m.metrics.UnwatchQueue(m.name, m.store)
		m.metrics.UnwatchClient(m.name, m.client)
	}
	if m.ownStore {
		if err := m.store.Close(); err != nil && !errors.Is(err, queue.ErrClosed) {
			errs = append(errs, err)
		}
	}
	m.shutErr = errors.Join(errs...)
}

// Stats returns a snapshot of the queue: items due, leased, deferred,
// quarantined and the oldest one's age.
func (m *Mailer) Stats(ctx context.Context) (queue.Stats, error) {
	return m.store.Stats(ctx)
}

// Client returns the SMTP client the Mailer delivers through, for its pool
// statistics. Sending through it directly bypasses the queue.
func (m *Mailer) Client() *smtpclient.Client { return m.client }

// Store returns the queue store, for inspecting or listing queued items.
func (m *Mailer) Store() queue.Store { return m.store }

// chainSMTPHooks returns hooks that call first's, then second's.
func chainSMTPHooks(first, second *smtpclient.Hooks) *smtpclient.Hooks {
	if first == nil {
		return second
	}
	if second == nil {
		return first
	}
	return &smtpclient.Hooks{
		HostChosen:         chain2(first.HostChosen, second.HostChosen),
		HostSkipped:        chain2(first.HostSkipped, second.HostSkipped),
		Connected:          chain2(first.Connected, second.Connected),
		TLS:                chain2(first.TLS, second.TLS),
		Reply:              chain4(first.Reply, second.Reply),
		BreakerStateChange: chain1(first.BreakerStateChange, second.BreakerStateChange),
		AttemptDone:        chain1(first.AttemptDone, second.AttemptDone),
	}
}

func chain1[A any](f, g func(A)) func(A) {
	switch {
	case f == nil:
		return g
	case g == nil:
		return f
	}
	return func(a A) { f(a); g(a) }
}

func chain2[A, B any](f, g func(A, B)) func(A, B) {
	switch {
	case f == nil:
		return g
	case g == nil:
		return f
	}
	return func(a A, b B) { f(a, b); g(a, b) }
}

func chain4[A, B, C, D any](f, g func(A, B, C, D)) func(A, B, C, D) {
	switch {
	case f == nil:
		return g
	case g == nil:
		return f
	}
	return func(a A, b B, c C, d D) { f(a, b, c, d); g(a, b, c, d) }
}
