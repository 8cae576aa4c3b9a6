package imapfailover

import (
	"context"
	"fmt"
	"io"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// FetchItems chooses what FetchMessages returns.
type FetchItems struct {
	Envelope     bool
	Flags        bool
	Size         bool // RFC822.SIZE
	InternalDate bool
	// Sections are body sections, fetched with PEEK so \Seen is not set.
	Sections []*imap.FetchItemBodySection
}

func (it *FetchItems) options() *imap.FetchOptions {
	o := &imap.FetchOptions{UID: true}
	if it == nil {
		return o
	}
	o.Envelope, o.Flags, o.RFC822Size, o.InternalDate = it.Envelope, it.Flags, it.Size, it.InternalDate
	for _, s := range it.Sections {
		c := *s
		c.Peek = true
		o.BodySection = append(o.BodySection, &c)
	}
	return o
}

// FetchMessages fetches the chosen items of the messages with the given
// UIDs in mailbox. uidValidity must be the UIDVALIDITY the UIDs belong to;
// when the mailbox has another one, the error wraps ErrUIDValidity.
// Reading is repeated on another replica when a connection breaks.
func (p *Pool) FetchMessages(ctx context.Context, mailbox string, uidValidity uint32, uids imap.UIDSet, items *FetchItems) ([]*imapclient.FetchMessageBuffer, error) {
	var out []*imapclient.FetchMessageBuffer
	err := p.Do(ctx, Repeatable, func(ctx context.Context, c *Conn) error {
		var err error
		out, err = c.FetchMessages(ctx, mailbox, uidValidity, uids, items)
		return err
	})
	return out, err
}

// FetchMessages is Pool.FetchMessages on this connection.
func (c *Conn) FetchMessages(ctx context.Context, mailbox string, uidValidity uint32, uids imap.UIDSet, items *FetchItems) ([]*imapclient.FetchMessageBuffer, error) {
	if _, err := c.selectChecked(ctx, mailbox, uidValidity); err != nil {
		return nil, err
	}
	var out []*imapclient.FetchMessageBuffer
	err := c.Exec(ctx, "fetch", func(cl *imapclient.Client) error {
		var err error
		out, err = cl.Fetch(uids, items.options()).Collect()
		return err
	})
	return out, err
}

func (c *Conn) selectChecked(ctx context.Context, mailbox string, uidValidity uint32) (*imap.SelectData, error) {
	sel, err := c.ensureSelected(ctx, mailbox, true)
	if err != nil {
		return nil, err
	}
	if uidValidity != 0 && sel.UIDValidity != uidValidity {
		return nil, &Error{Replica: c.Replica(), Op: "select", Err: fmt.Errorf("%w: %d, not %d", ErrUIDValidity, sel.UIDValidity, uidValidity)}
	}
	return sel, nil
}

// WriteBody streams one body section of a message to w without holding it
// in memory (section nil means the whole message) and returns the bytes
// written. The command timeout applies between bytes received, so a long
// body is fine while it flows. It is not repeated on another replica once
// bytes may have reached w.
func (p *Pool) WriteBody(ctx context.Context, w io.Writer, mailbox string, uidValidity uint32, uid imap.UID, section *imap.FetchItemBodySection) (int64, error) {
	var n int64
	err := p.Do(ctx, Once, func(ctx context.Context, c *Conn) error {
		var err error
		n, err = c.WriteBody(ctx, w, mailbox, uidValidity, uid, section)
		return err
	})
	return n, err
}

// ErrNoMessage reports that a UID does not name a message (any more).
var ErrNoMessage = fmt.Errorf("imapfailover: no such message")

// WriteBody is Pool.WriteBody on this connection.
func (c *Conn) WriteBody(ctx context.Context, w io.Writer, mailbox string, uidValidity uint32, uid imap.UID, section *imap.FetchItemBodySection) (int64, error) {
	if _, err := c.selectChecked(ctx, mailbox, uidValidity); err != nil {
		return 0, err
	}
	if section == nil {
		section = &imap.FetchItemBodySection{}
	}
	s := *section
	s.Peek = true
	var n int64
	found := false
	var werr error
	err := c.Exec(ctx, "fetch body", func(cl *imapclient.Client) error {
		cmd := cl.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{&s}})
		defer cmd.Close()
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			for item := msg.Next(); item != nil; item = msg.Next() {
				body, ok := item.(imapclient.FetchItemDataBodySection)
				if !ok || body.Literal == nil || found {
					continue
				}
				found = true
				n, werr = io.Copy(w, body.Literal)
				if werr != nil {
					// Drain the rest so the connection stays usable.
					io.Copy(io.Discard, body.Literal)
				}
			}
		}
		return cmd.Close()
	})
	if err != nil {
		return n, err
	}
	if werr != nil {
		return n, &Error{Replica: c.Replica(), Op: "write body", Err: werr}
	}
	if !found {
		return 0, &Error{Replica: c.Replica(), Op: "fetch body", Err: fmt.Errorf("%w: UID %d", ErrNoMessage, uid)}
	}
	return n, nil
}
