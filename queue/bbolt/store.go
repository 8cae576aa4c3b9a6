package bbolt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/hamail/hamail/queue"
)

// Bucket names. See doc.go for the layout.
var (
	bucketMeta   = []byte("meta")
	bucketMsgs   = []byte("msgs")
	bucketBodies = []byte("bodies")
	bucketSched  = []byte("sched")
	bucketDedup  = []byte("dedup")
	bucketDead   = []byte("dead")
	bucketKeys   = []byte("keys")
	bucketKeyExp = []byte("keyexp")
	keyVersion   = []byte("version")
)

const layoutVersion = 1

// schedLeased marks a sched entry whose item is under lease, so that Stats
// can tell leased from deferred items without reading records.
var schedLeased = []byte{'L'}

// maxKeyLen bounds caller keys: bbolt keys are at most 32 KiB, and a key is
// an identifier, not data.
const maxKeyLen = 1024

// Options configures a Store. A nil *Options means the defaults.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// InlineBodyMax is the largest body kept inside the database; larger
	// bodies go to spool files beside it. 0 means 64 KiB; negative means
	// every body goes to a spool file.
	InlineBodyMax int
	// MaxSize caps the data in the database file, in octets: an Enqueue
	// that would pass it fails with queue.ErrStorageFull. 0 means no cap.
	// Spool files are not counted. The file itself may grow to MaxSize
	// plus a reserve of a quarter (at least 1 MiB), because leasing,
	// recording and completing write new pages before they free old ones:
	// a full queue must still drain.
	MaxSize int
	// KeyRetention is how long the key of a completed item is remembered:
	// within it, Enqueue with that key returns the completed item's ID and
	// stores nothing, so that a producer retrying an Enqueue whose answer
	// it lost does not send the message twice. 0 means keys are forgotten
	// at completion.
	KeyRetention time.Duration
	// LockTimeout is how long Open waits for another process to release
	// the database; 0 means 5 seconds.
	LockTimeout time.Duration
	// MaxBatch is the largest number of operations committed together;
	// 0 means 1000.
	MaxBatch int
	// Logger receives quarantine and sweep messages; nil discards them.
	Logger *slog.Logger
}

// Store is a durable queue.Store in a bbolt database file. Open it with
// Open; Close it when done. Safe for concurrent use.
type Store struct {
	db        *bolt.DB
	path      string
	spoolDir  string
	now       func() time.Time
	inlineMax int
	maxBatch  int
	maxSize   int64
	pageSize  int64
	chunk     int // octets of an inline body per bodies value
	keyKeep   time.Duration
	// groupBytes counts what the enqueues of the group being committed
	// add, for the MaxSize check; only the commit loop touches it.
	groupBytes int64
	log        *slog.Logger
	ids        queue.IDSource

	// closeMu guards closed and sends on reqs against Close.
	closeMu  sync.RWMutex
	closed   bool
	reqs     chan *request
	loopDone chan struct{}

	// nextMu guards the cached first due time and the change channel.
	nextMu  sync.Mutex
	next    int64 // Unix nanoseconds of the first sched key, 0 if none
	changed chan struct{}
}

var (
	_ queue.Store    = (*Store)(nil)
	_ queue.Notifier = (*Store)(nil)
)

