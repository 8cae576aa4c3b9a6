package imapfailover

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/hamail/hamail/internal/imaptest"
)

func sampleState() *MailboxState {
	return &MailboxState{
		Mailbox:     "INBOX",
		UIDValidity: 1700000000,
		LastUID:     42,
		ModSeq:      map[string]uint64{"imap1": 900, "imap2": 17},
		Messages: map[imap.UID]KnownMessage{
			7:  {Fingerprint: 0xdeadbeef, Flags: []imap.Flag{imap.FlagSeen, "$Label1"}},
			9:  {Fingerprint: 1, Flags: []imap.Flag{}},
			42: {Fingerprint: 1<<64 - 1},
		},
		Missing: []uint64{5, 5, 1 << 63},
	}
}

func TestStateEncodingRoundTrip(t *testing.T) {
	t.Parallel()
	st := sampleState()
	b, err := EncodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, st)
	}
	// The file is meant to be read by a person too.
	for _, want := range []string{`"uidvalidity": 1700000000`, `"last_uid": 42`, `"\\Seen $Label1"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("encoded state lacks %s:\n%s", want, b)
		}
	}
}

func TestDecodeStateRejectsDefects(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		``,
		`{`,
		`{"version": 2, "messages": []}`,
		`{"version": 1, "messages": [[0, "1"]]}`,
		`{"version": 1, "messages": [[1]]}`,
		`{"version": 1, "messages": [[1, "zz"]]}`,
		`{"version": 1, "messages": [[1, "1", 5]]}`,
		`{"version": 1, "messages": [[1, "1"], [1, "2"]]}`,
		`{"version": 1, "messages": [], "missing": ["not hex"]}`,
		`{"version": 1, "uidvalidity": -1, "messages": []}`,
	} {
		if st, err := DecodeState([]byte(in)); !errors.Is(err, ErrBadState) {
			t.Errorf("%s: got %+v, %v", in, st, err)
		}
	}
}

func TestFileStoreDurability(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "state")
	fs := NewFileStore(dir)
	ctx := t.Context()
	if st, err := fs.Load(ctx, "INBOX"); st != nil || err != nil {
		t.Fatalf("empty store: %+v %v", st, err)
	}
	st := sampleState()
	if err := fs.Save(ctx, "INBOX", st); err != nil {
		t.Fatal(err)
	}
	// A crash during a later Save leaves a partial temporary file beside
	// the state; it does not change what Load sees.
	if err := os.WriteFile(filepath.Join(dir, ".tmp-state-123"), []byte(`{"version": 1, "last_ui`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := NewFileStore(dir).Load(ctx, "INBOX")
	if err != nil || !reflect.DeepEqual(got, st) {
		t.Fatalf("after restart: %+v %v", got, err)
	}
	// Keys are names of mailboxes: any of them stays inside dir.
	for _, key := range []string{"../escape", "Archive/2026", "Lists.go-nuts", "Entwürfe"} {
		if err := fs.Save(ctx, key, st); err != nil {
			t.Fatal(err)
		}
		if got, err := fs.Load(ctx, key); err != nil || got == nil {
			t.Fatalf("%s: %+v %v", key, got, err)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(dir))
	if err != nil || len(entries) != 1 {
		t.Fatalf("files outside the store directory: %v %v", entries, err)
	}
}

// A damaged state file stops Sync with a typed error and is left as it
// is: starting over would hand every message out again.
func TestDamagedStateFileStopsSync(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, nil)
	appendN(t, s, 1, 2)
	dir := t.TempDir()
	fs := NewFileStore(dir)
	p := newTestPool(t, s, nil)
	if _, err := p.Mailbox("INBOX", &MailboxOptions{Store: fs}).Sync(t.Context(), newRecorder().handle); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "mailbox-INBOX.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	damaged := b[:len(b)/2]
	if err := os.WriteFile(path, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	mb := newTestPool(t, s, nil).Mailbox("INBOX", &MailboxOptions{Store: fs, DeliverExisting: true})
	_, err = mb.Sync(t.Context(), rec.handle)
	var e *Error
	if !errors.Is(err, ErrBadState) || !errors.As(err, &e) || e.Op != "load state" {
		t.Fatalf("err %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := mb.Watch(ctx, rec.handle); !errors.Is(err, ErrBadState) {
		t.Fatalf("Watch: %v", err)
	}
	if rec.total() != 0 {
		t.Fatalf("%d messages handed out", rec.total())
	}
	if after, _ := os.ReadFile(path); string(after) != string(damaged) {
		t.Fatal("damaged state overwritten")
	}
}

func FuzzDecodeState(f *testing.F) {
	b, err := EncodeState(sampleState())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"version": 1, "messages": []}`))
	f.Add([]byte(`{"version": 1, "messages": [[1, "ff", ""]], "missing": ["1"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := DecodeState(b)
		if err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		// What decodes encodes to a file that decodes to the same state.
		out, err := EncodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeState(out)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", out, err)
		}
		if !reflect.DeepEqual(normState(again), normState(st)) {
			t.Fatalf("round trip changed the state:\n%+v\n%+v", st, again)
		}
	})
}

// normState makes empty and nil maps and slices compare equal.
func normState(st *MailboxState) *MailboxState {
	c := st.Clone()
	if len(c.ModSeq) == 0 {
		c.ModSeq = nil
	}
	if len(c.Missing) == 0 {
		c.Missing = nil
	}
	for uid, m := range c.Messages {
		if m.Flags != nil && len(m.Flags) == 0 {
			m.Flags = []imap.Flag{}
			c.Messages[uid] = m
		}
	}
	return c
}

func TestFileStoreJournal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := t.Context()
	fs := NewFileStore(dir)
	st := sampleState()
	if err := fs.Save(ctx, "INBOX", st); err != nil {
		t.Fatal(err)
	}
	want := st.Clone()
	for uid := imap.UID(43); uid <= 45; uid++ {
		ch := StateChange{UIDValidity: st.UIDValidity, LastUID: uid, Set: map[imap.UID]KnownMessage{uid: KnownMessage{Fingerprint: uint64(uid), Flags: []imap.Flag{imap.FlagSeen}}}}
		if err := fs.Record(ctx, "INBOX", ch); err != nil {
			t.Fatal(err)
		}
		want.Apply(ch)
	}
	modseq := StateChange{UIDValidity: st.UIDValidity, Replica: "imap2", ModSeq: 18}
	if err := fs.Record(ctx, "INBOX", modseq); err != nil {
		t.Fatal(err)
	}
	want.Apply(modseq)
	// A change made under another UIDVALIDITY does not apply.
	if err := fs.Record(ctx, "INBOX", StateChange{UIDValidity: 1, LastUID: 1000, Set: map[imap.UID]KnownMessage{1000: {}}}); err != nil {
		t.Fatal(err)
	}
	load := func() (*MailboxState, error) {
		t.Helper()
		return NewFileStore(dir).Load(ctx, "INBOX")
	}
	if got, err := load(); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("after records:\n got %+v %v\nwant %+v", got, err, want)
	}

	// A crash in the middle of a record leaves a torn last line: that
	// record was never acknowledged, the others stand.
	journal := filepath.Join(dir, "mailbox-INBOX.journal")
	f, err := os.OpenFile(journal, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"snapshot":"`)
	f.Close()
	if got, err := load(); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("after a torn record: %+v %v", got, err)
	}
	// After the restart, records go on: the torn tail must not glue onto
	// the next line and make the whole journal unreadable.
	restarted := NewFileStore(dir)
	if _, err := restarted.Load(ctx, "INBOX"); err != nil {
		t.Fatal(err)
	}
	after := StateChange{UIDValidity: st.UIDValidity, LastUID: 46, Set: map[imap.UID]KnownMessage{46: {Fingerprint: 46, Flags: []imap.Flag{}}}}
	if err := restarted.Record(ctx, "INBOX", after); err != nil {
		t.Fatal(err)
	}
	want.Apply(after)
	if got, err := load(); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("record after a torn record:\n got %+v %v\nwant %+v", got, err, want)
	}
	// A damaged line before the end is not a crash: it is reported.
	b, _ := os.ReadFile(journal)
	if err := os.WriteFile(journal, append([]byte("garbage\n"), b...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := load(); !errors.Is(err, ErrBadState) {
		t.Fatalf("damaged journal: %v", err)
	}
	os.WriteFile(journal, b, 0o600)

	// Save starts over: a crash before the old journal is removed leaves
	// lines of the old snapshot, which do not apply to the new one.
	fs = NewFileStore(dir)
	if _, err := fs.Load(ctx, "INBOX"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Save(ctx, "INBOX", st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(journal, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := load(); err != nil || !reflect.DeepEqual(got, st) {
		t.Fatalf("old journal applied to a new snapshot: %+v %v", got, err)
	}
}

func TestFileStoreJournalCompacts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := t.Context()
	fs := NewFileStore(dir)
	st := &MailboxState{Mailbox: "INBOX", UIDValidity: 7}
	if err := fs.Save(ctx, "INBOX", st); err != nil {
		t.Fatal(err)
	}
	for uid := imap.UID(1); uid <= compactEvery+2; uid++ {
		if err := fs.Record(ctx, "INBOX", StateChange{UIDValidity: 7, LastUID: uid, Set: map[imap.UID]KnownMessage{uid: KnownMessage{Fingerprint: uint64(uid)}}}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "mailbox-INBOX.journal"))
	if err != nil || bytes.Count(b, []byte("\n")) != 2 {
		t.Fatalf("journal after compaction: %d lines, %v", bytes.Count(b, []byte("\n")), err)
	}
	got, err := NewFileStore(dir).Load(ctx, "INBOX")
	if err != nil || got.LastUID != compactEvery+2 || len(got.Messages) != compactEvery+2 {
		t.Fatalf("after compaction: last %d, %d messages, %v", got.LastUID, len(got.Messages), err)
	}
}

func TestMemoryStoreRecord(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	var ms MemoryStore
	if err := ms.Record(ctx, "INBOX", StateChange{UIDValidity: 1, LastUID: 5}); err != nil {
		t.Fatal(err)
	}
	if st, _ := ms.Load(ctx, "INBOX"); st != nil {
		t.Fatalf("record without state created %+v", st)
	}
	st := sampleState()
	ms.Save(ctx, "INBOX", st)
	ch := StateChange{UIDValidity: st.UIDValidity, LastUID: 50, Set: map[imap.UID]KnownMessage{50: KnownMessage{Fingerprint: 9}}}
	if err := ms.Record(ctx, "INBOX", ch); err != nil {
		t.Fatal(err)
	}
	st.Apply(ch)
	if got, _ := ms.Load(ctx, "INBOX"); !reflect.DeepEqual(got, st) {
		t.Fatalf("got %+v", got)
	}
}

func FuzzReplayJournal(f *testing.F) {
	f.Add([]byte(`{"snapshot":"a","uidvalidity":1,"last_uid":3,"set":[[3,"ff","\\Seen"]]}` + "\n"))
	f.Add([]byte(`{"snapshot":"a","uidvalidity":1,"replica":"imap1","modseq":9}` + "\n" + `{"snapshot":"a"`))
	f.Add([]byte(`{"snapshot":"a","uidvalidity":1,"forget":[1,2],"found":["5"],"set":[[4,"5"]]}` + "\n"))
	f.Add([]byte(`{"snapshot":"b","uidvalidity":1,"set":[[3,"zz"]]}` + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st := &MailboxState{UIDValidity: 1, Missing: []uint64{5, 5}}
		if _, err := replayJournal(st, "a", b); err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if _, ok := st.Messages[0]; ok {
			t.Fatal("message with UID 0")
		}
		if len(st.Missing) > 2 {
			t.Fatalf("missing grew: %v", st.Missing)
		}
	})
}

// A resync that finds an expunge, a flag change and a new message writes
// journal records, not a new snapshot, and a new process reads the same
// state back.
func TestResyncWritesJournalNotSnapshot(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	appendN(t, s, 1, 4)
	dir := t.TempDir()
	p := newTestPool(t, s, nil)
	opts := &MailboxOptions{Store: NewFileStore(dir), OnFlags: func(context.Context, []FlagChange) error { return nil }}
	mb := p.Mailbox("INBOX", opts)
	rec := newRecorder()
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	snapshot, err := os.ReadFile(filepath.Join(dir, "mailbox-INBOX.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Expunge("INBOX", imap.UIDSetNum(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Store("INBOX", imap.UIDSetNum(3), imap.StoreFlagsAdd, []imap.Flag{imap.FlagFlagged}); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 5, 5)
	rep, err := mb.Sync(t.Context(), rec.handle)
	if err != nil || rep.Delivered != 1 || rep.FlagChanges != 1 || len(rep.Expunged) != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "mailbox-INBOX.json")); !bytes.Equal(after, snapshot) {
		t.Fatal("snapshot rewritten")
	}
	got, err := NewFileStore(dir).Load(t.Context(), "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	_, gone := got.Messages[1]
	if gone || len(got.Messages) != 4 || got.LastUID != 5 || len(got.Messages[3].Flags) != 1 || got.Messages[3].Flags[0] != imap.FlagFlagged {
		t.Fatalf("state read back: %+v", got)
	}
}

// failingJournal is a FileStore whose Record and Save fail while fail is
// set.
type failingJournal struct {
	*FileStore
	fail atomic.Bool
}

func (f *failingJournal) Save(ctx context.Context, key string, st *MailboxState) error {
	if f.fail.Load() {
		return errors.New("no space left on device")
	}
	return f.FileStore.Save(ctx, key, st)
}

func (f *failingJournal) Record(ctx context.Context, key string, ch StateChange) error {
	if f.fail.Load() {
		return errors.New("no space left on device")
	}
	return f.FileStore.Record(ctx, key, ch)
}

// A change whose record failed reaches the store with the next write:
// the journal holds differences, so writing only the next change would
// leave the failed one out of the stored state for good.
func TestFailedRecordWrittenLater(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	dir := t.TempDir()
	store := &failingJournal{FileStore: NewFileStore(dir)}
	p := newTestPool(t, s, nil)
	mb := p.Mailbox("INBOX", &MailboxOptions{Store: store})
	rec := newRecorder()
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 1, 1)
	store.fail.Store(true)
	if _, err := mb.Sync(t.Context(), rec.handle); err == nil {
		t.Fatal("Sync succeeded with a failing store")
	}
	store.fail.Store(false)
	appendN(t, s, 2, 2)
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	rec.assertExactlyOnce(t, 1, 2)
	got, err := NewFileStore(dir).Load(t.Context(), "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Messages) != 2 || got.LastUID != 2 {
		t.Fatalf("stored state after a failed record: last UID %d, messages %v; want both messages", got.LastUID, got.Messages)
	}
}

// A first sync whose save failed is saved whole by the next one, not
// followed by records of changes to a state the store does not have.
func TestFailedFirstSaveWrittenLater(t *testing.T) {
	t.Parallel()
	s := imaptest.NewSet(t, &imaptest.Options{Replicas: 1})
	appendN(t, s, 1, 2)
	dir := t.TempDir()
	store := &failingJournal{FileStore: NewFileStore(dir)}
	p := newTestPool(t, s, nil)
	mb := p.Mailbox("INBOX", &MailboxOptions{Store: store})
	rec := newRecorder()
	store.fail.Store(true)
	if _, err := mb.Sync(t.Context(), rec.handle); err == nil {
		t.Fatal("Sync succeeded with a failing store")
	}
	store.fail.Store(false)
	appendN(t, s, 3, 3)
	if _, err := mb.Sync(t.Context(), rec.handle); err != nil {
		t.Fatal(err)
	}
	rec.assertExactlyOnce(t, 3, 3)
	got, err := NewFileStore(dir).Load(t.Context(), "INBOX")
	if err != nil || got == nil || len(got.Messages) != 3 || got.LastUID != 3 {
		t.Fatalf("stored state after a failed first save: %+v, %v; want the three messages", got, err)
	}
}
