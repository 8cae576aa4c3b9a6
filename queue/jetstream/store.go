package jetstream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hamail/hamail/queue"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Sentinel errors of the start-up check. They are wrapped in a
// *queue.Error with Op "open".
var (
	// ErrUnsupportedServer: the server lacks a feature the store needs
	// (JetStream, or message schedules of nats-server 2.12 and later).
	ErrUnsupportedServer = errors.New("jetstream: server unsupported")
	// ErrStreamConfig: the stream exists with settings the store cannot
	// work with.
	ErrStreamConfig = errors.New("jetstream: stream misconfigured")
)

// Defaults of Options.
const (
	DefaultStream    = "HAMAIL_QUEUE"
	DefaultSubject   = "hamail.queue"
	DefaultReplicas  = 3
	DefaultAckWait   = 30 * time.Second
	DefaultMaxLeased = 10000
	DefaultPrefetch  = 64
	// consumerName is the durable pull consumer all runners share.
	consumerName = "runners"
	// claimPatience is how long an enqueue waits for the item of a key
	// claimed by another enqueue before it takes the key over (the other
	// enqueue crashed). Correctness does not depend on it: the item is
	// published only if the claim is still the latest.
	claimPatience = 5 * time.Second
)

// Options configures a Store. A nil *Options means the defaults.
type Options struct {
	// Stream is the JetStream stream holding the items; the object store
	// bucket for large bodies is Stream+"_BODIES". Default DefaultStream.
	Stream string
	// Subject is the subject prefix of the stream. Default DefaultSubject.
	Subject string
	// Replicas is the replication factor of the stream, its consumer and
	// the body bucket when the store creates them. Default
	// DefaultReplicas (3): an acknowledged enqueue then survives the loss
	// of any one server. Use 1 only with a single server.
	Replicas int
	// AckWait is the server-side lease: a runner that stops renewing its
	// lease (it crashed) loses the item after at most AckWait, and the
	// item goes to another runner. Leases longer than AckWait are renewed
	// in the background; shorter ones last AckWait. Default DefaultAckWait.
	AckWait time.Duration
	// MaxLeased caps the items leased at once across all runners (the
	// consumer's MaxAckPending). Default DefaultMaxLeased.
	MaxLeased int
	// Prefetch is how many deliveries a Lease pulls at least, keeping
	// those beyond what it was asked for to hand out on the next calls:
	// a pull costs a round trip to the consumer leader. A kept delivery
	// waits at most a second (a tenth of AckWait if that is shorter),
	// then goes back to the server for other runners; it is never handed
	// out once the server could have given it to another runner. Kept
	// deliveries count against MaxLeased. Default DefaultPrefetch;
	// negative means no prefetch.
	Prefetch int
	// Now is the clock for Created and due times; it must agree with the
	// servers' clocks, which fire the retries. Nil means time.Now.
	Now func() time.Time
	// Logger receives what cannot be returned (a failed lease renewal).
	// Nil discards.
	Logger *slog.Logger
}

// Store is a queue.Store on a NATS JetStream stream. It is safe for
// concurrent use. See the package documentation for the layout and the
// server settings it requires.
type Store struct {
	nc      *nats.Conn
	opts    Options
	now     func() time.Time
	log     *slog.Logger
	ids     queue.IDSource
	subject string // prefix, no trailing dot

	openMu  sync.Mutex
	opened  bool
	js      natsjs.JetStream
	stream  natsjs.Stream
	cons    natsjs.Consumer
	bodies  natsjs.ObjectStore
	maxBody int // largest inline record+body
	// getLast reads the last message on a subject; nil means the
	// stream's GetLastMsgForSubject. Tests replace it to answer as a
	// deposed leader would.
	getLast func(ctx context.Context, subj string) (*natsjs.RawStreamMsg, error)

	mu       sync.Mutex
	closed   bool
	token    uint64
	held     map[string]*held
	buf      []prefetched // pulled, not yet handed out; oldest first
	keeperOn bool
	stop     chan struct{}
	stopped  chan struct{}
}

// prefetched is a delivery pulled ahead of a Lease call.
type prefetched struct {
	d  *delivery
	at time.Time // when it was pulled: the server's AckWait runs from then
}

// held is a lease this Store value gave out.
type held struct {
	token    uint64
	msg      *delivery // the delivery; nil once acknowledged
	seq      uint64    // stream sequence of the item's latest version
	rec      *record
	body     []byte    // inline body (bodies never change), nil for an object
	until    time.Time // lease end as promised to the caller
	extended time.Time // when the server's AckWait last restarted, at the latest
	recheck  bool      // redelivered: another runner may have held it
}

var _ queue.Store = (*Store)(nil)

// New returns a store using nc, which the caller keeps open while the
// store is in use and closes afterwards. New does no I/O: the stream is
// created or checked on first use, or by Open.
func New(nc *nats.Conn, opts *Options) (*Store, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if nc == nil {
		return nil, &queue.Error{Op: "open", Err: fmt.Errorf("%w: nil connection", queue.ErrInvalid)}
	}
	if o.Stream == "" {
		o.Stream = DefaultStream
	}
	if o.Subject == "" {
		o.Subject = DefaultSubject
	}
	if o.Replicas == 0 {
		o.Replicas = DefaultReplicas
	}
	if o.AckWait == 0 {
		o.AckWait = DefaultAckWait
	}
	if o.MaxLeased == 0 {
		o.MaxLeased = DefaultMaxLeased
	}
	switch {
	case o.Prefetch == 0:
		o.Prefetch = DefaultPrefetch
	case o.Prefetch < 0:
		o.Prefetch = 0
	}
	switch {
	case strings.ContainsAny(o.Stream, ". *>\t\r\n/\\"):
		return nil, &queue.Error{Op: "open", Err: fmt.Errorf("%w: stream name %q", queue.ErrInvalid, o.Stream)}
	case strings.HasSuffix(o.Subject, ".") || strings.ContainsAny(o.Subject, " *>\t\r\n"):
		return nil, &queue.Error{Op: "open", Err: fmt.Errorf("%w: subject prefix %q", queue.ErrInvalid, o.Subject)}
	case o.Replicas < 1 || o.Replicas > 5:
		return nil, &queue.Error{Op: "open", Err: fmt.Errorf("%w: %d replicas", queue.ErrInvalid, o.Replicas)}
	case o.AckWait < time.Second:
		return nil, &queue.Error{Op: "open", Err: fmt.Errorf("%w: AckWait %v below one second", queue.ErrInvalid, o.AckWait)}
	}
	s := &Store{
		nc:      nc,
		opts:    o,
		now:     o.Now,
		log:     o.Logger,
		subject: o.Subject,
		held:    make(map[string]*held),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Subjects of the stream: <prefix>.ready.<id> holds versions due now,
// <prefix>.sched.<id> the version waiting for its retry time, <prefix>.key.<hash>
// the claim of an idempotency key, <prefix>.quar.<id>.record quarantined
// records.
func (s *Store) readySubject(id string) string { return s.subject + ".ready." + id }
func (s *Store) schedSubject(id string) string { return s.subject + ".sched." + id }
func (s *Store) itemSubjects(id string) string { return s.subject + ".*." + id }
func (s *Store) quarSubject(id string) string  { return s.subject + ".quar." + id + ".record" }
func (s *Store) keySubject(key string) string {
	h := sha256.Sum256([]byte(key))
	return s.subject + ".key." + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h[:20]))
}