// Open opens or creates the queue database at path and the spool directory
// path+".spool" beside it, removes spool files that no record refers to (left
// by a crash during Enqueue), and starts the commit loop.
func Open(path string, opts *Options) (*Store, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	s := &Store{
		path:      path,
		spoolDir:  path + ".spool",
		now:       o.Now,
		inlineMax: o.InlineBodyMax,
		maxBatch:  o.MaxBatch,
		log:       o.Logger,
		reqs:      make(chan *request, 256),
		loopDone:  make(chan struct{}),
		changed:   make(chan struct{}),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.inlineMax == 0 {
		s.inlineMax = 64 << 10
	}
	if s.maxBatch <= 0 {
		s.maxBatch = 1000
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	timeout := o.LockTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if err := os.MkdirAll(s.spoolDir, 0o700); err != nil {
		return nil, &queue.Error{Op: "open", Err: err}
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return nil, &queue.Error{Op: "open", Err: err}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      timeout,
		FreelistType: bolt.FreelistMapType,
		MaxSize:      hardLimit(o.MaxSize),
	})
	if err != nil {
		return nil, &queue.Error{Op: "open", Err: fmt.Errorf("%s: %w", path, err)}
	}
	s.db = db
	s.maxSize = int64(o.MaxSize)
	s.keyKeep = o.KeyRetention
	s.pageSize = int64(db.Info().PageSize)
	s.chunk = chunkLen(db.Info().PageSize)
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, &queue.Error{Op: "open", Err: fmt.Errorf("%s: %w", path, err)}
	}
	go s.loop()
	return s, nil
}

// hardLimit is the file size bbolt enforces for a MaxSize: the cap plus the
// reserve that lets a full queue drain.
func hardLimit(maxSize int) int {
	if maxSize <= 0 {
		return 0
	}
	return maxSize + max(maxSize/4, 1<<20)
}

// full reports whether adding n octets would pass MaxSize. It runs in the
// commit loop, inside the group's transaction.
func (s *Store) full(tx *bolt.Tx, n int64) bool {
	if s.maxSize <= 0 {
		return false
	}
	st := s.db.Stats() // free pages as of the last commit
	inUse := tx.Size() - int64(st.FreePageN+st.PendingPageN)*s.pageSize + s.groupBytes
	if inUse+n > s.maxSize {
		return true
	}
	s.groupBytes += n
	return false
}

func (s *Store) init() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketMsgs, bucketBodies, bucketSched, bucketDedup, bucketDead, bucketKeys, bucketKeyExp} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyVersion); v != nil {
			if len(v) != 8 || binary.BigEndian.Uint64(v) != layoutVersion {
				return fmt.Errorf("database layout version %x, want %d", v, layoutVersion)
			}
			return nil
		}
		return meta.Put(keyVersion, binary.BigEndian.AppendUint64(nil, layoutVersion))
	})
	if err != nil {
		return err
	}
	if err := s.sweepSpool(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		s.next = firstDue(tx)
		return nil
	})
}

