package smtptest

import "io"

// RepeatedBody returns a message body of size octets that repeats line,
// made as it is read: a body larger than the test wants to hold in memory,
// or than the loopback socket buffers hold, so that a writer blocks. For
// the body to end in a whole line, line ends in CRLF and size is a
// multiple of its length. RepeatedBody panics if line is empty.
func RepeatedBody(line string, size int64) io.Reader {
	if line == "" {
		panic("smtptest: RepeatedBody of an empty line")
	}
	return io.LimitReader(&repeatReader{s: line}, size)
}

// repeatReader repeats s forever.
type repeatReader struct {
	s   string
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.s[r.off:])
		n += k
		r.off = (r.off + k) % len(r.s)
	}
	return n, nil
}