// Open creates the stream, its consumer and the body bucket if they are
// missing, and checks the server and an existing stream. It returns an
// error wrapping ErrUnsupportedServer or ErrStreamConfig when they cannot
// serve the store. The other methods call it on first use; calling it
// first reports configuration problems at start-up.
func (s *Store) Open(ctx context.Context) error {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	if s.isClosed() {
		return &queue.Error{Op: "open", Err: queue.ErrClosed}
	}
	if s.opened {
		return nil
	}
	if err := s.open(ctx); err != nil {
		return &queue.Error{Op: "open", Err: err}
	}
	s.opened = true
	return nil
}

// minServer is the first nats-server release with message schedules.
var minServer = [3]int{2, 12, 0}

func (s *Store) open(ctx context.Context) error {
	if v := s.nc.ConnectedServerVersion(); v != "" && !versionAtLeast(v, minServer) {
		return fmt.Errorf("%w: nats-server %s has no message schedules; version %d.%d or later is required", ErrUnsupportedServer, v, minServer[0], minServer[1])
	}
	js, err := natsjs.New(s.nc)
	if err != nil {
		return err
	}
	// A server without JetStream leaves the API unanswered; ask the
	// account first so that this reads as what it is.
	if _, err := js.AccountInfo(ctx); err != nil {
		if errors.Is(err, natsjs.ErrJetStreamNotEnabled) || errors.Is(err, natsjs.ErrJetStreamNotEnabledForAccount) {
			return fmt.Errorf("%w: %v", ErrUnsupportedServer, err)
		}
		return fmt.Errorf("JetStream account: %w", err)
	}
	want := natsjs.StreamConfig{
		Name:              s.opts.Stream,
		Description:       "hamail mail queue",
		Subjects:          []string{s.subject + ".>"},
		Retention:         natsjs.WorkQueuePolicy,
		Storage:           natsjs.FileStorage,
		Replicas:          s.opts.Replicas,
		Discard:           natsjs.DiscardOld,
		AllowMsgSchedules: true,
		AllowRollup:       true,
		Duplicates:        2 * time.Minute,
	}
	st, err := js.Stream(ctx, s.opts.Stream)
	switch {
	case errors.Is(err, natsjs.ErrStreamNotFound):
		st, err = js.CreateStream(ctx, want)
		if err != nil {
			if errors.Is(err, natsjs.ErrJetStreamNotEnabled) || errors.Is(err, natsjs.ErrJetStreamNotEnabledForAccount) {
				return fmt.Errorf("%w: %v", ErrUnsupportedServer, err)
			}
			return fmt.Errorf("creating stream %s: %w", s.opts.Stream, err)
		}
	case errors.Is(err, natsjs.ErrJetStreamNotEnabled), errors.Is(err, natsjs.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("%w: %v", ErrUnsupportedServer, err)
	case err != nil:
		return fmt.Errorf("looking up stream %s: %w", s.opts.Stream, err)
	}
	if err := s.checkStream(st.CachedInfo().Config); err != nil {
		return err
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, natsjs.ConsumerConfig{
		Durable:       consumerName,
		Description:   "hamail queue runners",
		FilterSubject: s.subject + ".ready.*",
		AckPolicy:     natsjs.AckExplicitPolicy,
		AckWait:       s.opts.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: s.opts.MaxLeased,
		DeliverPolicy: natsjs.DeliverAllPolicy,
		ReplayPolicy:  natsjs.ReplayInstantPolicy,
	})
	if err != nil {
		return fmt.Errorf("creating consumer %s: %w", consumerName, err)
	}
	bucket := s.opts.Stream + "_BODIES"
	obs, err := js.ObjectStore(ctx, bucket)
	if errors.Is(err, natsjs.ErrBucketNotFound) {
		obs, err = js.CreateObjectStore(ctx, natsjs.ObjectStoreConfig{
			Bucket:      bucket,
			Description: "hamail queue bodies larger than the server's max payload",
			Storage:     natsjs.FileStorage,
			Replicas:    s.opts.Replicas,
		})
	}
	if err != nil {
		return fmt.Errorf("body bucket %s: %w", bucket, err)
	}
	bst, err := obs.Status(ctx)
	if err != nil {
		return fmt.Errorf("body bucket %s: %w", bucket, err)
	}
	if bst.Replicas() != s.opts.Replicas || bst.Storage() != natsjs.FileStorage || bst.Sealed() {
		// Bodies must be as durable as the items that point at them.
		return fmt.Errorf("%w: body bucket %s: %d replicas, %s storage, sealed %v; want %d, file, not sealed", ErrStreamConfig, bucket, bst.Replicas(), bst.Storage(), bst.Sealed(), s.opts.Replicas)
	}
	s.js, s.stream, s.cons, s.bodies = js, st, cons, obs
	// Room for the headers a version carries and their framing.
	s.maxBody = int(s.nc.MaxPayload()) - 4096
	return nil
}

// checkStream rejects a stream that would break the store's guarantees.
func (s *Store) checkStream(c natsjs.StreamConfig) error {
	var bad []string
	if !c.AllowMsgSchedules {
		// A server before 2.12 drops the field it does not know.
		bad = append(bad, "message schedules disabled (AllowMsgSchedules; nats-server 2.12 or later)")
	}
	if c.Retention != natsjs.WorkQueuePolicy {
		bad = append(bad, "retention "+c.Retention.String()+", want work queue")
	}
	if c.Storage != natsjs.FileStorage {
		bad = append(bad, "storage "+c.Storage.String()+", want file")
	}
	if c.PersistMode == natsjs.AsyncPersistMode {
		bad = append(bad, "asynchronous persist mode loses acknowledged writes")
	}
	if c.MaxAge != 0 || c.MaxMsgs > 0 || c.MaxBytes > 0 || c.MaxMsgsPerSubject > 0 {
		bad = append(bad, "limits (MaxAge, MaxMsgs, MaxBytes, MaxMsgsPerSubject) would drop queued mail")
	}
	if c.DenyDelete || c.DenyPurge {
		bad = append(bad, "deletes or purges denied")
	}
	if c.AllowDirect || c.MirrorDirect {
		// Direct gets may be answered by a replica that lags, and the
		// store reads an item's latest version before writing the next.
		bad = append(bad, "direct get allowed (reads must go to the leader)")
	}
	if !slices.Contains(c.Subjects, s.subject+".>") {
		bad = append(bad, fmt.Sprintf("subjects %v, want %s.>", c.Subjects, s.subject))
	}
	if c.Replicas != s.opts.Replicas {
		bad = append(bad, fmt.Sprintf("%d replicas, configured %d", c.Replicas, s.opts.Replicas))
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: stream %s: %s", ErrStreamConfig, c.Name, strings.Join(bad, "; "))
	}
	return nil
}

func versionAtLeast(v string, min [3]int) bool {
	v = strings.TrimPrefix(v, "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	parts := strings.SplitN(v, ".", 3)
	for i := range 3 {
		n := 0
		if i < len(parts) {
			var err error
			if n, err = strconv.Atoi(parts[i]); err != nil {
				return false
			}
		}
		if n != min[i] {
			return n > min[i]
		}
	}
	return true
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// ready opens the store on first use.
func (s *Store) ready(ctx context.Context, op string) error {
	if s.isClosed() {
		return &queue.Error{Op: op, Err: queue.ErrClosed}
	}
	s.openMu.Lock()
	opened := s.opened
	s.openMu.Unlock()
	if opened {
		return nil
	}
	return s.Open(ctx)
}

// Enqueue stores the message and returns once the stream leader and a
// quorum of replicas have written it (the PubAck).
func (s *Store) Enqueue(ctx context.Context, msg *queue.Message) (string, error) {
	if err := msg.Envelope.Validate(); err != nil {
		return "", &queue.Error{Op: "enqueue", Err: err}
	}
	if err := s.ready(ctx, "enqueue"); err != nil {
		return "", err
	}
	var body []byte
	if msg.Body != nil {
		var err error
		if body, err = io.ReadAll(msg.Body); err != nil {
			return "", &queue.Error{Op: "enqueue", Err: fmt.Errorf("reading body: %w", err)}
		}
	}
	now := s.now()
	id := s.ids.New(now)
	env := msg.Envelope.Clone()
	rec := &record{
		ID:          id,
		Key:         msg.Key,
		Envelope:    env,
		Recipients:  queue.NewItemState(&env),
		Created:     now,
		NextAttempt: now,
		BodySize:    int64(len(body)),
	}
	if len(body) > s.maxBody/2 {
		// Large bodies go to the object store first, so the item never
		// points at a body that is not there.
		if _, err := s.bodies.PutBytes(ctx, id, body); err != nil {
			return "", &queue.Error{Op: "enqueue", ID: id, Err: fmt.Errorf("storing body: %w", err)}
		}
		rec.BodyObject = true
		body = nil
	}
	var got string
	var err error
	if msg.Key == "" {
		_, err = s.publishVersion(ctx, rec, body, 0, "", true)
		got = id
	} else {
		got, err = s.enqueueKeyed(ctx, rec, body)
	}
	if rec.BodyObject && (err != nil || got != id) {
		// Best effort: an orphan body costs space, never mail.
		_ = s.bodies.Delete(context.WithoutCancel(ctx), id)
	}
	if err != nil {
		return "", &queue.Error{Op: "enqueue", ID: id, Err: err}
	}
	return got, nil
}

// enqueueKeyed claims the key for rec.ID, then publishes the item on
// condition that the claim is still the key's latest. An existing item
// under the key wins.
func (s *Store) enqueueKeyed(ctx context.Context, rec *record, body []byte) (string, error) {
	subj := s.keySubject(rec.Key)
	var waitSeq uint64
	var waitSince time.Time
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		var expect uint64
		last, err := s.lastOf(ctx, subj)
		switch {
		case errors.Is(err, natsjs.ErrMsgNotFound):
		case err != nil:
			return "", fmt.Errorf("reading key claim: %w", err)
		default:
			claimed := string(last.Data)
			_, err := s.lastOf(ctx, s.itemSubjects(claimed))
			switch {
			case err == nil:
				return claimed, nil
			case !errors.Is(err, natsjs.ErrMsgNotFound):
				return "", fmt.Errorf("looking up item %s: %w", claimed, err)
			default:
				// Claimed, but the item is not there: its enqueue is under
				// way, failed, or the item completed.
				if last.Sequence != waitSeq {
					waitSeq, waitSince = last.Sequence, time.Now()
					if _, err := s.lastOf(ctx, s.quarSubject(claimed)); err == nil {
						// Quarantined: gone for good, no need to wait.
						waitSince = time.Time{}
					}
				}
				if claimed != rec.ID && time.Since(waitSince) < claimPatience && last.Time.After(time.Now().Add(-claimPatience)) {
					if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
						return "", err
					}
					continue
				}
			}
			expect = last.Sequence
		}
		m := nats.NewMsg(subj)
		m.Data = []byte(rec.ID)
		m.Header.Set(natsjs.MsgRollup, natsjs.MsgRollupSubject)
		pa, err := s.publish(ctx, m, natsjs.WithExpectLastSequencePerSubject(expect), natsjs.WithMsgID(fmt.Sprintf("%s.%d", rec.ID, expect)))
		if isWrongLastSeq(err) {
			continue // another enqueue claimed it first
		}
		if err != nil {
			return "", fmt.Errorf("claiming key: %w", err)
		}
		rec.KeySeq = pa.Sequence
		_, err = s.publishVersion(ctx, rec, body, pa.Sequence, subj, true)
		if isWrongLastSeq(err) {
			continue // our claim was taken over; see who holds the key now
		}
		return rec.ID, err
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retryFor bounds how long an operation is retried through a leader
// election; it stays well inside the stream's two-minute de-duplication
// window, so a publish retried with its Nats-Msg-Id is stored once.
const retryFor = time.Minute

// retry runs f until it succeeds, fails for good, or ctx or retryFor ends.
// Each try gets at most five seconds.
func retry(ctx context.Context, f func(context.Context) error) error {
	deadline := time.Now().Add(retryFor)
	wait := 25 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(actx)
		cancel()
		if err == nil || !transient(err) || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// transient reports errors that a leader election or a reconnect causes.
func transient(err error) bool {
	var apiErr *natsjs.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == 503 || apiErr.Code == 408
	}
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, natsjs.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}

// publish publishes with retries; m carries a Nats-Msg-Id so that a retry
// of a write that took effect is recognised as a duplicate.
func (s *Store) publish(ctx context.Context, m *nats.Msg, opts ...natsjs.PublishOpt) (*natsjs.PubAck, error) {
	var pa *natsjs.PubAck
	err := retry(ctx, func(ctx context.Context) error {
		var err error
		pa, err = s.js.PublishMsg(ctx, m, opts...)
		return err
	})
	return pa, err
}

// lastOf reads the last message on subj, with retries.
func (s *Store) lastOf(ctx context.Context, subj string) (*natsjs.RawStreamMsg, error) {
	var raw *natsjs.RawStreamMsg
	get := s.getLast
	if get == nil {
		get = s.stream.GetLastMsgForSubject
	}
	err := retry(ctx, func(ctx context.Context) error {
		var err error
		raw, err = get(ctx, subj)
		return err
	})
	return raw, err
}

func isWrongLastSeq(err error) bool {
	var apiErr *natsjs.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == natsjs.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == natsjs.JSErrCodeStreamWrongLastSequenceConstant
}

// publishVersion writes a version of an item: to its ready subject when
// due, else to its schedule subject with the server scheduling the move to
// ready. With casSubj set the write happens only if the last message on
// casSubj has sequence expect (0: none).
func (s *Store) publishVersion(ctx context.Context, rec *record, body []byte, expect uint64, casSubj string, first bool) (*natsjs.PubAck, error) {
	data, err := encodeRecord(rec, body)
	if err != nil {
		return nil, err
	}
	due := !rec.NextAttempt.After(s.now())
	subj := s.readySubject(rec.ID)
	if !due {
		subj = s.schedSubject(rec.ID)
	}
	m := nats.NewMsg(subj)
	m.Data = data
	// A publish retried through a leader election is stored once: the
	// first version is identified by the item's ID, later ones by the
	// version they replace and a nonce of this write. Without the nonce
	// two runners replacing the same version (one of them after its lease
	// ran out) would send the same ID, and the server would answer the
	// second with the first one's acknowledgement (a duplicate) instead of
	// failing its compare-and-set: the loser would believe it had written,
	// and a Complete after that would delete the winner's version.
	msgID := rec.ID
	if !first {
		msgID = fmt.Sprintf("%s.v%d.%s", rec.ID, expect, queue.NewID(time.Now()))
	}
	opts := []natsjs.PublishOpt{natsjs.WithMsgID(msgID)}
	if casSubj != "" {
		opts = append(opts, natsjs.WithExpectLastSequencePerSubject(expect))
		m.Header.Set("Nats-Expected-Last-Subject-Sequence-Subject", casSubj)
	}
	if !due {
		// Nanosecond precision: the server fires at, not before, this time.
		m.Header.Set("Nats-Schedule", "@at "+rec.NextAttempt.UTC().Format(time.RFC3339Nano))
		m.Header.Set("Nats-Schedule-Target", s.readySubject(rec.ID))
	}
	pa, err := s.publish(ctx, m, opts...)
	if isWrongLastSeq(err) {
		// A retry of a write that took effect fails the comparison
		// against its own result: recognise it by its ID.
		if last, lerr := s.lastOf(ctx, s.itemSubjects(rec.ID)); lerr == nil && last.Header.Get(natsjs.MsgIDHeader) == msgID {
			return &natsjs.PubAck{Stream: s.opts.Stream, Sequence: last.Sequence}, nil
		}
	}
	return pa, err
}

// leaseWait is how long Lease waits for a first item when none is due.
const leaseWait = 100 * time.Millisecond

// Lease takes up to max due items from the shared consumer. When none is
// due it waits up to a tenth of a second for one, then returns none.
func (s *Store) Lease(ctx context.Context, limit int, d time.Duration) ([]*queue.Item, error) {
	if err := s.ready(ctx, "lease"); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	// Prefetched deliveries first, then one pull for the rest and the
	// next calls: a pull per item would cost a round trip to the consumer
	// leader for each.
	s.mu.Lock()
	stale := s.releaseStaleLocked(time.Now())
	n := min(limit, len(s.buf))
	msgs := slices.Clone(s.buf[:n])
	s.buf = slices.Delete(s.buf, 0, n)
	s.mu.Unlock()
	for _, p := range stale {
		s.handBack(p.d, p.at)
	}
	if need := limit - len(msgs); need > 0 {
		wait := leaseWait
		if len(msgs) > 0 {
			wait = 0 // have some: take only what is there
		}
		fetchedAt := time.Now()
		got, err := s.fetch(ctx, max(need, s.opts.Prefetch), wait)
		if err != nil && len(msgs) == 0 {
			return nil, &queue.Error{Op: "lease", Err: err}
		}
		for i, m := range got {
			p := prefetched{d: m, at: fetchedAt}
			if i < need {
				msgs = append(msgs, p)
				continue
			}
			s.mu.Lock()
			if s.closed {
				_ = m.Nak()
			} else {
				s.buf = append(s.buf, p)
				s.startKeeperLocked()
			}
			s.mu.Unlock()
		}
	}
	if d < s.opts.AckWait {
		d = s.opts.AckWait
	}
	now := time.Now()
	var items []*queue.Item
	var corrupt []string
	for _, p := range msgs {
		m := p.d
		it, bad, err := s.take(ctx, m, p.at, now, d)
		if err != nil {
			// Unleased messages come back after AckWait; give the caller
			// what was taken.
			s.log.Warn("lease", "subject", m.Subject(), "err", err)
			continue
		}
		if bad != "" {
			corrupt = append(corrupt, bad)
		}
		if it != nil {
			items = append(items, it)
		}
	}
	if len(corrupt) > 0 {
		return items, &queue.Error{Op: "lease", ID: strings.Join(corrupt, ","), Err: fmt.Errorf("%w: quarantined %s", queue.ErrCorrupt, strings.Join(corrupt, ", "))}
	}
	return items, nil
}

// take turns one delivery into a lease, or disposes of it: a corrupt
// record is quarantined, a stale version (a newer one exists) acknowledged,
// a version delivered before its time sent back until then.
func (s *Store) take(ctx context.Context, m *delivery, fetchedAt, now time.Time, d time.Duration) (*queue.Item, string, error) {
	md := m.md
	id := m.Subject()[len(s.subject)+len(".ready."):]
	rec, body, err := decodeRecord(m.Data())
	if err == nil && rec.ID != id {
		err = fmt.Errorf("%w: record of %s on the subject of %s", errBadRecord, rec.ID, id)
	}
	if err != nil {
		return nil, id, s.quarantine(ctx, m, fetchedAt, id, err)
	}
	if md.NumDelivered > 1 {
		// Redelivered: the runner that had it may have written a newer
		// version before it stopped.
		last, err := s.lastOf(ctx, s.itemSubjects(id))
		if err != nil && !errors.Is(err, natsjs.ErrMsgNotFound) {
			s.handBack(m, fetchedAt)
			return nil, "", err
		}
		if err == nil && last.Sequence > md.Sequence.Stream {
			return nil, "", m.DoubleAck(ctx)
		}
		if err != nil || last.Sequence != md.Sequence.Stream {
			// The delivered version stays in the work queue until it is
			// acknowledged, so a read that misses it or finds an older
			// one is stale: a server that still answered as the stream's
			// leader after losing that role (seen right after a
			// partition heals). Acknowledging would delete the item.
			s.handBack(m, fetchedAt)
			return nil, "", fmt.Errorf("stale read of %s's latest version", id)
		}
	}
	if !s.fresh(fetchedAt) {
		// The checks above took so long that the server may be handing
		// the item to another runner: a lease now would be refused at its
		// first Record or Complete, after a delivery attempt. The server
		// redelivers it on its own.
		return nil, "", fmt.Errorf("delivery of %s older than AckWait", id)
	}
	if wait := rec.NextAttempt.Sub(s.now()); wait > 10*time.Millisecond {
		// Fired early (clock skew between this host and the servers).
		return nil, "", m.NakWithDelay(min(wait, time.Minute))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.handBack(m, fetchedAt)
		return nil, "", queue.ErrClosed
	}
	s.token++
	h := &held{
		token:    s.token,
		msg:      m,
		seq:      md.Sequence.Stream,
		rec:      rec,
		body:     body,
		until:    now.Add(d),
		extended: fetchedAt,
		recheck:  md.NumDelivered > 1,
	}
	s.held[id] = h
	s.startKeeperLocked()
	it := rec.Item()
	it.Lease = queue.Lease{ID: id, Token: h.token, Until: h.until}
	it.NextAttempt = h.until
	return it, "", nil
}

// quarantine moves an undecodable version aside where an operator can
// read it, so that the rest of the queue keeps flowing.
func (s *Store) quarantine(ctx context.Context, m *delivery, fetchedAt time.Time, id string, cause error) error {
	if !validToken(id) {
		id = "invalid"
	}
	// One token more than the item's subjects, so that the copy is not
	// taken for a version of the item (itemSubjects): the item is gone,
	// and its key is free for a new enqueue.
	q := nats.NewMsg(s.quarSubject(id))
	q.Data = m.Data()
	q.Header.Set("Hamail-Quarantine-Reason", cause.Error())
	q.Header.Set("Hamail-Quarantine-Subject", m.Subject())
	if _, err := s.publish(ctx, q); err != nil {
		s.handBack(m, fetchedAt)
		return err
	}
	s.log.Error("quarantined undecodable record", "id", id, "err", cause)
	return m.DoubleAck(ctx)
}

// lookup returns the lease entry for l if l is the item's latest lease
// from this Store and it has not expired.
func (s *Store) lookup(l queue.Lease) (*held, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, queue.ErrClosed
	}
	h := s.held[l.ID]
	if h == nil || h.token != l.Token {
		return nil, queue.ErrLeaseLost
	}
	now := time.Now()
	if h.msg != nil {
		// The server redelivers AckWait after the last renewal; stop
		// writing a little before, for the time the write takes.
		if !s.fresh(h.extended) {
			delete(s.held, l.ID)
			return nil, queue.ErrLeaseLost
		}
	} else if now.After(h.until) {
		delete(s.held, l.ID)
		return nil, queue.ErrLeaseLost
	}
	return h, nil
}

// Record writes the item's next version: scheduled for u.NextAttempt, or
// ready at once. The write is a compare-and-set on the item's latest
// version, so of two runners that both believe they hold the item only
// one writes.
func (s *Store) Record(ctx context.Context, l queue.Lease, u queue.Update) error {
	if err := s.ready(ctx, "record"); err != nil {
		return err
	}
	h, err := s.lookup(l)
	if err != nil {
		return &queue.Error{Op: "record", ID: l.ID, Err: err}
	}
	s.mu.Lock()
	old, seq, msg := h.rec, h.seq, h.msg
	s.mu.Unlock()
	if len(u.Recipients) != len(old.Recipients) {
		return &queue.Error{Op: "record", ID: l.ID, Err: fmt.Errorf("%w: %d recipient states for %d recipients", queue.ErrInvalid, len(u.Recipients), len(old.Recipients))}
	}
	for i := range u.Recipients {
		if u.Recipients[i].Recipient != old.Recipients[i].Recipient {
			return &queue.Error{Op: "record", ID: l.ID, Err: fmt.Errorf("%w: recipient %d changed", queue.ErrInvalid, i)}
		}
	}
	var body []byte
	if !old.BodyObject {
		s.mu.Lock()
		body = h.body
		s.mu.Unlock()
	}
	rec := *old
	rec.Recipients = append([]queue.RecipientState(nil), u.Recipients...)
	rec.Attempts = u.Attempts
	rec.LastError = u.LastError
	rec.NextAttempt = u.NextAttempt
	if rec.NextAttempt.IsZero() {
		rec.NextAttempt = s.now()
	}
	pa, err := s.publishVersion(ctx, &rec, body, seq, s.itemSubjects(l.ID), false)
	if isWrongLastSeq(err) {
		s.drop(l)
		return &queue.Error{Op: "record", ID: l.ID, Err: fmt.Errorf("%w: the item has a newer version", queue.ErrLeaseLost)}
	}
	if err != nil {
		return &queue.Error{Op: "record", ID: l.ID, Err: err}
	}
	s.mu.Lock()
	if cur := s.held[l.ID]; cur == h {
		h.rec, h.seq, h.msg = &rec, pa.Sequence, nil
	}
	s.mu.Unlock()
	if msg != nil {
		// The new version is stored; retire the delivered one. If this
		// acknowledgement is lost the old version comes back after
		// AckWait, is found stale and dropped.
		if err := retry(ctx, msg.DoubleAck); err != nil {
			s.log.Warn("acknowledging the replaced version", "id", l.ID, "err", err)
		}
	}
	return nil
}

func (s *Store) drop(l queue.Lease) {
	s.mu.Lock()
	if h := s.held[l.ID]; h != nil && h.token == l.Token {
		delete(s.held, l.ID)
	}
	s.mu.Unlock()
}

// Complete removes the item: the delivered version is acknowledged (the
// work queue then deletes it), then its body object and key claim.
func (s *Store) Complete(ctx context.Context, l queue.Lease) error {
	if err := s.ready(ctx, "complete"); err != nil {
		return err
	}
	h, err := s.lookup(l)
	if err != nil {
		return &queue.Error{Op: "complete", ID: l.ID, Err: err}
	}
	s.mu.Lock()
	rec, seq, msg, recheck := h.rec, h.seq, h.msg, h.recheck
	s.mu.Unlock()
	if msg == nil || recheck {
		// After a Record, or when another runner may have held the item:
		// the version we hold must still be the latest.
		last, err := s.lastOf(ctx, s.itemSubjects(l.ID))
		if err != nil && !errors.Is(err, natsjs.ErrMsgNotFound) {
			return &queue.Error{Op: "complete", ID: l.ID, Err: err}
		}
		if err != nil || last.Sequence != seq {
			s.drop(l)
			return &queue.Error{Op: "complete", ID: l.ID, Err: fmt.Errorf("%w: the item has a newer version", queue.ErrLeaseLost)}
		}
	}
	if msg != nil {
		// Acknowledging twice is harmless, so a lost reply is retried.
		if err := retry(ctx, msg.DoubleAck); err != nil {
			return &queue.Error{Op: "complete", ID: l.ID, Err: err}
		}
	} else if err := retry(ctx, func(ctx context.Context) error { return s.stream.DeleteMsg(ctx, seq) }); err != nil {
		if errors.Is(err, natsjs.ErrMsgNotFound) {
			s.drop(l)
			return &queue.Error{Op: "complete", ID: l.ID, Err: fmt.Errorf("%w: the item has a newer version", queue.ErrLeaseLost)}
		}
		return &queue.Error{Op: "complete", ID: l.ID, Err: err}
	}
	s.drop(l)
	// The item is gone; what follows only frees space.
	if rec.BodyObject {
		if err := s.bodies.Delete(ctx, l.ID); err != nil && !errors.Is(err, natsjs.ErrObjectNotFound) {
			s.log.Warn("deleting body object", "id", l.ID, "err", err)
		}
	}
	if rec.KeySeq != 0 {
		if err := s.stream.DeleteMsg(ctx, rec.KeySeq); err != nil && !errors.Is(err, natsjs.ErrMsgNotFound) {
			s.log.Warn("deleting key claim", "id", l.ID, "err", err)
		}
	}
	return nil
}

// minSweepAge is the youngest body object SweepBodies deletes: an enqueue
// stores its body before its item and may retry the item's publish for
// retryFor.
const minSweepAge = 2 * retryFor

// SweepBodies deletes body objects whose item is gone and that are at least
// minAge old (at least two minutes), and returns how many it deleted. Such
// objects are left by a process that stopped between storing a large body
// and its item, or between completing an item and deleting its body; they
// cost space, never mail. It reads every object's metadata and looks each
// orphan candidate up: run it now and then from one process, not on the
// delivery path.
func (s *Store) SweepBodies(ctx context.Context, minAge time.Duration) (int, error) {
	if err := s.ready(ctx, "sweep"); err != nil {
		return 0, err
	}
	minAge = max(minAge, minSweepAge)
	infos, err := s.bodies.List(ctx)
	if errors.Is(err, natsjs.ErrNoObjectsFound) {
		return 0, nil
	}
	if err != nil {
		return 0, &queue.Error{Op: "sweep", Err: err}
	}
	now := s.now()
	deleted := 0
	for _, info := range infos {
		if now.Sub(info.ModTime) < minAge || !validToken(info.Name) {
			continue
		}
		// A queued item keeps its body, and so does a quarantined one,
		// for whoever looks into it.
		_, err := s.lastOf(ctx, s.itemSubjects(info.Name))
		if errors.Is(err, natsjs.ErrMsgNotFound) {
			_, err = s.lastOf(ctx, s.quarSubject(info.Name))
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, natsjs.ErrMsgNotFound) {
			return deleted, &queue.Error{Op: "sweep", ID: info.Name, Err: err}
		}
		if err := s.bodies.Delete(ctx, info.Name); err != nil && !errors.Is(err, natsjs.ErrObjectNotFound) {
			return deleted, &queue.Error{Op: "sweep", ID: info.Name, Err: err}
		}
		deleted++
	}
	return deleted, nil
}

// latest reads the item's latest version.
func (s *Store) latest(ctx context.Context, id string) (*natsjs.RawStreamMsg, *record, []byte, error) {
	if !validToken(id) {
		return nil, nil, nil, queue.ErrNotFound
	}
	raw, err := s.stream.GetLastMsgForSubject(ctx, s.itemSubjects(id))
	if errors.Is(err, natsjs.ErrMsgNotFound) {
		return nil, nil, nil, queue.ErrNotFound
	}
	if err != nil {
		return nil, nil, nil, err
	}
	rec, body, err := decodeRecord(raw.Data)
	if err == nil && rec.ID != id {
		err = fmt.Errorf("%w: record of %s on the subject of %s", errBadRecord, rec.ID, id)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", queue.ErrCorrupt, err)
	}
	return raw, rec, body, nil
}

// Body returns the item's body, read into memory.
func (s *Store) Body(ctx context.Context, id string) (queue.Body, error) {
	if err := s.ready(ctx, "body"); err != nil {
		return nil, err
	}
	// The runner reads the body of what it just leased: serve that from
	// the delivered copy instead of asking the leader.
	var rec *record
	var body []byte
	s.mu.Lock()
	if h := s.held[id]; h != nil {
		rec, body = h.rec, h.body
	}
	s.mu.Unlock()
	if rec == nil {
		var err error
		if _, rec, body, err = s.latest(ctx, id); err != nil {
			return nil, &queue.Error{Op: "body", ID: id, Err: err}
		}
	}
	if !rec.BodyObject {
		return queue.BytesBody(bytes.Clone(body)), nil
	}
	p, err := s.bodies.GetBytes(ctx, id)
	if errors.Is(err, natsjs.ErrObjectNotFound) {
		return nil, &queue.Error{Op: "body", ID: id, Err: fmt.Errorf("%w: body object missing", queue.ErrNotFound)}
	}
	if err != nil {
		return nil, &queue.Error{Op: "body", ID: id, Err: err}
	}
	if int64(len(p)) != rec.BodySize {
		return nil, &queue.Error{Op: "body", ID: id, Err: fmt.Errorf("%w: body object of %d octets, record says %d", queue.ErrCorrupt, len(p), rec.BodySize)}
	}
	return queue.BytesBody(p), nil
}

// Inspect returns the item's latest version.
func (s *Store) Inspect(ctx context.Context, id string) (*queue.Item, error) {
	if err := s.ready(ctx, "inspect"); err != nil {
		return nil, err
	}
	it, err := s.inspect(ctx, id)
	if err != nil {
		return nil, &queue.Error{Op: "inspect", ID: id, Err: err}
	}
	return it, nil
}

func (s *Store) inspect(ctx context.Context, id string) (*queue.Item, error) {
	raw, rec, _, err := s.latest(ctx, id)
	if err != nil {
		return nil, err
	}
	it := rec.Item()
	s.mu.Lock()
	if h := s.held[id]; h != nil && h.seq == raw.Sequence && h.msg != nil {
		it.Lease = queue.Lease{ID: id, Token: h.token, Until: h.until}
		it.NextAttempt = h.until
	}
	s.mu.Unlock()
	return it, nil
}

// queueSubjects returns the count of messages on each subject of the
// queue, by kind ("ready", "sched", "quar") and item ID.
func (s *Store) queueSubjects(ctx context.Context) (map[string]map[string]uint64, error) {
	info, err := s.stream.Info(ctx, natsjs.WithSubjectFilter(s.subject+".>"))
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]uint64{"ready": {}, "sched": {}, "quar": {}}
	for subj, n := range info.State.Subjects {
		rest, ok := strings.CutPrefix(subj, s.subject+".")
		if !ok {
			continue
		}
		kind, id, ok := strings.Cut(rest, ".")
		id, _, _ = strings.Cut(id, ".") // quar.<id>.record
		if m := out[kind]; ok && m != nil {
			m[id] += n
		}
	}
	return out, nil
}

// List returns items in ID order. It reads the stream's subject index, so
// it costs in proportion to the queue's size: it is for operators.
func (s *Store) List(ctx context.Context, after string, limit int) ([]*queue.Item, error) {
	if err := s.ready(ctx, "list"); err != nil {
		return nil, err
	}
	subs, err := s.queueSubjects(ctx)
	if err != nil {
		return nil, &queue.Error{Op: "list", Err: err}
	}
	var ids []string
	for _, kind := range []string{"ready", "sched"} {
		for id := range subs[kind] {
			if id > after {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var out []*queue.Item
	var corrupt []string
	for _, id := range ids {
		if limit > 0 && len(out) >= limit {
			break
		}
		it, err := s.inspect(ctx, id)
		if errors.Is(err, queue.ErrNotFound) {
			continue // completed meanwhile
		}
		if errors.Is(err, queue.ErrCorrupt) {
			// Listed past, as Lease does; Lease quarantines it.
			corrupt = append(corrupt, id)
			continue
		}
		if err != nil {
			return out, &queue.Error{Op: "list", ID: id, Err: err}
		}
		out = append(out, it)
	}
	if len(corrupt) > 0 {
		return out, &queue.Error{Op: "list", ID: strings.Join(corrupt, ","), Err: fmt.Errorf("%w: %s", queue.ErrCorrupt, strings.Join(corrupt, ", "))}
	}
	return out, nil
}

// Stats counts items from the stream's subject index and the consumer's
// pending acknowledgements. Like List it is for operators.
func (s *Store) Stats(ctx context.Context) (queue.Stats, error) {
	if err := s.ready(ctx, "stats"); err != nil {
		return queue.Stats{}, err
	}
	subs, err := s.queueSubjects(ctx)
	if err != nil {
		return queue.Stats{}, &queue.Error{Op: "stats", Err: err}
	}
	ci, err := s.cons.Info(ctx)
	if err != nil {
		return queue.Stats{}, &queue.Error{Op: "stats", Err: err}
	}
	var st queue.Stats
	oldest := ""
	ready := 0
	for id := range subs["ready"] {
		if _, deferred := subs["sched"][id]; !deferred {
			ready++
		}
		if oldest == "" || id < oldest {
			oldest = id
		}
	}
	for id := range subs["sched"] {
		st.Deferred++
		if oldest == "" || id < oldest {
			oldest = id
		}
	}
	st.Items = ready + st.Deferred
	// Deliveries this Store prefetched are not leased to anyone yet.
	s.mu.Lock()
	pending := ci.NumAckPending - len(s.buf)
	s.mu.Unlock()
	st.Leased = min(max(pending, 0), ready)
	st.Due = ready - st.Leased
	st.Quarantined = len(subs["quar"])
	if oldest != "" {
		if t, ok := queue.IDTime(oldest); ok {
			st.Oldest = t
		}
	}
	return st, nil
}

// Close stops lease renewal and hands the leases still held back to the
// servers so other runners get the items at once. It does not close the
// connection.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var release []prefetched
	for id, h := range s.held {
		if h.msg != nil {
			release = append(release, prefetched{d: h.msg, at: h.extended})
		}
		delete(s.held, id)
	}
	release = append(release, s.buf...)
	s.buf = nil
	stop, stopped := s.stop, s.stopped
	s.mu.Unlock()
	if stop != nil {
		close(stop)
		<-stopped
	}
	for _, p := range release {
		s.handBack(p.d, p.at)
	}
	return nil
}

// fresh reports whether a delivery whose server-side lease started at
// since, at the latest, is still surely this Store's: the lease check of
// lookup, with its margin.
func (s *Store) fresh(since time.Time) bool {
	return time.Now().Before(since.Add(s.opts.AckWait - s.opts.AckWait/10))
}

// handBack returns a delivery to the server for another runner at once,
// unless its lease may have run out: the server takes a negative
// acknowledgement by stream sequence, so a late one would pull the item
// from the runner the server gave it to since and hand it to a third.
func (s *Store) handBack(m *delivery, since time.Time) {
	if s.fresh(since) {
		_ = m.Nak()
	}
}

// prefetchHold is how long a prefetched delivery waits in the buffer at
// most; see holdFor.
const prefetchHold = time.Second

// holdFor is how long a prefetched delivery may wait to be handed out. The
// server's AckWait runs from the pull, and once it ends the server may give
// the message to another runner: a delivery handed out later would be a
// second lease on the item. The hold is at most a tenth of AckWait, so a
// lease made from the buffer has nearly as much time before its first
// renewal as one pulled for it, and never more than a second, so that
// items this runner cannot take soon go to runners that can.
func (s *Store) holdFor() time.Duration { return min(prefetchHold, s.opts.AckWait/10) }

// releaseStaleLocked removes the prefetched deliveries held too long and
// returns them for handBack outside the lock; s.mu is held.
func (s *Store) releaseStaleLocked(now time.Time) []prefetched {
	var out []prefetched
	hold := s.holdFor()
	for len(s.buf) > 0 && now.Sub(s.buf[0].at) > hold {
		out = append(out, s.buf[0])
		s.buf[0] = prefetched{}
		s.buf = s.buf[1:]
	}
	return out
}

// startKeeperLocked starts the renewal loop if it is not running; s.mu is
// held.
func (s *Store) startKeeperLocked() {
	if s.keeperOn || s.closed {
		return
	}
	s.keeperOn = true
	s.stop = make(chan struct{})
	s.stopped = make(chan struct{})
	go s.keep(s.stop, s.stopped)
}

// keep renews leases longer than AckWait until the lease time the caller
// asked for, and forgets expired ones.
func (s *Store) keep(stop <-chan struct{}, stopped chan<- struct{}) {
	defer close(stopped)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-stop
		cancel()
	}()
	// Often enough to renew leases in time and to hand prefetched
	// deliveries back soon after their hold ends.
	tick := time.NewTicker(max(min(s.opts.AckWait/8, s.holdFor()/4), 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		var renew []renewal
		s.mu.Lock()
		release := s.releaseStaleLocked(now)
		for id, h := range s.held {
			switch {
			case h.msg == nil:
				if now.After(h.until) {
					delete(s.held, id)
				}
			case !now.Before(h.extended.Add(s.opts.AckWait)):
				delete(s.held, id) // the server has let it go
			case now.After(h.extended.Add(s.opts.AckWait/2)) && h.extended.Add(s.opts.AckWait).Before(h.until):
				renew = append(renew, renewal{id: id, h: h, msg: h.msg, due: h.extended.Add(s.opts.AckWait)})
			}
		}
		s.mu.Unlock()
		for _, p := range release {
			s.handBack(p.d, p.at)
		}
		s.renewAll(ctx, renew)
	}
}

// renewal is a lease the keeper extends; due is when the server may hand
// the item to another runner unless the extension reaches it first.
type renewal struct {
	id  string
	h   *held
	msg *delivery
	due time.Time
}

// renewAll extends leases, a few at a time.
func (s *Store) renewAll(ctx context.Context, rs []renewal) {
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for _, r := range rs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.renew(ctx, r)
		})
	}
	wg.Wait()
}

// renew extends one lease and moves its fence only when the server
// confirmed the extension before it could have redelivered the item: an
// in-progress acknowledgement that is sent but arrives late (a reconnect,
// a leader election) must not let this Store believe it still holds an
// item another runner has been given.
func (s *Store) renew(ctx context.Context, r renewal) {
	// The same margin as the lease check in lookup.
	ctx, cancel := context.WithDeadline(ctx, r.due.Add(-s.opts.AckWait/10))
	defer cancel()
	var sent time.Time
	var err error
	for {
		sent = time.Now()
		if err = r.msg.InProgress(ctx); err == nil || sleepCtx(ctx, 20*time.Millisecond) != nil {
			break
		}
	}
	if err != nil || !time.Now().Before(r.due) {
		s.log.Warn("renewing lease", "id", r.id, "err", err)
		return // the lease ends at its old fence
	}
	s.mu.Lock()
	if s.held[r.id] == r.h && r.h.msg == r.msg && sent.After(r.h.extended) {
		r.h.extended = sent
	}
	s.mu.Unlock()
}
