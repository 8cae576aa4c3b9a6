package record

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
)

func sampleRecord() *Record {
	env := queue.Envelope{From: "alice@example.org", Recipients: []queue.Recipient{{Address: "bob@example.net"}, {Address: "carol@example.net"}}}
	return &Record{
		ID:          "33lacjhtpj0b83g8i9ek",
		Key:         "order-17",
		KeySeq:      42,
		Envelope:    env,
		Recipients:  queue.NewItemState(&env),
		Created:     time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		Attempts:    2,
		NextAttempt: time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC),
		LastError:   "451 4.3.0 try later",
		BodySize:    5,
	}
}

func TestRecordRoundTrip(t *testing.T) {
	t.Parallel()
	r := sampleRecord()
	p, err := Encode(r, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	got, body, err := Decode(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != "hello" || got.ID != r.ID || got.KeySeq != 42 || got.Attempts != 2 || !got.NextAttempt.Equal(r.NextAttempt) || len(got.Recipients) != 2 {
		t.Errorf("round trip: %+v, body %q", got, body)
	}
}

// Every way a stored version can be damaged is a typed error, never a
// panic or a record the store would act on.
func TestDecodeRecordRejects(t *testing.T) {
	t.Parallel()
	good, err := Encode(sampleRecord(), []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	noRcpt := sampleRecord()
	noRcpt.Recipients = noRcpt.Recipients[:1]
	badID := sampleRecord()
	badID.ID = "a.b"
	object := sampleRecord()
	object.BodyObject = true
	for name, p := range map[string][]byte{
		"empty":                nil,
		"magic":                append([]byte("hmq2"), good[4:]...),
		"length beyond data":   append([]byte("hmq1\xff\xff\x03"), good[7:]...),
		"truncated body":       good[:len(good)-1],
		"longer body":          append(bytes.Clone(good), 'x'),
		"json":                 []byte("hmq1\x05{oops"),
		"recipients":           must(Encode(noRcpt, []byte("hello"))),
		"id":                   must(Encode(badID, []byte("hello"))),
		"inline beside object": must(Encode(object, []byte("hello"))),
	} {
		if _, _, err := Decode(p); !errors.Is(err, ErrBad) {
			t.Errorf("%s: %v, want ErrBad", name, err)
		}
	}
}

func must(p []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return p
}

// FuzzDecode: decoding never panics, and what decodes encodes back
// to a version that decodes to the same record and body.
func FuzzDecode(f *testing.F) {
	f.Add(must(Encode(sampleRecord(), []byte("hello"))))
	f.Fuzz(func(t *testing.T, p []byte) {
		r, body, err := Decode(p)
		if err != nil {
			if !errors.Is(err, ErrBad) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		again, err := Encode(r, body)
		if err != nil {
			t.Fatalf("re-encoding a decoded record: %v", err)
		}
		r2, body2, err := Decode(again)
		if err != nil {
			t.Fatalf("decoding a re-encoded record: %v", err)
		}
		third, _ := Encode(r2, body2)
		if !bytes.Equal(again, third) {
			t.Fatalf("encoding not stable:\n%q\n%q", again, third)
		}
	})
}
