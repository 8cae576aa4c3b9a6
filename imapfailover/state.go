package imapfailover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
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

var (
	_ StateStore = (*MemoryStore)(nil)
	_ StateStore = (*FileStore)(nil)
)

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

// FileStore is a StateStore that keeps one JSON file per key in a
// directory. Save writes a temporary file, fsyncs it, renames it over the
// old one and fsyncs the directory, so a crash leaves the old or the new
// state, never a mix. Safe for concurrent use within one process; two
// processes must not share a directory.
type FileStore struct {
	dir string
	mu  sync.Mutex
}

// NewFileStore returns a FileStore in dir. It does no I/O: the directory
// is created by the first Save.
func NewFileStore(dir string) *FileStore { return &FileStore{dir: dir} }

func (s *FileStore) path(key string) string {
	return filepath.Join(s.dir, "mailbox-"+url.PathEscape(key)+".json")
}

// Load implements StateStore.
func (s *FileStore) Load(_ context.Context, key string) (*MailboxState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := os.ReadFile(s.path(key))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &Error{Op: "load state", Err: err}
	}
	st, err := DecodeState(b)
	if err != nil {
		return nil, &Error{Op: "load state", Err: fmt.Errorf("%s: %w", s.path(key), err)}
	}
	return st, nil
}

// Save implements StateStore.
func (s *FileStore) Save(_ context.Context, key string, st *MailboxState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := EncodeState(st)
	if err != nil {
		return &Error{Op: "save state", Err: err}
	}
	if err := writeFileAtomic(s.dir, s.path(key), b); err != nil {
		return &Error{Op: "save state", Err: err}
	}
	return nil
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
}

// ErrBadState reports a state file that cannot be decoded.
var ErrBadState = errors.New("imapfailover: malformed state")

// EncodeState returns the file form of st.
func EncodeState(st *MailboxState) ([]byte, error) {
	f := stateFile{Version: 1, Mailbox: st.Mailbox, UIDValidity: st.UIDValidity, LastUID: uint32(st.LastUID), ModSeq: st.ModSeq}
	uids := slices.Sorted(maps.Keys(st.Messages))
	f.Messages = make([][]any, 0, len(uids))
	for _, uid := range uids {
		m := st.Messages[uid]
		row := []any{uint32(uid), strconv.FormatUint(m.Fingerprint, 16)}
		if m.Flags != nil {
			fl := make([]string, len(m.Flags))
			for i, f := range m.Flags {
				fl[i] = string(f)
			}
			row = append(row, strings.Join(fl, " "))
		}
		f.Messages = append(f.Messages, row)
	}
	for _, fp := range st.Missing {
		f.Missing = append(f.Missing, strconv.FormatUint(fp, 16))
	}
	return json.MarshalIndent(f, "", "\t")
}

// DecodeState parses the file form written by EncodeState. Any defect is
// an error wrapping ErrBadState.
func DecodeState(b []byte) (*MailboxState, error) {
	var f struct {
		Version     int               `json:"version"`
		Mailbox     string            `json:"mailbox"`
		UIDValidity uint32            `json:"uidvalidity"`
		LastUID     uint32            `json:"last_uid"`
		ModSeq      map[string]uint64 `json:"modseq"`
		Messages    []json.RawMessage `json:"messages"`
		Missing     []string          `json:"missing"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("%w: version %d", ErrBadState, f.Version)
	}
	st := &MailboxState{
		Mailbox: f.Mailbox, UIDValidity: f.UIDValidity, LastUID: imap.UID(f.LastUID),
		ModSeq: f.ModSeq, Messages: make(map[imap.UID]KnownMessage, len(f.Messages)),
	}
	for i, raw := range f.Messages {
		var row []json.RawMessage
		if err := json.Unmarshal(raw, &row); err != nil || len(row) < 2 || len(row) > 3 {
			return nil, fmt.Errorf("%w: message %d", ErrBadState, i)
		}
		var uid uint32
		var fp string
		if err := json.Unmarshal(row[0], &uid); err != nil || uid == 0 {
			return nil, fmt.Errorf("%w: message %d: bad UID", ErrBadState, i)
		}
		if err := json.Unmarshal(row[1], &fp); err != nil {
			return nil, fmt.Errorf("%w: message %d: bad fingerprint", ErrBadState, i)
		}
		n, err := strconv.ParseUint(fp, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: message %d: bad fingerprint", ErrBadState, i)
		}
		m := KnownMessage{Fingerprint: n}
		if len(row) == 3 {
			var fl string
			if err := json.Unmarshal(row[2], &fl); err != nil {
				return nil, fmt.Errorf("%w: message %d: bad flags", ErrBadState, i)
			}
			m.Flags = []imap.Flag{}
			for _, f := range strings.Fields(fl) {
				m.Flags = append(m.Flags, imap.Flag(f))
			}
		}
		if _, dup := st.Messages[imap.UID(uid)]; dup {
			return nil, fmt.Errorf("%w: UID %d twice", ErrBadState, uid)
		}
		st.Messages[imap.UID(uid)] = m
	}
	if len(f.Missing) > maxMissing {
		return nil, fmt.Errorf("%w: %d missing fingerprints", ErrBadState, len(f.Missing))
	}
	for i, fp := range f.Missing {
		n, err := strconv.ParseUint(fp, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: missing %d: bad fingerprint", ErrBadState, i)
		}
		st.Missing = append(st.Missing, n)
	}
	return st, nil
}
