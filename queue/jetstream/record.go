package jetstream

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hamail/hamail/queue"
)

// recordMagic starts every stored item version. The version digit lets a
// later layout live beside this one.
const recordMagic = "hmq1"

// maxRecordLen bounds the JSON part of a stored version; an envelope with
// the most recipients SMTP allows fits many times over.
const maxRecordLen = 16 << 20

// record is one version of an item as it travels in a message: the item's
// state, and the body unless it lives in the object store.
type record struct {
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

var errBadRecord = errors.New("undecodable item record")

// encodeRecord lays out magic ‖ uvarint(len(json)) ‖ json ‖ body. body is
// empty when the body lives in the object store.
func encodeRecord(r *record, body []byte) ([]byte, error) {
	j, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(recordMagic)+binary.MaxVarintLen64+len(j)+len(body))
	out = append(out, recordMagic...)
	out = binary.AppendUvarint(out, uint64(len(j)))
	out = append(out, j...)
	return append(out, body...), nil
}

// decodeRecord parses a stored version. The returned body aliases p.
func decodeRecord(p []byte) (*record, []byte, error) {
	if len(p) < len(recordMagic) || string(p[:len(recordMagic)]) != recordMagic {
		return nil, nil, fmt.Errorf("%w: bad magic", errBadRecord)
	}
	p = p[len(recordMagic):]
	n, w := binary.Uvarint(p)
	if w <= 0 || n > maxRecordLen || n > uint64(len(p)-w) {
		return nil, nil, fmt.Errorf("%w: bad length", errBadRecord)
	}
	p = p[w:]
	var r record
	if err := json.Unmarshal(p[:n], &r); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errBadRecord, err)
	}
	body := p[n:]
	switch {
	case r.ID == "" || !validToken(r.ID):
		return nil, nil, fmt.Errorf("%w: bad ID %q", errBadRecord, r.ID)
	case len(r.Recipients) != len(r.Envelope.Recipients) || len(r.Recipients) == 0:
		return nil, nil, fmt.Errorf("%w: %d recipient states for %d recipients", errBadRecord, len(r.Recipients), len(r.Envelope.Recipients))
	case r.BodySize < 0:
		return nil, nil, fmt.Errorf("%w: negative body size", errBadRecord)
	case !r.BodyObject && int64(len(body)) != r.BodySize:
		return nil, nil, fmt.Errorf("%w: body of %d octets, record says %d", errBadRecord, len(body), r.BodySize)
	case r.BodyObject && len(body) != 0:
		return nil, nil, fmt.Errorf("%w: inline body beside an object body", errBadRecord)
	}
	return &r, body, nil
}

// validToken reports whether s can be one token of a NATS subject.
func validToken(s string) bool {
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

// item turns a record into the queue's view of it.
func (r *record) item() *queue.Item {
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
