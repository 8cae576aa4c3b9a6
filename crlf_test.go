package hamail

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestCRLFReader(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"":                       "",
		"no ending":              "no ending",
		"a\r\nb\r\n":             "a\r\nb\r\n",
		"a\nb\n":                 "a\r\nb\r\n",
		"a\rb\r":                 "a\r\nb\r\n",
		"a\r\r\nb":               "a\r\n\r\nb",
		"a\n\r\nb":               "a\r\n\r\nb",
		"\n\n":                   "\r\n\r\n",
		"x\r\n.\r\n":             "x\r\n.\r\n",
		"mixed\r\nlf\ncr\rend":   "mixed\r\nlf\r\ncr\r\nend",
		"ends with cr\r":         "ends with cr\r\n",
		"h: v\n\nbody\xc3\xa9\n": "h: v\r\n\r\nbody\xc3\xa9\r\n",
	}
	for in, want := range cases {
		// One byte at a time, so that a CR and its LF arrive in different
		// reads.
		for name, r := range map[string]io.Reader{"whole": strings.NewReader(in), "bytewise": iotest.OneByteReader(strings.NewReader(in))} {
			got, err := io.ReadAll(newCRLFReader(r))
			if err != nil || string(got) != want {
				t.Errorf("%s %q: got %q %v, want %q", name, in, got, err, want)
			}
		}
	}
}

func TestCRLFReaderError(t *testing.T) {
	t.Parallel()
	boom := iotest.ErrReader(io.ErrUnexpectedEOF)
	r := newCRLFReader(io.MultiReader(strings.NewReader("a\nb"), boom))
	got, err := io.ReadAll(r)
	if err != io.ErrUnexpectedEOF || string(got) != "a\r\nb" {
		t.Fatalf("%q %v", got, err)
	}
}

// FuzzCRLF: the output has CR only before LF and LF only after CR, and
// reads as the same lines as the input.
func FuzzCRLF(f *testing.F) {
	f.Add([]byte("a\r\nb\nc\rd"), uint8(1))
	f.Add([]byte("\r\r\n\n"), uint8(3))
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		var r io.Reader = bytes.NewReader(in)
		if chunk%2 == 1 {
			r = iotest.OneByteReader(r)
		}
		out, err := io.ReadAll(newCRLFReader(r))
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range out {
			if c == '\r' && (i+1 >= len(out) || out[i+1] != '\n') {
				t.Fatalf("bare CR at %d in %q", i, out)
			}
			if c == '\n' && (i == 0 || out[i-1] != '\r') {
				t.Fatalf("bare LF at %d in %q", i, out)
			}
		}
		lines := func(b []byte) string {
			s := strings.ReplaceAll(string(b), "\r\n", "\n")
			return strings.ReplaceAll(s, "\r", "\n")
		}
		if lines(out) != lines(in) {
			t.Fatalf("lines changed: %q -> %q", in, out)
		}
	})
}
