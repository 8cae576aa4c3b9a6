package imapfailover

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/emersion/go-imap/v2"
)

// MailboxState is what a reader remembers about one mailbox between
// connections and between runs of the process (RFC 4549 §4.1): the
// UIDVALIDITY the UIDs belong to, the highest UID handled, the
// HIGHESTMODSEQ last seen on each replica (mod-sequences belong to one
// replica, RFC 7162 §3.1.1), and the messages known, each with a
// fingerprint so that a new UIDVALIDITY can be mapped back onto them.
type MailboxState struct {
	Mailbox     string
	UIDValidity uint32
	// LastUID: every message with a UID up to LastUID has been handled or
	// was present when watching started. Messages above it that are in
	// Messages were handled too (after a UIDVALIDITY remap).
	LastUID imap.UID
	// ModSeq is the HIGHESTMODSEQ per replica name at the last complete
	// resync on that replica.
	ModSeq map[string]uint64
	// Messages known by UID.
	Messages map[imap.UID]KnownMessage
	// Missing holds the fingerprints of handled messages that the last
	// UIDVALIDITY remaps did not find. The replica remapped onto may lag
	// behind the one they were handled on, so when they appear (on another
	// replica, or later on this one) they are recognised rather than
	// handed out again. Oldest first, at most maxMissing.
	Missing []uint64
}

// maxMissing bounds MailboxState.Missing; beyond it the oldest are
// forgotten (a message missing through that many remaps is gone).
const maxMissing = 10000

// KnownMessage is what is remembered of one message.
type KnownMessage struct {
	// Fingerprint identifies the message across UIDVALIDITY changes: a
	// hash of its Message-ID, or of its Date, From, Subject and size when
	// it has none.
	Fingerprint uint64
	// Flags as last seen, kept only when flag changes are watched.
	Flags []imap.Flag
}

// Clone returns a deep copy.
func (s *MailboxState) Clone() *MailboxState {
	if s == nil {
		return nil
	}
	c := *s
	c.ModSeq = maps.Clone(s.ModSeq)
	c.Missing = slices.Clone(s.Missing)
	c.Messages = make(map[imap.UID]KnownMessage, len(s.Messages))
	for uid, m := range s.Messages {
		m.Flags = slices.Clone(m.Flags)
		c.Messages[uid] = m
	}
	return &c
}

// StateStore keeps MailboxState values by key. Save must be durable when
// it returns: Watch calls it after the handler returned and before the
// next message, which is what makes delivery exactly-once across restarts.
type StateStore interface {
	// Load returns the saved state, or nil and no error when there is none.
	Load(ctx context.Context, key string) (*MailboxState, error)
	// Save replaces the state under key.
	Save(ctx context.Context, key string, st *MailboxState) error
}

// StateChange is one change to a MailboxState, recorded by a
// StateJournal as a whole. Every field set applies; a change made under
// another UIDVALIDITY than the state's is ignored.
type StateChange struct {
	UIDValidity uint32
	// LastUID raises MailboxState.LastUID (it never lowers it).
	LastUID imap.UID
	// Set: messages now known as given (handled, found again under a new
	// UID, or with new flags).
	Set map[imap.UID]KnownMessage
	// Forget: messages gone.
	Forget []imap.UID
	// Found: fingerprints taken out of MailboxState.Missing, one
	// occurrence each.
	Found []uint64
	// Replica, when not empty, last had HIGHESTMODSEQ ModSeq.
	Replica string
	ModSeq  uint64
}

// size is how many entries the change holds, for journal accounting.
func (ch *StateChange) size() int { return max(1, len(ch.Set)+len(ch.Forget)+len(ch.Found)) }

// StateJournal is implemented by a StateStore that can record one change
// without rewriting the whole state. A Mailbox uses it, when its store
// has it, after each handled message, so that handling a message costs the
// same in a mailbox of ten messages or a million. Record must be durable
// when it returns, like Save, and a later Save replaces what was recorded.
type StateJournal interface {
	Record(ctx context.Context, key string, ch StateChange) error
}

var (
	_ StateStore   = (*MemoryStore)(nil)
	_ StateStore   = (*FileStore)(nil)
	_ StateJournal = (*MemoryStore)(nil)
	_ StateJournal = (*FileStore)(nil)
)

// Apply makes ch on s.
func (s *MailboxState) Apply(ch StateChange) {
	if ch.UIDValidity != s.UIDValidity {
		return
	}
	if ch.LastUID > s.LastUID {
		s.LastUID = ch.LastUID
	}
	if s.Messages == nil {
		s.Messages = make(map[imap.UID]KnownMessage)
	}
	for _, uid := range ch.Forget {
		delete(s.Messages, uid)
	}
	for uid, m := range ch.Set {
		m.Flags = slices.Clone(m.Flags)
		s.Messages[uid] = m
	}
	for _, fp := range ch.Found {
		if i := slices.Index(s.Missing, fp); i >= 0 {
			s.Missing = slices.Delete(s.Missing, i, i+1)
		}
	}
	if ch.Replica != "" {
		if s.ModSeq == nil {
			s.ModSeq = make(map[string]uint64)
		}
		s.ModSeq[ch.Replica] = ch.ModSeq
	}
}