// sweepSpool removes spool files that no record or quarantined record
// refers to: bodies written by an Enqueue that crashed before its commit,
// or of items completed just before a crash.
func (s *Store) sweepSpool() error {
	entries, err := os.ReadDir(s.spoolDir)
	if err != nil {
		return err
	}
	removed := 0
	err = s.db.View(func(tx *bolt.Tx) error {
		msgs, dead := tx.Bucket(bucketMsgs), tx.Bucket(bucketDead)
		for _, e := range entries {
			name := []byte(e.Name())
			if msgs.Get(name) != nil || dead.Get(name) != nil {
				continue
			}
			if err := os.Remove(filepath.Join(s.spoolDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			removed++
		}
		return nil
	})
	if err != nil {
		return err
	}
	if removed > 0 {
		s.log.Info("queue: removed orphaned spool files", "count", removed, "dir", s.spoolDir)
		return syncDir(s.spoolDir)
	}
	return nil
}

func schedKey(next int64, id string) []byte {
	k := make([]byte, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(next))
	copy(k[8:], id)
	return k
}

// Inline bodies are stored in chunks of an eighth of a page, under
// id ‖ be32(chunk number). A bbolt value that does not fit in a page takes
// pages of its own, rounded up: a 4 KiB body stored whole would take two
// 4 KiB pages, and every enqueue would write twice its body. Chunks fill
// pages up (appendFill), so that a commit group writes about what it
// stores. Bodies stored whole under the bare ID, as an earlier layout did,
// are still read and deleted.
const (
	chunkKeyLen   = 20 + 4 // an ID made by queue.NewID, the chunk number
	chunkOverhead = chunkKeyLen + 16
	appendFill    = 1.0
)

// chunkLen is the largest chunk of which eight, with their keys and leaf
// element headers, fill a page after its 16-octet header.
func chunkLen(pageSize int) int {
	return max((pageSize-16)/8-chunkOverhead, 64)
}

func chunkKey(id string, n uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte(id), n)
}

func putBody(b *bolt.Bucket, id string, body []byte, chunk int) error {
	for n := uint32(0); len(body) > 0; n++ {
		c := body[:min(chunk, len(body))]
		body = body[len(c):]
		if err := b.Put(chunkKey(id, n), c); err != nil {
			return err
		}
	}
	return nil
}

// chunkKeys returns the keys of id's chunks, in order.
func chunkKeys(b *bolt.Bucket, id string) [][]byte {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(chunkKey(id, 0)); len(k) == len(id)+4 && string(k[:len(id)]) == id; k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	return keys
}

// getBody returns a copy of the inline body of id, size octets long as
// its record says; a body missing chunks or of another length is
// queue.ErrCorrupt.
func getBody(b *bolt.Bucket, id string, size int64) ([]byte, error) {
	if v := b.Get([]byte(id)); v != nil {
		return bytes.Clone(v), nil // stored whole
	}
	out := make([]byte, 0, min(size, 1<<20))
	c := b.Cursor()
	n := uint32(0)
	for k, v := c.Seek(chunkKey(id, 0)); len(k) == len(id)+4 && string(k[:len(id)]) == id; k, v = c.Next() {
		if binary.BigEndian.Uint32(k[len(id):]) != n {
			return nil, fmt.Errorf("%w: body chunk %d missing", queue.ErrCorrupt, n)
		}
		out = append(out, v...)
		n++
	}
	return out, nil
}

func deleteBody(b *bolt.Bucket, id string) error {
	if err := b.Delete([]byte(id)); err != nil {
		return err
	}
	for _, k := range chunkKeys(b, id) {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// firstDue returns the due time of the first sched entry, 0 if none.
func firstDue(tx *bolt.Tx) int64 {
	k, _ := tx.Bucket(bucketSched).Cursor().First()
	if len(k) < 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(k))
}

// storageErr turns a full disk, a file size limit or a full database into
// ErrStorageFull.
func storageErr(err error) error {
	if isFull(err) {
		return fmt.Errorf("%w: %w", queue.ErrStorageFull, err)
	}
	return err
}

func isFull(err error) bool {
	return errors.Is(err, queue.ErrStorageFull) || errors.Is(err, berrors.ErrMaxSizeReached) ||
		errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG)
}

// commitErr classifies a failed commit. bbolt reports a failure to grow
// its file as text only ("file resize error: ..."), without the errno, so
// when the cause is not known the file system is asked whether the file
// still has room for its next growth: if not, the failure is reported as
// ErrStorageFull, with what was measured.
func (s *Store) commitErr(err error) error {
	if isFull(err) {
		return storageErr(err)
	}
	if why := s.noRoom(); why != "" {
		return fmt.Errorf("%w (%s): %w", queue.ErrStorageFull, why, err)
	}
	return err
}

func (s *Store) Enqueue(ctx context.Context, msg *queue.Message) (string, error) {
	fail := func(err error) (string, error) { return "", &queue.Error{Op: "enqueue", Err: err} }
	if err := msg.Envelope.Validate(); err != nil {
		return fail(err)
	}
	if len(msg.Key) > maxKeyLen {
		return fail(fmt.Errorf("%w: key longer than %d octets", queue.ErrInvalid, maxKeyLen))
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if msg.Key != "" {
		// Spare writing the body of a message that is already queued; the
		// commit checks again.
		if id := s.lookupKey(msg.Key); id != "" {
			return id, nil
		}
	}
	now := s.now()
	id := s.ids.New(now)

	body, size, spooled, err := s.readBody(id, msg.Body)
	if err != nil {
		return fail(err)
	}
	rec := newRecord(msg.Key, &msg.Envelope, now, size, spooled)
	value := encodeRecord(rec)
	var result string
	req := &request{
		spool: spooled,
		fn: func(tx *bolt.Tx) error {
			if msg.Key != "" {
				if old := keyOwner(tx, msg.Key, s.now()); old != "" {
					result = old
					return nil
				}
			}
			// Record, body, index entries, and their share of page overhead.
			if s.full(tx, int64(len(value)+len(body)+len(body)/s.chunk*chunkOverhead+2*len(msg.Key)+128)) {
				return reject(fmt.Errorf("%w: the database holds its maximum size of %d octets", queue.ErrStorageFull, s.maxSize))
			}
			result = id
			msgs, sched, bodies := tx.Bucket(bucketMsgs), tx.Bucket(bucketSched), tx.Bucket(bucketBodies)
			// IDs grow, so enqueues append to the end of these buckets:
			// fill pages up instead of leaving each split page half
			// empty for inserts that will not come. (Not sched: leases
			// and retries put keys after those of new items.)
			msgs.FillPercent, bodies.FillPercent = appendFill, appendFill
			if err := msgs.Put([]byte(id), value); err != nil {
				return err
			}
			if err := sched.Put(schedKey(rec.Next, id), nil); err != nil {
				return err
			}
			if !spooled {
				if err := putBody(bodies, id, body, s.chunk); err != nil {
					return err
				}
			}
			if msg.Key != "" {
				if err := tx.Bucket(bucketDedup).Put([]byte(msg.Key), []byte(id)); err != nil {
					return err
				}
			}
			return nil
		},
	}
	err = s.do(req)
	if spooled && (err != nil || result != id) {
		// Not committed, or a duplicate: the spool file is ours to remove.
		_ = os.Remove(s.spoolPath(id))
	}
	if err != nil {
		return fail(err)
	}
	return result, nil
}

func (s *Store) lookupKey(key string) string {
	var id string
	_ = s.db.View(func(tx *bolt.Tx) error {
		id = keyOwner(tx, key, s.now())
		return nil
	})
	return id
}

// keyOwner returns the ID a caller key stands for: a queued item's, or a
// completed item's within KeyRetention; "" if none.
func keyOwner(tx *bolt.Tx, key string, now time.Time) string {
	if id := tx.Bucket(bucketDedup).Get([]byte(key)); id != nil && tx.Bucket(bucketMsgs).Get(id) != nil {
		return string(id)
	}
	if v := tx.Bucket(bucketKeys).Get([]byte(key)); len(v) > 8 && int64(binary.BigEndian.Uint64(v)) > now.UnixNano() {
		return string(v[8:])
	}
	return ""
}

// retainKey remembers the key of a completed item until exp.
func retainKey(tx *bolt.Tx, key string, id []byte, exp int64) error {
	keys := tx.Bucket(bucketKeys)
	if old := keys.Get([]byte(key)); len(old) > 8 {
		if err := tx.Bucket(bucketKeyExp).Delete(keyExpKey(int64(binary.BigEndian.Uint64(old)), key)); err != nil {
			return err
		}
	}
	if err := keys.Put([]byte(key), append(binary.BigEndian.AppendUint64(nil, uint64(exp)), id...)); err != nil {
		return err
	}
	return tx.Bucket(bucketKeyExp).Put(keyExpKey(exp, key), nil)
}

func keyExpKey(exp int64, key string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(exp)), key...)
}

