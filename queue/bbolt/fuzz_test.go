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

func TestDecodeRecordRefuses(t *testing.T) {
	t.Parallel()
	env := queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: "bob@example.net"}}}
	good := newRecord("", &env, time.Unix(1700000000, 0), 10, false)
	if _, err := decodeRecord(encodeRecord(good)); err != nil {
		t.Fatalf("a good record: %v", err)
	}
	changed := func(fn func(r *record)) []byte {
		r := *good
		r.Rcpts = append([]rcpt(nil), good.Rcpts...)
		fn(&r)
		return encodeRecord(&r)
	}
	flipped := encodeRecord(good)
	flipped[len(flipped)-2] ^= 1
	for name, b := range map[string][]byte{
		"empty":                  nil,
		"not a record":           []byte("{\"from\":\"alice@example.org\"}"),
		"future version":         append([]byte{'Q', 'R', recordVersion + 1, 0}, encodeRecord(good)[4:]...),
		"bit flipped":            flipped,
		"no recipients":          changed(func(r *record) { r.Rcpts = nil }),
		"status out of range":    changed(func(r *record) { r.Rcpts[0].Status = 9 }),
		"line break in from":     changed(func(r *record) { r.From = "alice@example.org>\r\nRCPT TO:<eve@example.com" }),
		"line break in ORCPT":    changed(func(r *record) { r.Rcpts[0].ORcpt = "rfc822;bob\r\n" }),
		"NEVER with others":      changed(func(r *record) { r.Rcpts[0].Notify = uint8(queue.NotifyNever | queue.NotifyFailure) }),
		"UTF-8 without SMTPUTF8": changed(func(r *record) { r.Rcpts[0].Addr = "josé@example.net" }),
		"negative body size":     changed(func(r *record) { r.BodySize = -1 }),
		"no creation time":       changed(func(r *record) { r.Created = 0 }),
	} {
		if _, err := decodeRecord(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}