// MemoryStore is a StateStore in memory: state survives reconnects and
// failovers but not the process. Safe for concurrent use; the zero value
// is ready.
type MemoryStore struct {
	mu sync.Mutex
	m  map[string]*MailboxState
}

// Load implements StateStore.
func (s *MemoryStore) Load(_ context.Context, key string) (*MailboxState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key].Clone(), nil
}

// Save implements StateStore.
func (s *MemoryStore) Save(_ context.Context, key string, st *MailboxState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]*MailboxState)
	}
	s.m[key] = st.Clone()
	return nil
}

// Record implements StateJournal.
func (s *MemoryStore) Record(_ context.Context, key string, ch StateChange) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.m[key]; st != nil {
		st.Apply(ch)
	}
	return nil
}

// FileStore is a StateStore that keeps, per key, a JSON snapshot and a
// journal of changes recorded since, in a directory. Save writes a
// temporary file, fsyncs it, renames it over the old snapshot and fsyncs
// the directory, so a crash leaves the old or the new state, never a mix;
// it then starts a new journal. Record appends one line to the journal
// and fsyncs it; a line torn by a crash is ignored on Load (the change it
// held was not acknowledged) and cut off by the next Record, and lines
// written for an older snapshot are ignored too. Every compactEvery records the journal is folded into a new
// snapshot. Safe for concurrent use; use one FileStore per directory (two
// FileStores, or two processes, must not share one).
type FileStore struct {
	dir string

	mu       sync.Mutex
	journals map[string]*journalState
}

type journalState struct {
	id      string // of the snapshot the journal belongs to
	records int
	// torn is set when the journal ends in a line torn by a crash; the
	// next Record cuts the file to complete, its complete lines, so that
	// its line does not continue the torn one.
	torn     bool
	complete int64
}

// compactEvery is how many records a journal takes before it is folded
// into a new snapshot: the snapshot costs the mailbox's size, so it is
// written once per that many messages.
const compactEvery = 1024

// NewFileStore returns a FileStore in dir. It does no I/O: the directory
// is created by the first Save.
func NewFileStore(dir string) *FileStore { return &FileStore{dir: dir} }

func (s *FileStore) path(key string) string {
	return filepath.Join(s.dir, "mailbox-"+url.PathEscape(key)+".json")
}

func (s *FileStore) journalPath(key string) string {
	return filepath.Join(s.dir, "mailbox-"+url.PathEscape(key)+".journal")
}

// Load implements StateStore.
func (s *FileStore) Load(_ context.Context, key string) (*MailboxState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.loadLocked(key)
	if err != nil {
		return nil, &Error{Op: "load state", Err: err}
	}
	return st, nil
}

func (s *FileStore) loadLocked(key string) (*MailboxState, error) {
	b, err := os.ReadFile(s.path(key))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st, id, err := decodeState(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.path(key), err)
	}
	jb, err := os.ReadFile(s.journalPath(key))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	n, err := replayJournal(st, id, jb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.journalPath(key), err)
	}
	if s.journals == nil {
		s.journals = make(map[string]*journalState)
	}
	complete := bytes.LastIndexByte(jb, '\n') + 1
	s.journals[key] = &journalState{id: id, records: n, torn: complete < len(jb), complete: int64(complete)}
	return st, nil
}

// Save implements StateStore.
func (s *FileStore) Save(_ context.Context, key string, st *MailboxState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.saveLocked(key, st); err != nil {
		return &Error{Op: "save state", Err: err}
	}
	return nil
}