// pruneKeys forgets up to max retained keys whose time is over; the
// commit loop calls it in every group, so the work stays small and
// spread out and no sweep is needed.
func pruneKeys(tx *bolt.Tx, now time.Time, max int) error {
	exp := tx.Bucket(bucketKeyExp)
	var done [][]byte
	c := exp.Cursor()
	for k, _ := c.First(); k != nil && len(done) < max; k, _ = c.Next() {
		if len(k) < 8 || int64(binary.BigEndian.Uint64(k)) > now.UnixNano() {
			break
		}
		done = append(done, bytes.Clone(k))
	}
	keys := tx.Bucket(bucketKeys)
	for _, k := range done {
		if err := exp.Delete(k); err != nil {
			return err
		}
		if v := keys.Get(k[8:]); len(v) > 8 && bytes.Equal(v[:8], k[:8]) {
			if err := keys.Delete(k[8:]); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Store) spoolPath(id string) string { return filepath.Join(s.spoolDir, id) }

// readBody reads a body either into memory (small) or into a spool file
// written and fsynced before the record that points to it is committed.
// The spool directory itself is fsynced once per commit group.
func (s *Store) readBody(id string, r io.Reader) (body []byte, size int64, spooled bool, err error) {
	if r == nil {
		return nil, 0, false, nil
	}
	limit := int64(s.inlineMax)
	if limit < 0 {
		limit = 0
	}
	var buf bytes.Buffer
	if l, ok := r.(interface{ Len() int }); ok {
		// A bytes or strings reader: one allocation instead of a series.
		buf.Grow(int(min(int64(l.Len()), limit) + 1))
	}
	n, err := io.Copy(&buf, io.LimitReader(r, limit+1))
	if err != nil {
		return nil, 0, false, fmt.Errorf("reading body: %w", err)
	}
	if n <= limit && s.inlineMax >= 0 {
		return buf.Bytes(), n, false, nil
	}
	path := s.spoolPath(id)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, 0, false, storageErr(err)
	}
	w := bufio.NewWriterSize(f, 64<<10)
	size, err = io.Copy(w, io.MultiReader(&buf, r))
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return nil, 0, false, fmt.Errorf("writing spool file: %w", storageErr(err))
	}
	return nil, size, true, nil
}

