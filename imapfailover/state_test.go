package imapfailover

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
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
