package maildrop

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hamail/hamail"
	"github.com/hamail/hamail/smtpclient"
)

// TestInvalidMessageSetAside: a file whose message the Mailer refuses as
// invalid goes to bad/, and the files after it are still queued instead of
// waiting behind it forever.
func TestInvalidMessageSetAside(t *testing.T) {
	t.Parallel()
	// Nothing listens on the relay: what is queued stays queued.
	m, err := hamail.Open(&hamail.Options{
		Relays: []smtpclient.Relay{{Name: "relay", Addr: "127.0.0.1:1"}},
		Dir:    t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bad, err := d.Drop(Envelope{From: "a@example.org", To: []string{"not an address"}}, strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	good, err := d.Drop(Envelope{From: "a@example.org", To: []string{"b@example.org"}}, strings.NewReader("y\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := d.Pickup(t.Context(), MailerSubmitter(m))
	if n != 1 {
		t.Errorf("Pickup submitted %d, want the good file", n)
	}
	if !errors.Is(err, ErrBadFile) || !errors.Is(err, ErrRejected) || !errors.Is(err, hamail.ErrInvalidMessage) {
		t.Errorf("Pickup error %v, want ErrBadFile, ErrRejected and hamail.ErrInvalidMessage", err)
	}
	if got := entries(t, filepath.Join(d.Path(), "bad")); len(got) != 1 || got[0] != bad {
		t.Errorf("bad/ holds %q, want %q", got, bad)
	}
	if got := entries(t, filepath.Join(d.Path(), "new")); len(got) != 0 {
		t.Errorf("new/ still holds %q", got)
	}
	items, err := m.Store().List(context.Background(), "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].Key != Key(good) {
		t.Errorf("queue holds %+v, want only %s", items, Key(good))
	}
}
