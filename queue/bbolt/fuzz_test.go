package bbolt

import (
	"reflect"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
)

// FuzzDecodeRecord checks that no stored value, however damaged, makes
// decoding panic, and that whatever decodes survives a round trip.
func FuzzDecodeRecord(f *testing.F) {
	env := queue.Envelope{
		From:       "alice@example.org",
		Recipients: []queue.Recipient{{Address: "bob@example.net", Notify: queue.NotifyFailure, ORcpt: "rfc822;bob@example.net"}, {Address: "carol@example.net"}},
		EnvID:      "E1", Ret: queue.RetHeaders, SMTPUTF8: true, Size: 99,
	}
	rec := newRecord("key", &env, time.Unix(1700000000, 0), 42, true)
	rec.Token, rec.Leased, rec.Attempts = 7, true, 3
	rec.Rcpts[1].Status, rec.Rcpts[1].Code, rec.Rcpts[1].Text = uint8(queue.StatusFailed), 550, "no such user"
	f.Add(encodeRecord(rec))
	f.Add(encodeRecord(newRecord("", &env, time.Unix(1, 0), 0, false)))
	f.Add([]byte("QR\x01\x00\x00\x00\x00\x00{}"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		again, err := decodeRecord(encodeRecord(r))
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !reflect.DeepEqual(r.item("x"), again.item("x")) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", r, again)
		}
	})
}
