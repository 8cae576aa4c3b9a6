package peers_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/hamail/hamail/internal/peers"
)

func testMessage(subject string) (id string, msg []byte) {
	id = fmt.Sprintf("<%d.%s@example.org>", time.Now().UnixNano(), subject)
	msg = []byte("From: alice@example.org\r\nTo: bob@example.com\r\nMessage-ID: " + id +
		"\r\nSubject: " + subject + "\r\n\r\nBody of " + subject + ".\r\n")
	return id, msg
}

// fetchAll returns UID -> full message of every message in the selected
// mailbox.
func fetchAll(t *testing.T, c *imapclient.Client) map[imap.UID][]byte {
	t.Helper()
	var all imap.UIDSet
	all.AddRange(1, 0) // 1:*
	msgs, err := c.Fetch(all, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil {
		t.Fatalf("UID FETCH 1:*: %v", err)
	}
	out := make(map[imap.UID][]byte)
	for _, m := range msgs {
		for _, b := range m.BodySection {
			out[m.UID] = b.Bytes
		}
	}
	return out
}

func selectInbox(t *testing.T, c *imapclient.Client) *imap.SelectData {
	t.Helper()
	sd, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	return sd
}

func TestDovecotLoginAppendSelect(t *testing.T) {
	t.Parallel()
	d := peers.StartDovecot(t, peers.DovecotOptions{})

	c, err := imapclient.DialInsecure(d.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(d.User, d.Password).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	for _, cap := range []imap.Cap{imap.CapUIDPlus, imap.CapCondStore, imap.CapIdle, imap.CapMove} {
		if !c.Caps().Has(cap) {
			t.Errorf("Dovecot does not offer %s", cap)
		}
	}

	_, msg := testMessage("append")
	cmd := c.Append("INBOX", int64(len(msg)), nil)
	cmd.Write(msg)
	cmd.Close()
	ad, err := cmd.Wait()
	if err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	sd := selectInbox(t, c)
	if sd.NumMessages != 1 || sd.UIDValidity != ad.UIDValidity || sd.UIDNext != ad.UID+1 {
		t.Fatalf("SELECT after APPEND: %d messages, UIDVALIDITY %d, UIDNEXT %d; APPENDUID %d %d",
			sd.NumMessages, sd.UIDValidity, sd.UIDNext, ad.UIDValidity, ad.UID)
	}
	if got := fetchAll(t, c)[ad.UID]; !bytes.Equal(got, msg) {
		t.Fatalf("fetched message differs:\n%q\nwant\n%q", got, msg)
	}
	c.Logout().Wait()

	// A restart keeps the address and the mail.
	addr := d.Addr
	d.Stop()
	if _, err := imapclient.DialInsecure(addr, nil); err == nil {
		t.Fatal("stopped Dovecot still accepts connections")
	}
	d.Start()
	uv, uid := d.Append("Archive", msg)
	if uid != 1 || uv == 0 {
		t.Fatalf("APPEND to a new mailbox: UIDVALIDITY %d UID %d", uv, uid)
	}
	c2 := d.Login()
	if sd2 := selectInbox(t, c2); sd2.NumMessages != 1 || sd2.UIDValidity != sd.UIDValidity {
		t.Fatalf("after restart: %d messages, UIDVALIDITY %d (was %d)", sd2.NumMessages, sd2.UIDValidity, sd.UIDValidity)
	}
	if out := d.Doveadm("mailbox", "status", "-u", d.User, "messages", "Archive"); !bytes.Contains([]byte(out), []byte("messages=1")) {
		t.Fatalf("doveadm mailbox status Archive: %q", out)
	}
}

func TestDovecotPairSyncKeepsUIDs(t *testing.T) {
	t.Parallel()
	p := peers.StartDovecotPair(t, peers.DovecotOptions{User: "bob"})
	if p.A.User != p.B.User || p.A.Password != p.B.Password || p.A.Addr == p.B.Addr {
		t.Fatalf("pair: A %s %s, B %s %s", p.A.User, p.A.Addr, p.B.User, p.B.Addr)
	}
	_, first := testMessage("first")
	_, second := testMessage("second")
	p.A.Append("INBOX", first)
	uv, uid := p.A.Append("INBOX", second)

	b := p.B.Login()
	if sd := selectInbox(t, b); sd.NumMessages != 0 {
		t.Fatalf("B has %d messages before Sync", sd.NumMessages)
	}
	b.Logout().Wait()

	p.Sync()
	b = p.B.Login()
	sd := selectInbox(t, b)
	if sd.UIDValidity != uv {
		t.Fatalf("B UIDVALIDITY %d, A %d", sd.UIDValidity, uv)
	}
	got := fetchAll(t, b)
	if len(got) != 2 || !bytes.Equal(got[uid], second) || !bytes.Equal(got[uid-1], first) {
		t.Fatalf("B after Sync: %d messages, UID %d = %q", len(got), uid, got[uid])
	}

	// Two-way: what only B has reaches A with the same UID.
	_, third := testMessage("third")
	uvB, uidB := p.B.Append("INBOX", third)
	p.Sync()
	a := p.A.Login()
	if sd := selectInbox(t, a); sd.UIDValidity != uvB || sd.NumMessages != 3 {
		t.Fatalf("A after second Sync: %d messages, UIDVALIDITY %d, want 3 and %d", sd.NumMessages, sd.UIDValidity, uvB)
	}
	if got := fetchAll(t, a)[uidB]; !bytes.Equal(got, third) {
		t.Fatalf("A UID %d = %q", uidB, got)
	}
}
