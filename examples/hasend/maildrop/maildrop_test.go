package maildrop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

type submitted struct {
	key  string
	env  Envelope
	body string
}

func collect(out *[]submitted) SubmitFunc {
	return func(_ context.Context, key string, env Envelope, body io.Reader) error {
		b, err := io.ReadAll(body)
		if err != nil {
			return err
		}
		*out = append(*out, submitted{key, env, string(b)})
		return nil
	}
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestDropThenPickupInOrder(t *testing.T) {
	t.Parallel()
	d, err := Open(filepath.Join(t.TempDir(), "maildrop"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i, body := range []string{"first\r\n", "second\r\n", "third\r\n"} {
		name, err := d.Drop(Envelope{From: "a@example.org", To: []string{"b@example.org", string(rune('c'+i)) + "@example.org"}}, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	if got := entries(t, filepath.Join(d.Path(), "tmp")); len(got) != 0 {
		t.Errorf("files left in tmp/: %q", got)
	}
	var got []submitted
	n, err := d.Pickup(t.Context(), collect(&got))
	if err != nil || n != 3 {
		t.Fatalf("Pickup = %d, %v; want 3, nil", n, err)
	}
	for i, s := range got {
		if s.key != Key(names[i]) {
			t.Errorf("message %d submitted under key %q, want %q (drop order)", i, s.key, Key(names[i]))
		}
		if s.env.From != "a@example.org" || len(s.env.To) != 2 || s.env.To[1] != string(rune('c'+i))+"@example.org" {
			t.Errorf("message %d envelope %+v", i, s.env)
		}
	}
	if got[0].body != "first\r\n" || got[2].body != "third\r\n" {
		t.Errorf("bodies %q %q", got[0].body, got[2].body)
	}
	if left := entries(t, filepath.Join(d.Path(), "new")); len(left) != 0 {
		t.Errorf("submitted files not removed: %q", left)
	}
	if n, err := d.Pickup(t.Context(), collect(&got)); n != 0 || err != nil {
		t.Errorf("second Pickup = %d, %v; want nothing", n, err)
	}
}

func TestFailedSubmitKeepsFiles(t *testing.T) {
	t.Parallel()
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := d.Drop(Envelope{To: []string{"b@example.org"}}, strings.NewReader("x\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	down := errors.New("queue down")
	calls := 0
	n, err := d.Pickup(t.Context(), SubmitFunc(func(context.Context, string, Envelope, io.Reader) error {
		calls++
		return down
	}))
	if n != 0 || !errors.Is(err, down) || calls != 1 {
		t.Fatalf("Pickup = %d, %v after %d calls; want 0, the submit error, one call (stop at the first failure)", n, err, calls)
	}
	if left := entries(t, filepath.Join(d.Path(), "new")); len(left) != 2 {
		t.Fatalf("files after a failed submit: %q, want both kept", left)
	}
	// The queue is back: the same files go, under the same keys.
	var keys []string
	n, err = d.Pickup(t.Context(), SubmitFunc(func(_ context.Context, key string, _ Envelope, body io.Reader) error {
		keys = append(keys, key)
		return nil
	}))
	if n != 2 || err != nil || !slices.IsSorted(keys) {
		t.Fatalf("retry Pickup = %d, %v, keys %q", n, err, keys)
	}
}

func TestUndecodableFileGoesToBad(t *testing.T) {
	t.Parallel()
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"0000000000000001.bad-json":  "{not json\nbody\r\n",
		"0000000000000002.no-rcpt":   `{"v":1,"from":"a@example.org","to":[]}` + "\nbody\r\n",
		"0000000000000003.version":   `{"v":9,"to":["b@example.org"]}` + "\nbody\r\n",
		"0000000000000004.injection": `{"v":1,"to":["b@example.org\r\nDATA"]}` + "\nbody\r\n",
		"0000000000000005.empty":     "",
	} {
		if err := os.WriteFile(filepath.Join(d.Path(), "new", name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	good, err := d.Drop(Envelope{To: []string{"b@example.org"}}, strings.NewReader("ok\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	var got []submitted
	n, err := d.Pickup(t.Context(), collect(&got))
	if n != 1 || len(got) != 1 || got[0].key != Key(good) {
		t.Fatalf("Pickup = %d (%v); want only the good file", n, got)
	}
	if !errors.Is(err, ErrBadFile) {
		t.Errorf("error %v does not wrap ErrBadFile", err)
	}
	if bad := entries(t, filepath.Join(d.Path(), "bad")); len(bad) != 5 {
		t.Errorf("bad/ holds %q, want the 5 undecodable files", bad)
	}
}

func TestDropRefusesNoRecipients(t *testing.T) {
	t.Parallel()
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Drop(Envelope{From: "a@example.org"}, strings.NewReader("x")); err == nil {
		t.Fatal("Drop without recipients succeeded")
	}
	if _, err := d.Drop(Envelope{To: []string{"b@example.org"}}, iotestErrReader{}); err == nil {
		t.Fatal("Drop with a failing body reader succeeded")
	}
	if left := append(entries(t, filepath.Join(d.Path(), "new")), entries(t, filepath.Join(d.Path(), "tmp"))...); len(left) != 0 {
		t.Errorf("failed drops left files: %q", left)
	}
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("read failed") }

// TestLargeEnvelopePickedUp: an envelope line longer than the reader's
// buffer (a list of some thousands of recipients) is submitted, not moved
// to bad/.
func TestLargeEnvelopePickedUp(t *testing.T) {
	t.Parallel()
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var to []string
	for i := range 5000 {
		to = append(to, fmt.Sprintf("recipient-%04d@example.org", i))
	}
	name, err := d.Drop(Envelope{From: "a@example.org", To: to}, strings.NewReader("body\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	var got []submitted
	n, err := d.Pickup(t.Context(), collect(&got))
	if err != nil || n != 1 {
		t.Fatalf("Pickup = %d, %v; want 1, nil", n, err)
	}
	if got[0].key != Key(name) || !slices.Equal(got[0].env.To, to) || got[0].body != "body\r\n" {
		t.Errorf("submitted %q with %d recipients and body %q", got[0].key, len(got[0].env.To), got[0].body)
	}
	if bad := entries(t, filepath.Join(d.Path(), "bad")); len(bad) != 0 {
		t.Errorf("bad/ holds %q", bad)
	}
}

// TestDropRefusesWhatPickupCannotRead: an envelope that Pickup would move
// to bad/ is refused by Drop with ErrBadEnvelope, and nothing is written.
func TestDropRefusesWhatPickupCannotRead(t *testing.T) {
	t.Parallel()
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	huge := []string{strings.Repeat("x", maxHeaderLine) + "@example.org"}
	for name, env := range map[string]Envelope{
		"no recipient":     {From: "a@example.org"},
		"CRLF in To":       {To: []string{"b@example.org\r\nDATA"}},
		"NUL in From":      {From: "a\x00@example.org", To: []string{"b@example.org"}},
		"LF in ENVID":      {To: []string{"b@example.org"}, EnvID: "id\n"},
		"bad RET":          {To: []string{"b@example.org"}, Ret: "ALL"},
		"bad NOTIFY":       {To: []string{"b@example.org"}, Notify: "SUCCESS,SOMETIMES"},
		"envelope > 1 MiB": {To: huge},
	} {
		if _, err := d.Drop(env, strings.NewReader("x\r\n")); !errors.Is(err, ErrBadEnvelope) {
			t.Errorf("%s: Drop = %v, want ErrBadEnvelope", name, err)
		}
	}
	for _, sub := range []string{"new", "tmp", "bad"} {
		if left := entries(t, filepath.Join(d.Path(), sub)); len(left) != 0 {
			t.Errorf("refused drops left files in %s/: %q", sub, left)
		}
	}
}
