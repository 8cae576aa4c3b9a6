package jetstream

import stored "github.com/hamail/hamail/queue/jetstream/internal/record"

// The stored form of an item lives in internal/record, where its parser is
// fuzzed in a small test binary.
type record = stored.Record

var errBadRecord = stored.ErrBad

func encodeRecord(r *record, body []byte) ([]byte, error) { return stored.Encode(r, body) }

func decodeRecord(p []byte) (*record, []byte, error) { return stored.Decode(p) }

func validToken(s string) bool { return stored.ValidToken(s) }
