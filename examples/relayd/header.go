package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// maxHeaderScan bounds how much of a message is read to look for its Date
// and Message-ID fields; a longer header is passed on untouched.
const maxHeaderScan = 256 << 10

// headerCompleter adds the Date and Message-ID fields a submitted message
// lacks, as a message submission agent should (RFC 6409 §8.2, §8.3), at the
// end of the header. It reads the header on its first Read and then streams
// the rest; a message whose header it cannot find (no empty line within
// maxHeaderScan, a line that is not a field) is passed on unchanged.
type headerCompleter struct {
	br       *bufio.Reader
	hostname string
	id       string
	now      time.Time
	out      io.Reader
}

func newHeaderCompleter(r io.Reader, hostname, id string, now time.Time) *headerCompleter {
	return &headerCompleter{br: bufio.NewReaderSize(r, 64<<10), hostname: hostname, id: id, now: now}
}

func (h *headerCompleter) Read(p []byte) (int, error) {
	if h.out == nil {
		h.out = h.scan()
	}
	return h.out.Read(p)
}

func (h *headerCompleter) scan() io.Reader {
	var head bytes.Buffer
	hasDate, hasID := false, false
	for head.Len() < maxHeaderScan {
		line, err := h.br.ReadSlice('\n')
		head.Write(line)
		if errors.Is(err, bufio.ErrBufferFull) {
			break // a line longer than any field: not ours to change
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return bytes.NewReader(head.Bytes())
			}
			return io.MultiReader(bytes.NewReader(head.Bytes()), errReader{err})
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			// The empty line that ends the header (RFC 5322 §2.1).
			var added strings.Builder
			if !hasDate {
				fmt.Fprintf(&added, "Date: %s\r\n", h.now.Format(time.RFC1123Z))
			}
			if !hasID {
				fmt.Fprintf(&added, "Message-ID: <%s.%s@%s>\r\n", h.now.UTC().Format("20060102150405"), h.id, h.hostname)
			}
			b := head.Bytes()
			return io.MultiReader(bytes.NewReader(b[:len(b)-len(line)]), strings.NewReader(added.String()), bytes.NewReader(line), h.br)
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // folded continuation of the previous field
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
			break // not a header field: leave the message as it is
		}
		switch {
		case strings.EqualFold(string(name), "Date"):
			hasDate = true
		case strings.EqualFold(string(name), "Message-ID"):
			hasID = true
		}
	}
	return io.MultiReader(bytes.NewReader(head.Bytes()), h.br)
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