func (s *FileStore) saveLocked(key string, st *MailboxState) error {
	id := strconv.FormatUint(rand.Uint64(), 16)
	b, err := encodeState(st, id)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.dir, s.path(key), b); err != nil {
		return err
	}
	if s.journals == nil {
		s.journals = make(map[string]*journalState)
	}
	s.journals[key] = &journalState{id: id}
	// The old journal's lines name the old snapshot: a crash before this
	// removal leaves lines that Load ignores.
	if err := os.Remove(s.journalPath(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Record implements StateJournal.
func (s *FileStore) Record(_ context.Context, key string, ch StateChange) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.recordLocked(key, ch); err != nil {
		return &Error{Op: "save state", Err: err}
	}
	return nil
}

func (s *FileStore) recordLocked(key string, ch StateChange) error {
	j := s.journals[key]
	if j == nil {
		st, err := s.loadLocked(key)
		if err != nil {
			return err
		}
		if st == nil {
			return errors.New("no state to record a change in")
		}
		j = s.journals[key]
	}
	line, err := json.Marshal(journalLine(j.id, ch))
	if err != nil {
		return err
	}
	if j.torn {
		if err := os.Truncate(s.journalPath(key), j.complete); err != nil {
			return err
		}
		j.torn = false
	}
	if err := appendSync(s.dir, s.journalPath(key), append(line, '\n')); err != nil {
		// The write may have left part of the line (a full disk): load
		// again before the next record, which then cuts it off.
		delete(s.journals, key)
		return err
	}
	j.records += ch.size()
	if j.records < compactEvery {
		return nil
	}
	st, err := s.loadLocked(key)
	if err != nil {
		return err
	}
	return s.saveLocked(key, st)
}

// appendSync appends b to the file at path and fsyncs it, and the
// directory too when the file is new.
func appendSync(dir, path string, b []byte) error {
	created := false
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	} else if err == nil {
		created = true
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if !created {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// journalRecord is one line of a FileStore journal; Set holds rows as in
// the snapshot's messages.
type journalRecord struct {
	Snapshot    string   `json:"snapshot"`
	UIDValidity uint32   `json:"uidvalidity"`
	LastUID     uint32   `json:"last_uid,omitempty"`
	Set         [][]any  `json:"set,omitempty"`
	Forget      []uint32 `json:"forget,omitempty"`
	Found       []string `json:"found,omitempty"`
	Replica     string   `json:"replica,omitempty"`
	ModSeq      uint64   `json:"modseq,omitempty"`
}

func journalLine(id string, ch StateChange) journalRecord {
	r := journalRecord{Snapshot: id, UIDValidity: ch.UIDValidity, LastUID: uint32(ch.LastUID), Replica: ch.Replica, ModSeq: ch.ModSeq}
	r.Set = messageRows(ch.Set)
	for _, uid := range ch.Forget {
		r.Forget = append(r.Forget, uint32(uid))
	}
	for _, fp := range ch.Found {
		r.Found = append(r.Found, strconv.FormatUint(fp, 16))
	}
	return r
}

// replayJournal applies the journal lines written for snapshot id to st
// and returns how many entries they held. A last line without its newline
// was torn by a crash and is ignored.
func replayJournal(st *MailboxState, id string, b []byte) (int, error) {
	n, lines := 0, 0
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break // torn
		}
		line := b[:i]
		b = b[i+1:]
		lines++
		var r struct {
			Snapshot    string   `json:"snapshot"`
			UIDValidity uint32   `json:"uidvalidity"`
			LastUID     uint32   `json:"last_uid"`
			Set         [][]any  `json:"set"`
			Forget      []uint32 `json:"forget"`
			Found       []string `json:"found"`
			Replica     string   `json:"replica"`
			ModSeq      uint64   `json:"modseq"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			return 0, fmt.Errorf("%w: journal line %d: %w", ErrBadState, lines, err)
		}
		set, err := decodeRows(r.Set)
		if err != nil {
			return 0, fmt.Errorf("journal line %d: %w", lines, err)
		}
		ch := StateChange{UIDValidity: r.UIDValidity, LastUID: imap.UID(r.LastUID), Set: set, Replica: r.Replica, ModSeq: r.ModSeq}
		for _, uid := range r.Forget {
			ch.Forget = append(ch.Forget, imap.UID(uid))
		}
		for _, fp := range r.Found {
			v, err := strconv.ParseUint(fp, 16, 64)
			if err != nil {
				return 0, fmt.Errorf("%w: journal line %d: bad fingerprint", ErrBadState, lines)
			}
			ch.Found = append(ch.Found, v)
		}
		n += ch.size()
		if r.Snapshot == id {
			st.Apply(ch)
		}
	}
	return n, nil
}

// messageRows is the file form of messages: [uid, "fingerprint in hex",
// "flags separated by spaces"], the flags only when they are kept.
func messageRows(msgs map[imap.UID]KnownMessage) [][]any {
	if len(msgs) == 0 {
		return nil
	}
	uids := slices.Sorted(maps.Keys(msgs))
	rows := make([][]any, 0, len(uids))
	for _, uid := range uids {
		m := msgs[uid]
		row := []any{uint32(uid), strconv.FormatUint(m.Fingerprint, 16)}
		if m.Flags != nil {
			row = append(row, joinFlags(m.Flags))
		}
		rows = append(rows, row)
	}
	return rows
}

// decodeRows parses rows written by messageRows.
func decodeRows(rows [][]any) (map[imap.UID]KnownMessage, error) {
	out := make(map[imap.UID]KnownMessage, len(rows))
	for i, row := range rows {
		if len(row) < 2 || len(row) > 3 {
			return nil, fmt.Errorf("%w: message %d", ErrBadState, i)
		}
		n, ok := row[0].(float64)
		if !ok || n < 1 || n > math.MaxUint32 || n != math.Trunc(n) {
			return nil, fmt.Errorf("%w: message %d: bad UID", ErrBadState, i)
		}
		uid := imap.UID(n)
		fp, ok := row[1].(string)
		if !ok {
			return nil, fmt.Errorf("%w: message %d: bad fingerprint", ErrBadState, i)
		}
		v, err := strconv.ParseUint(fp, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: message %d: bad fingerprint", ErrBadState, i)
		}
		m := KnownMessage{Fingerprint: v}
		if len(row) == 3 {
			fl, ok := row[2].(string)
			if !ok {
				return nil, fmt.Errorf("%w: message %d: bad flags", ErrBadState, i)
			}
			m.Flags = splitFlags(fl)
		}
		if _, dup := out[uid]; dup {
			return nil, fmt.Errorf("%w: UID %d twice", ErrBadState, uid)
		}
		out[uid] = m
	}
	return out, nil
}

func joinFlags(flags []imap.Flag) string {
	fl := make([]string, len(flags))
	for i, f := range flags {
		fl[i] = string(f)
	}
	return strings.Join(fl, " ")
}

func splitFlags(s string) []imap.Flag {
	out := []imap.Flag{}
	for _, f := range strings.Fields(s) {
		out = append(out, imap.Flag(f))
	}
	return out
}

func writeFileAtomic(dir, path string, b []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-state-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(b); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	// The rename is durable only once the directory is synced.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// stateFile is the on-disk form: readable, and compact enough for large
// mailboxes (one short array per message).
type stateFile struct {
	Version     int               `json:"version"`
	Mailbox     string            `json:"mailbox"`
	UIDValidity uint32            `json:"uidvalidity"`
	LastUID     uint32            `json:"last_uid"`
	ModSeq      map[string]uint64 `json:"modseq,omitempty"`
	// Messages: [uid, "fingerprint in hex", "flags separated by spaces"]
	// with the flags element present only when flags are kept.
	Messages [][]any `json:"messages"`
	// Missing: fingerprints in hex.
	Missing []string `json:"missing,omitempty"`
	// Snapshot names this snapshot in the lines of its journal.
	Snapshot string `json:"snapshot,omitempty"`
}

// ErrBadState reports a state file that cannot be decoded.
var ErrBadState = errors.New("imapfailover: malformed state")

// EncodeState returns the file form of st.
func EncodeState(st *MailboxState) ([]byte, error) { return encodeState(st, "") }

func encodeState(st *MailboxState, id string) ([]byte, error) {
	f := stateFile{Version: 1, Mailbox: st.Mailbox, UIDValidity: st.UIDValidity, LastUID: uint32(st.LastUID), ModSeq: st.ModSeq, Snapshot: id}
	f.Messages = messageRows(st.Messages)
	if f.Messages == nil {
		f.Messages = [][]any{}
	}
	for _, fp := range st.Missing {
		f.Missing = append(f.Missing, strconv.FormatUint(fp, 16))
	}
	return json.MarshalIndent(f, "", "\t")
}

// DecodeState parses the file form written by EncodeState. Any defect is
// an error wrapping ErrBadState.
func DecodeState(b []byte) (*MailboxState, error) {
	st, _, err := decodeState(b)
	return st, err
}

func decodeState(b []byte) (*MailboxState, string, error) {
	var f struct {
		Version     int               `json:"version"`
		Mailbox     string            `json:"mailbox"`
		UIDValidity uint32            `json:"uidvalidity"`
		LastUID     uint32            `json:"last_uid"`
		ModSeq      map[string]uint64 `json:"modseq"`
		Messages    [][]any           `json:"messages"`
		Missing     []string          `json:"missing"`
		Snapshot    string            `json:"snapshot"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrBadState, err)
	}
	if f.Version != 1 {
		return nil, "", fmt.Errorf("%w: version %d", ErrBadState, f.Version)
	}
	msgs, err := decodeRows(f.Messages)
	if err != nil {
		return nil, "", err
	}
	st := &MailboxState{
		Mailbox: f.Mailbox, UIDValidity: f.UIDValidity, LastUID: imap.UID(f.LastUID),
		ModSeq: f.ModSeq, Messages: msgs,
	}
	if len(f.Missing) > maxMissing {
		return nil, "", fmt.Errorf("%w: %d missing fingerprints", ErrBadState, len(f.Missing))
	}
	for i, fp := range f.Missing {
		n, err := strconv.ParseUint(fp, 16, 64)
		if err != nil {
			return nil, "", fmt.Errorf("%w: missing %d: bad fingerprint", ErrBadState, i)
		}
		st.Missing = append(st.Missing, n)
	}
	return st, f.Snapshot, nil
}
