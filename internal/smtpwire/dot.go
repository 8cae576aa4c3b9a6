package smtpwire

import (
	"bytes"
	"io"
)

// dotWriter turns a message into DATA content while streaming it:
//
//   - line endings are normalised to CRLF: a bare LF or a bare CR becomes
//     CRLF, since RFC 5321 §2.3.8 forbids sending them alone;
//   - a line starting with "." gets another "." (transparency, RFC 5321
//     §4.5.2);
//   - Close ends an unterminated last line with CRLF and writes the
//     terminating ".\r\n".
//
// It holds no more than the current byte of state.
type dotWriter struct {
	w     io.Writer
	state int
	n     int64 // bytes written to w
}

const (
	dotBOL = iota // at the beginning of a line
	dotMid        // inside a line
	dotCR         // just wrote CRLF for a CR; an LF next belongs to it
)

var crlf = []byte("\r\n")

func (d *dotWriter) write(p []byte) error {
	n, err := d.w.Write(p)
	d.n += int64(n)
	return err
}

func (d *dotWriter) Write(p []byte) (int, error) {
	i := 0
	for i < len(p) {
		c := p[i]
		switch d.state {
		case dotCR:
			d.state = dotBOL
			if c == '\n' {
				i++
				continue
			}
			continue // reprocess c at the beginning of a line
		case dotBOL:
			if c == '.' {
				if err := d.write([]byte("..")); err != nil {
					return i, err
				}
				i++
				d.state = dotMid
				continue
			}
			d.state = dotMid
			continue
		}
		// Inside a line: copy up to the next line ending at once.
		j := bytes.IndexAny(p[i:], "\r\n")
		if j < 0 {
			if err := d.write(p[i:]); err != nil {
				return i, err
			}
			return len(p), nil
		}
		if j > 0 {
			if err := d.write(p[i : i+j]); err != nil {
				return i, err
			}
			i += j
		}
		if err := d.write(crlf); err != nil {
			return i, err
		}
		if p[i] == '\r' {
			d.state = dotCR
		} else {
			d.state = dotBOL
		}
		i++
	}
	return len(p), nil
}

// Close writes the end of the data. It does not close w.
func (d *dotWriter) Close() error {
	if d.state == dotMid {
		if err := d.write(crlf); err != nil {
			return err
		}
	}
	return d.write([]byte(".\r\n"))
}
