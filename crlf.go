package hamail

import "io"

// crlfReader turns every line ending of a message into CRLF: a bare LF or a
// bare CR becomes CRLF, CRLF stays. SMTP carries lines ended by CRLF only
// (RFC 5321 §2.3.8), and servers that meet bare line endings reject the
// message or, worse, read the end of data where the sender meant none.
type crlfReader struct {
	r       io.Reader
	buf     []byte
	out     []byte
	pending []byte
	skipLF  bool // the previous byte was a CR, already written as CRLF
	err     error
}

func newCRLFReader(r io.Reader) *crlfReader {
	return &crlfReader{r: r, buf: make([]byte, 32*1024)}
}

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		n, err := c.r.Read(c.buf)
		c.pending = c.convert(c.buf[:n])
		c.err = err
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// convert returns b with its line endings rewritten, in c.out.
func (c *crlfReader) convert(b []byte) []byte {
	out := c.out[:0]
	for _, ch := range b {
		switch ch {
		case '\r':
			out = append(out, '\r', '\n')
			c.skipLF = true
		case '\n':
			if !c.skipLF {
				out = append(out, '\r', '\n')
			}
			c.skipLF = false
		default:
			out = append(out, ch)
			c.skipLF = false
		}
	}
	c.out = out
	return out
}