func (s *Store) Lease(ctx context.Context, max int, d time.Duration) ([]*queue.Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, &queue.Error{Op: "lease", Err: err}
	}
	if max <= 0 || d <= 0 {
		return nil, &queue.Error{Op: "lease", Err: fmt.Errorf("%w: max %d, duration %v", queue.ErrInvalid, max, d)}
	}
	var (
		items   []*queue.Item
		corrupt []error
	)
	req := &request{fn: func(tx *bolt.Tx) error {
		items, corrupt = items[:0], corrupt[:0]
		now := s.now()
		until := now.Add(d)
		msgs, sched := tx.Bucket(bucketMsgs), tx.Bucket(bucketSched)
		// Collect first: a bbolt cursor must not move over keys being
		// changed.
		var keys [][]byte
		c := sched.Cursor()
		for k, _ := c.First(); k != nil && len(keys) < max; k, _ = c.Next() {
			if len(k) >= 8 && int64(binary.BigEndian.Uint64(k)) > now.UnixNano() {
				break // keys sort by due time: the rest are later
			}
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			if len(k) <= 8 {
				corrupt = append(corrupt, fmt.Errorf("malformed schedule key %x", k))
				if err := sched.Delete(k); err != nil {
					return err
				}
				continue
			}
			id := string(k[8:])
			raw := msgs.Get(k[8:])
			rec, err := decodeRecord(raw)
			if raw == nil {
				err = errors.New("schedule entry without a record")
			}
			if err != nil {
				if qerr := s.quarantine(tx, id, k, raw, err); qerr != nil {
					return qerr
				}
				corrupt = append(corrupt, fmt.Errorf("%s: %v", id, err))
				continue
			}
			tok, err := msgs.NextSequence()
			if err != nil {
				return err
			}
			rec.Token, rec.Leased, rec.Next = tok, true, until.UnixNano()
			if err := sched.Delete(k); err != nil {
				return err
			}
			if err := sched.Put(schedKey(rec.Next, id), schedLeased); err != nil {
				return err
			}
			if err := msgs.Put([]byte(id), encodeRecord(rec)); err != nil {
				return err
			}
			it := rec.item(id)
			items = append(items, it)
		}
		return nil
	}}
	if err := s.do(req); err != nil {
		return nil, &queue.Error{Op: "lease", Err: err}
	}
	if len(corrupt) > 0 {
		return items, &queue.Error{Op: "lease", Err: fmt.Errorf("%w, quarantined: %w", queue.ErrCorrupt, errors.Join(corrupt...))}
	}
	return items, nil
}

