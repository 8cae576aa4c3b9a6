// Package record is the stored form of a queue item in the jetstream
// store: one version of the item, with its body unless that lives in the
// object store. It is a package of its own so that its parser can be
// fuzzed without the NATS server in the test binary.
package record

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hamail/hamail/queue"
)

// Magic starts every stored item version. The version digit lets a
// later layout live beside this one.
const Magic = "hmq1"

// MaxLen bounds the JSON part of a stored version; an envelope with
// the most recipients SMTP allows fits many times over.
const MaxLen = 16 << 20

// Record is one version of an item as it travels in a message: the item's
// state, and the body unless it lives in the object store.
type Record struct {
	ID          string                 `json:"id"`
	Key         string                 `json:"key,omitempty"`
	KeySeq      uint64                 `json:"key_seq,omitempty"` // stream sequence of the key claim
	Envelope    queue.Envelope         `json:"envelope"`
	Recipients  []queue.RecipientState `json:"recipients"`
	Created     time.Time              `json:"created"`
	Attempts    int                    `json:"attempts,omitempty"`
	NextAttempt time.Time              `json:"next_attempt"`
	LastError   string                 `json:"last_error,omitempty"`
	BodySize    int64                  `json:"body_size"`
	BodyObject  bool                   `json:"body_object,omitempty"` // body in the object store under ID
}

var ErrBad = errors.New("undecodable item record")

// Encode lays out magic ‖ uvarint(len(json)) ‖ json ‖ body. body is
// empty when the body lives in the object store.
func Encode(r *Record, body []byte) ([]byte, error) {
	j, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(Magic)+binary.MaxVarintLen64+len(j)+len(body))
	out = append(out, Magic...)
	out = binary.AppendUvarint(out, uint64(len(j)))
	out = append(out, j...)
	return append(out, body...), nil
}

// Decode parses a stored version. The returned body aliases p.
func Decode(p []byte) (*Record, []byte, error) {
	if len(p) < len(Magic) || string(p[:len(Magic)]) != Magic {
		return nil, nil, fmt.Errorf("%w: bad magic", ErrBad)
	}
	p = p[len(Magic):]
	n, w := binary.Uvarint(p)
	if w <= 0 || n > MaxLen || n > uint64(len(p)-w) {
		return nil, nil, fmt.Errorf("%w: bad length", ErrBad)
	}
	p = p[w:]
	var r Record
	if err := json.Unmarshal(p[:n], &r); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBad, err)
	}
	body := p[n:]
	switch {
	case r.ID == "" || !ValidToken(r.ID):
		return nil, nil, fmt.Errorf("%w: bad ID %q", ErrBad, r.ID)
	case len(r.Recipients) != len(r.Envelope.Recipients) || len(r.Recipients) == 0:
		return nil, nil, fmt.Errorf("%w: %d recipient states for %d recipients", ErrBad, len(r.Recipients), len(r.Envelope.Recipients))
	case r.BodySize < 0:
		return nil, nil, fmt.Errorf("%w: negative body size", ErrBad)
	case !r.BodyObject && int64(len(body)) != r.BodySize:
		return nil, nil, fmt.Errorf("%w: body of %d octets, record says %d", ErrBad, len(body), r.BodySize)
	case r.BodyObject && len(body) != 0:
		return nil, nil, fmt.Errorf("%w: inline body beside an object body", ErrBad)
	}
	return &r, body, nil
}

// ValidToken reports whether s can be one token of a NATS subject.
func ValidToken(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '.' || c == '*' || c == '>' {
			return false
		}
	}
	return true
}

// Item turns a record into the queue's view of it.
func (r *Record) Item() *queue.Item {
	return &queue.Item{
		ID:          r.ID,
		Key:         r.Key,
		Envelope:    r.Envelope.Clone(),
		Recipients:  append([]queue.RecipientState(nil), r.Recipients...),
		Created:     r.Created,
		Attempts:    r.Attempts,
		NextAttempt: r.NextAttempt,
		LastError:   r.LastError,
		BodySize:    r.BodySize,
	}
}
