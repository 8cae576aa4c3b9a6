package imapfailover

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// AppendResult says where a message was stored.
type AppendResult struct {
	Replica     string
	MessageID   string // without angle brackets
	UIDValidity uint32 // from APPENDUID (RFC 4315) or the search; 0 when unknown
	UID         imap.UID
	// Found: an earlier attempt whose connection broke had stored the
	// message, and it was found by Message-ID instead of appended again.
	Found    bool
	Attempts int
}

// Append stores msg in mailbox on a healthy replica. A message without a
// Message-ID header gets one (RFC 5322 §3.6.4) so that it can be
// recognised. When the connection breaks before the server's tagged OK,
// the APPEND may or may not have taken effect: the next attempt (on the
// next replica, or the same one reconnected) first searches for the
// Message-ID and appends only if it is not there. A replica that has not
// yet received the first copy through replication cannot see it, so with
// asynchronous replication a duplicate remains possible; it is never lost.
// A NO from the server (over quota, no such mailbox) is returned at once.
func (p *Pool) Append(ctx context.Context, mailbox string, msg []byte, opts *imap.AppendOptions) (*AppendResult, error) {
	id, msg, err := ensureMessageID(msg, p.opts.MessageIDDomain)
	if err != nil {
		return nil, err
	}
	res := &AppendResult{MessageID: id}
	uncertain := false
	var last error
	var moved failTracker
	for range len(p.replicas) + 1 {
		res.Attempts++
		err := p.do(ctx, Once, func(ctx context.Context, c *Conn) error {
			res.Replica = c.Replica()
			if uncertain {
				v, uid, err := c.searchMessageID(ctx, mailbox, id)
				if err != nil {
					return err
				}
				if uid != 0 {
					res.UIDValidity, res.UID, res.Found = v, uid, true
					return nil
				}
			}
			return c.Exec(ctx, "append", func(cl *imapclient.Client) error {
				cmd := cl.Append(mailbox, int64(len(msg)), opts)
				if _, err := cmd.Write(msg); err != nil {
					cmd.Close()
					cmd.Wait()
					return err
				}
				if err := cmd.Close(); err != nil {
					cmd.Wait()
					return err
				}
				data, err := cmd.Wait()
				if err != nil {
					return err
				}
				res.UIDValidity, res.UID = data.UIDValidity, data.UID
				return nil
			})
		}, &moved)
		if err == nil {
			return res, nil
		}
		if ctx.Err() != nil || !(errors.Is(err, ErrConnLost) || errors.Is(err, ErrTimeout)) {
			return nil, err
		}
		// The connection broke while the APPEND or the search ran.
		uncertain = true
		last = err
	}
	return nil, &Error{Op: "append", Err: fmt.Errorf("%w: %w", ErrNoReplica, last)}
}

// searchMessageID looks for a message by Message-ID in mailbox.
func (c *Conn) searchMessageID(ctx context.Context, mailbox, id string) (uint32, imap.UID, error) {
	sel, err := c.ensureSelected(ctx, mailbox, true)
	if err != nil {
		return 0, 0, err
	}
	var uid imap.UID
	err = c.Exec(ctx, "search", func(cl *imapclient.Client) error {
		data, err := cl.UIDSearch(&imap.SearchCriteria{
			Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: "<" + id + ">"}},
		}, nil).Wait()
		if err != nil {
			return err
		}
		if uids := data.AllUIDs(); len(uids) > 0 {
			uid = uids[0]
		}
		return nil
	})
	return sel.UIDValidity, uid, err
}

// MessageID returns the Message-ID of a message (without angle brackets)
// and whether the header is present. A header that is present but holds
// no usable identifier is an error wrapping ErrNoMessageID.
func MessageID(msg []byte) (string, bool, error) {
	head := msg
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		head = msg[:i+2]
	} else if i := bytes.Index(msg, []byte("\n\n")); i >= 0 {
		head = msg[:i+1]
	}
	lines := strings.Split(strings.ReplaceAll(string(head), "\r\n", "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		name, value, ok := strings.Cut(lines[i], ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(name), "Message-ID") || strings.ContainsAny(name, " \t") {
			continue
		}
		// Unfold continuation lines (RFC 5322 §2.2.3).
		for i+1 < len(lines) && lines[i+1] != "" && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			value += lines[i]
		}
		v := strings.TrimSpace(value)
		if strings.HasPrefix(v, "<") {
			end := strings.IndexByte(v, '>')
			if end < 0 {
				return "", true, fmt.Errorf("%w: %q", ErrNoMessageID, v)
			}
			v = v[1:end]
		}
		if v == "" || strings.ContainsAny(v, "<> \t\r\n\"") {
			return "", true, fmt.Errorf("%w: %q", ErrNoMessageID, value)
		}
		return v, true, nil
	}
	return "", false, nil
}

// ensureMessageID returns the message's Message-ID, adding a header with
// a new unique one when there is none.
func ensureMessageID(msg []byte, domain string) (string, []byte, error) {
	id, ok, err := MessageID(msg)
	if err != nil {
		return "", nil, err
	}
	if ok {
		return id, msg, nil
	}
	var b [16]byte
	rand.Read(b[:])
	id = hex.EncodeToString(b[:]) + "@" + domain
	eol := "\r\n"
	if !bytes.Contains(msg, []byte("\r\n")) && bytes.Contains(msg, []byte("\n")) {
		eol = "\n"
	}
	out := make([]byte, 0, len(msg)+len(id)+16)
	out = append(out, "Message-ID: <"+id+">"+eol...)
	out = append(out, msg...)
	return id, out, nil
}