// quarantine moves an undecodable record to the dead bucket, with the
// reason, so that it stops blocking the schedule and an operator can look at
// it. Its body stays where it is.
func (s *Store) quarantine(tx *bolt.Tx, id string, schedK, raw []byte, why error) error {
	s.log.Error("queue: quarantined a corrupt record", "id", id, "err", why)
	v := append([]byte(strings.ReplaceAll(why.Error(), "\n", " ")+"\n"), raw...)
	if err := tx.Bucket(bucketDead).Put([]byte(id), v); err != nil {
		return err
	}
	if raw != nil {
		if err := tx.Bucket(bucketMsgs).Delete([]byte(id)); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketSched).Delete(schedK)
}

// QuarantinedRecord is a record that Lease set aside as undecodable.
type QuarantinedRecord struct {
	ID     string
	Reason string // why it could not be decoded
	Raw    []byte // the stored value as found (nil if there was none)
}

// Quarantined returns the records set aside as undecodable, in ID order,
// for an operator to look at. Their bodies (inline or spool file) are kept.
func (s *Store) Quarantined(ctx context.Context) ([]QuarantinedRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, &queue.Error{Op: "quarantined", Err: err}
	}
	if err := s.readable(); err != nil {
		return nil, &queue.Error{Op: "quarantined", Err: err}
	}
	var out []QuarantinedRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDead).ForEach(func(k, v []byte) error {
			reason, raw, _ := bytes.Cut(v, []byte("\n"))
			q := QuarantinedRecord{ID: string(k), Reason: string(reason)}
			if len(raw) > 0 {
				q.Raw = bytes.Clone(raw)
			}
			out = append(out, q)
			return nil
		})
	})
	if err != nil {
		return nil, &queue.Error{Op: "quarantined", Err: err}
	}
	return out, nil
}

// leased loads the record under lease l, or returns a rejection.
func leased(tx *bolt.Tx, l queue.Lease) (*record, error) {
	raw := tx.Bucket(bucketMsgs).Get([]byte(l.ID))
	if raw == nil {
		return nil, reject(queue.ErrLeaseLost)
	}
	rec, err := decodeRecord(raw)
	if err != nil {
		return nil, reject(fmt.Errorf("%w: %v", queue.ErrCorrupt, err))
	}
	if l.Token == 0 || rec.Token != l.Token {
		return nil, reject(queue.ErrLeaseLost)
	}
	return rec, nil
}

func (s *Store) Record(ctx context.Context, l queue.Lease, u queue.Update) error {
	fail := func(err error) error { return &queue.Error{Op: "record", ID: l.ID, Err: err} }
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	for i := range u.Recipients {
		if u.Recipients[i].Status > queue.StatusFailed {
			return fail(fmt.Errorf("%w: recipient %d status %d", queue.ErrInvalid, i, u.Recipients[i].Status))
		}
	}
	err := s.do(&request{fn: func(tx *bolt.Tx) error {
		rec, err := leased(tx, l)
		if err != nil {
			return err
		}
		if len(u.Recipients) != len(rec.Rcpts) {
			return reject(fmt.Errorf("%w: %d recipient states for %d recipients", queue.ErrInvalid, len(u.Recipients), len(rec.Rcpts)))
		}
		oldKey := schedKey(rec.Next, l.ID)
		rec.apply(&u)
		rec.Leased = false
		rec.Next = unixNano(u.NextAttempt)
		if rec.Next == 0 {
			rec.Next = s.now().UnixNano()
		}
		sched := tx.Bucket(bucketSched)
		if err := sched.Delete(oldKey); err != nil {
			return err
		}
		if err := sched.Put(schedKey(rec.Next, l.ID), nil); err != nil {
			return err
		}
		return tx.Bucket(bucketMsgs).Put([]byte(l.ID), encodeRecord(rec))
	}})
	if err != nil {
		return fail(err)
	}
	return nil
}

