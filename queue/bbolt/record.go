package bbolt

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/hamail/hamail/queue"
)

// A stored record is a 4-octet header — 'Q', 'R', format version, 0 — a
// CRC-32C of the payload (4 octets, big-endian), and the payload: JSON, so
// that a person with bbolt's CLI can read a stuck message. bbolt keeps no
// checksum of values; the CRC makes a torn or bit-flipped record an error
// instead of a wrong delivery.
const (
	recordVersion = 1
	headerLen     = 8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type record struct {
	Key       string `json:"key,omitempty"`
	From      string `json:"from"`
	Rcpts     []rcpt `json:"rcpts"`
	EnvID     string `json:"envid,omitempty"`
	Ret       uint8  `json:"ret,omitempty"`
	UTF8      bool   `json:"smtputf8,omitempty"`
	Size      int64  `json:"size,omitempty"`
	Created   int64  `json:"created"` // Unix nanoseconds
	Attempts  int    `json:"attempts,omitempty"`
	Next      int64  `json:"next"` // Unix nanoseconds; also the sched key
	LastError string `json:"lastError,omitempty"`
	BodySize  int64  `json:"bodySize"`
	Spool     bool   `json:"spool,omitempty"` // body in the spool file named by the ID
	Token     uint64 `json:"token,omitempty"`
	Leased    bool   `json:"leased,omitempty"` // leased and not recorded since
}

type rcpt struct {
	Addr   string `json:"addr"`
	Notify uint8  `json:"notify,omitempty"`
	ORcpt  string `json:"orcpt,omitempty"`
	Status uint8  `json:"status,omitempty"`
	Code   int    `json:"code,omitempty"`
	Enh    string `json:"enh,omitempty"`
	Text   string `json:"text,omitempty"`
	Host   string `json:"host,omitempty"`
	Last   int64  `json:"last,omitempty"`
	Dup    bool   `json:"dup,omitempty"`
	Rep    bool   `json:"reported,omitempty"`
	DRep   bool   `json:"delayReported,omitempty"`
}

func encodeRecord(r *record) []byte {
	payload, err := json.Marshal(r)
	if err != nil {
		// Only strings, numbers and bools: Marshal cannot fail.
		panic(err)
	}
	b := make([]byte, headerLen+len(payload))
	b[0], b[1], b[2] = 'Q', 'R', recordVersion
	binary.BigEndian.PutUint32(b[4:8], crc32.Checksum(payload, castagnoli))
	copy(b[headerLen:], payload)
	return b
}

func decodeRecord(b []byte) (*record, error) {
	if len(b) < headerLen || b[0] != 'Q' || b[1] != 'R' {
		return nil, fmt.Errorf("not a queue record")
	}
	if b[2] != recordVersion {
		return nil, fmt.Errorf("record format version %d, want %d", b[2], recordVersion)
	}
	payload := b[headerLen:]
	if got, want := crc32.Checksum(payload, castagnoli), binary.BigEndian.Uint32(b[4:8]); got != want {
		return nil, fmt.Errorf("checksum %08x, want %08x", got, want)
	}
	r := new(record)
	if err := json.Unmarshal(payload, r); err != nil {
		return nil, fmt.Errorf("payload: %v", err)
	}
	if len(r.Rcpts) == 0 {
		return nil, fmt.Errorf("no recipients")
	}
	for i, rc := range r.Rcpts {
		if rc.Addr == "" || rc.Status > uint8(queue.StatusFailed) {
			return nil, fmt.Errorf("recipient %d malformed", i)
		}
	}
	if r.Ret > uint8(queue.RetHeaders) || r.Created <= 0 || r.Next <= 0 || r.BodySize < 0 || r.Attempts < 0 {
		return nil, fmt.Errorf("field out of range")
	}
	// What Enqueue would refuse must not reach an SMTP command line from
	// a damaged record either.
	env := queue.Envelope{From: r.From, EnvID: r.EnvID, Ret: queue.Ret(r.Ret), SMTPUTF8: r.UTF8, Size: r.Size,
		Recipients: make([]queue.Recipient, len(r.Rcpts))}
	for i, rc := range r.Rcpts {
		env.Recipients[i] = queue.Recipient{Address: rc.Addr, Notify: queue.Notify(rc.Notify), ORcpt: rc.ORcpt}
	}
	if err := env.Validate(); err != nil {
		return nil, fmt.Errorf("envelope: %v", err)
	}
	return r, nil
}

func newRecord(key string, env *queue.Envelope, now time.Time, bodySize int64, spool bool) *record {
	r := &record{
		Key: key, From: env.From, EnvID: env.EnvID, Ret: uint8(env.Ret), UTF8: env.SMTPUTF8, Size: env.Size,
		Created: now.UnixNano(), Next: now.UnixNano(), BodySize: bodySize, Spool: spool,
	}
	r.Rcpts = make([]rcpt, len(env.Recipients))
	for i, rc := range env.Recipients {
		r.Rcpts[i] = rcpt{Addr: rc.Address, Notify: uint8(rc.Notify), ORcpt: rc.ORcpt}
	}
	return r
}

func unixTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// item converts a record to the queue's view of it.
func (r *record) item(id string) *queue.Item {
	it := &queue.Item{
		ID:  id,
		Key: r.Key,
		Envelope: queue.Envelope{
			From: r.From, EnvID: r.EnvID, Ret: queue.Ret(r.Ret), SMTPUTF8: r.UTF8, Size: r.Size,
			Recipients: make([]queue.Recipient, len(r.Rcpts)),
		},
		Recipients:  make([]queue.RecipientState, len(r.Rcpts)),
		Created:     unixTime(r.Created),
		Attempts:    r.Attempts,
		NextAttempt: unixTime(r.Next),
		LastError:   r.LastError,
		BodySize:    r.BodySize,
	}
	if r.Token != 0 {
		it.Lease = queue.Lease{ID: id, Token: r.Token}
		if r.Leased {
			it.Lease.Until = it.NextAttempt
		}
	}
	for i, rc := range r.Rcpts {
		rec := queue.Recipient{Address: rc.Addr, Notify: queue.Notify(rc.Notify), ORcpt: rc.ORcpt}
		it.Envelope.Recipients[i] = rec
		it.Recipients[i] = queue.RecipientState{
			Recipient:         rec,
			Status:            queue.Status(rc.Status),
			Reply:             queue.Reply{Code: rc.Code, Enhanced: rc.Enh, Text: rc.Text},
			Host:              rc.Host,
			LastAttempt:       unixTime(rc.Last),
			PossibleDuplicate: rc.Dup,
			Reported:          rc.Rep,
			DelayReported:     rc.DRep,
		}
	}
	return it
}

// apply writes an update's recipient states into the record. The
// recipients' envelope fields are not taken from the update: they never
// change after Enqueue.
func (r *record) apply(u *queue.Update) {
	for i := range r.Rcpts {
		s := &u.Recipients[i]
		rc := &r.Rcpts[i]
		rc.Status = uint8(s.Status)
		rc.Code, rc.Enh, rc.Text = s.Reply.Code, s.Reply.Enhanced, s.Reply.Text
		rc.Host = s.Host
		rc.Last = unixNano(s.LastAttempt)
		rc.Dup = s.PossibleDuplicate
		rc.Rep = s.Reported
		rc.DRep = s.DelayReported
	}
	r.Attempts = u.Attempts
	r.LastError = u.LastError
}
