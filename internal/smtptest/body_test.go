package smtptest

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestRepeatedBody(t *testing.T) {
	t.Parallel()
	line := "0123456789abcdef\r\n"
	for _, size := range []int64{0, 1, int64(len(line)) - 1, int64(len(line)), 7 * int64(len(line)), 1000} {
		want := strings.Repeat(line, int(size)/len(line)+1)[:size]
		// Reads of one octet cross every line boundary; io.ReadAll reads
		// in large chunks.
		for name, r := range map[string]io.Reader{
			"one octet": iotest.OneByteReader(RepeatedBody(line, size)),
			"ReadAll":   RepeatedBody(line, size),
		} {
			got, err := io.ReadAll(r)
			if err != nil || string(got) != want {
				t.Errorf("size %d, %s: %d octets %q, err %v; want %d octets", size, name, len(got), trim(got), err, size)
			}
		}
	}
	if err := iotest.TestReader(RepeatedBody(line, 300), []byte(strings.Repeat(line, 17)[:300])); err != nil {
		t.Error(err)
	}
}

func trim(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}