func (s *Store) Complete(ctx context.Context, l queue.Lease) error {
	fail := func(err error) error { return &queue.Error{Op: "complete", ID: l.ID, Err: err} }
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	var spooled bool
	err := s.do(&request{fn: func(tx *bolt.Tx) error {
		rec, err := leased(tx, l)
		if err != nil {
			return err
		}
		spooled = rec.Spool
		id := []byte(l.ID)
		if err := tx.Bucket(bucketSched).Delete(schedKey(rec.Next, l.ID)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketMsgs).Delete(id); err != nil {
			return err
		}
		if err := deleteBody(tx.Bucket(bucketBodies), l.ID); err != nil {
			return err
		}
		if rec.Key != "" {
			dedup := tx.Bucket(bucketDedup)
			if bytes.Equal(dedup.Get([]byte(rec.Key)), id) {
				if err := dedup.Delete([]byte(rec.Key)); err != nil {
					return err
				}
			}
			if s.keyKeep > 0 {
				if err := retainKey(tx, rec.Key, id, s.now().Add(s.keyKeep).UnixNano()); err != nil {
					return err
				}
			}
		}
		return nil
	}})
	if err != nil {
		return fail(err)
	}
	if spooled {
		// A crash before this leaves an orphan that Open removes.
		_ = os.Remove(s.spoolPath(l.ID))
	}
	return nil
}

func (s *Store) Body(ctx context.Context, id string) (queue.Body, error) {
	fail := func(err error) (queue.Body, error) { return nil, &queue.Error{Op: "body", ID: id, Err: err} }
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if err := s.readable(); err != nil {
		return fail(err)
	}
	var (
		inline  []byte
		spooled bool
		size    int64
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, err := s.get(tx, id)
		if err != nil {
			return err
		}
		spooled, size = rec.Spool, rec.BodySize
		if !spooled {
			inline, err = getBody(tx.Bucket(bucketBodies), id, size)
			if err != nil {
				return err
			}
			// A body of the wrong length would be delivered as a
			// different message: refuse it.
			if int64(len(inline)) != size {
				return fmt.Errorf("%w: body has %d octets, the record says %d", queue.ErrCorrupt, len(inline), size)
			}
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	if !spooled {
		return queue.BytesBody(inline), nil
	}
	f, err := os.Open(s.spoolPath(id))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if _, ierr := s.Inspect(ctx, id); errors.Is(ierr, queue.ErrNotFound) {
				return fail(queue.ErrNotFound) // completed meanwhile
			}
			return fail(fmt.Errorf("%w: spool file missing: %v", queue.ErrCorrupt, err))
		}
		return fail(err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fail(err)
	}
	if fi.Size() != size {
		_ = f.Close()
		return fail(fmt.Errorf("%w: spool file has %d octets, the record says %d", queue.ErrCorrupt, fi.Size(), size))
	}
	return &fileBody{File: f, size: size}, nil
}

type fileBody struct {
	*os.File
	size int64
}

func (b *fileBody) Size() int64 { return b.size }

// get decodes the record of id in a read transaction.
func (s *Store) get(tx *bolt.Tx, id string) (*record, error) {
	raw := tx.Bucket(bucketMsgs).Get([]byte(id))
	if raw == nil {
		return nil, queue.ErrNotFound
	}
	rec, err := decodeRecord(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", queue.ErrCorrupt, err)
	}
	return rec, nil
}

func (s *Store) readable() error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return queue.ErrClosed
	}
	return nil
}

func (s *Store) Inspect(ctx context.Context, id string) (*queue.Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, &queue.Error{Op: "inspect", ID: id, Err: err}
	}
	if err := s.readable(); err != nil {
		return nil, &queue.Error{Op: "inspect", ID: id, Err: err}
	}
	var it *queue.Item
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, err := s.get(tx, id)
		if err != nil {
			return err
		}
		it = rec.item(id)
		return nil
	})
	if err != nil {
		return nil, &queue.Error{Op: "inspect", ID: id, Err: err}
	}
	return it, nil
}

// List returns the items it can decode; undecodable records are named in
// an error wrapping queue.ErrCorrupt returned with them.
func (s *Store) List(ctx context.Context, after string, limit int) ([]*queue.Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, &queue.Error{Op: "list", Err: err}
	}
	if err := s.readable(); err != nil {
		return nil, &queue.Error{Op: "list", Err: err}
	}
	var (
		items   []*queue.Item
		corrupt []error
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketMsgs).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil && (limit <= 0 || len(items) < limit); k, v = c.Next() {
			rec, err := decodeRecord(v)
			if err != nil {
				corrupt = append(corrupt, fmt.Errorf("%s: %v", k, err))
				continue
			}
			items = append(items, rec.item(string(k)))
		}
		return nil
	})
	if err != nil {
		return nil, &queue.Error{Op: "list", Err: err}
	}
	if len(corrupt) > 0 {
		return items, &queue.Error{Op: "list", Err: fmt.Errorf("%w: %w", queue.ErrCorrupt, errors.Join(corrupt...))}
	}
	return items, nil
}

func (s *Store) Stats(ctx context.Context) (queue.Stats, error) {
	if err := ctx.Err(); err != nil {
		return queue.Stats{}, &queue.Error{Op: "stats", Err: err}
	}
	if err := s.readable(); err != nil {
		return queue.Stats{}, &queue.Error{Op: "stats", Err: err}
	}
	var st queue.Stats
	now := s.now().UnixNano()
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketSched).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) < 8 {
				continue
			}
			st.Items++
			switch {
			case int64(binary.BigEndian.Uint64(k)) <= now:
				st.Due++
			case bytes.Equal(v, schedLeased):
				st.Leased++
			default:
				st.Deferred++
			}
		}
		st.Quarantined = tx.Bucket(bucketDead).Stats().KeyN
		// IDs sort by creation time: the first record is the oldest.
		if k, v := tx.Bucket(bucketMsgs).Cursor().First(); k != nil {
			if rec, err := decodeRecord(v); err == nil {
				st.Oldest = unixTime(rec.Created)
			} else if t, ok := queue.IDTime(string(k)); ok {
				st.Oldest = t
			}
		}
		return nil
	})
	if err != nil {
		return queue.Stats{}, &queue.Error{Op: "stats", Err: err}
	}
	return st, nil
}

func (s *Store) NextDue(ctx context.Context) (time.Time, bool, <-chan struct{}, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, false, nil, &queue.Error{Op: "next due", Err: err}
	}
	if err := s.readable(); err != nil {
		return time.Time{}, false, nil, &queue.Error{Op: "next due", Err: err}
	}
	s.nextMu.Lock()
	defer s.nextMu.Unlock()
	return unixTime(s.next), s.next != 0, s.changed, nil
}

// Close stops the commit loop, after the operations already submitted, and
// closes the database. Items stay stored.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	close(s.reqs)
	s.closeMu.Unlock()
	<-s.loopDone
	s.nextMu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.nextMu.Unlock()
	if err := s.db.Close(); err != nil {
		return &queue.Error{Op: "close", Err: err}
	}
	return nil
}

// syncDir makes the directory entries in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
