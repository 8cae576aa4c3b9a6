package maildrop

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzReadHeader: whatever a file in new/ holds, readHeader refuses it or
// returns an envelope that Drop accepts and that reads back the same, with
// the rest of the file left as the message.
func FuzzReadHeader(f *testing.F) {
	f.Add([]byte(`{"v":1,"from":"a@example.org","to":["b@example.org"]}` + "\nSubject: x\r\n\r\nbody\r\n"))
	f.Add([]byte(`{"v":1,"to":["b@example.org"],"notify":"SUCCESS,DELAY","ret":"HDRS","envid":"q1"}` + "\n"))
	f.Add([]byte(`{"v":1,"to":["b@example.org\r\nDATA"]}` + "\nx"))
	f.Add([]byte(`{"v":2,"to":["b@example.org"]}` + "\n"))
	f.Add([]byte("no newline"))
	f.Fuzz(func(t *testing.T, file []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(file), 16)
		env, err := readHeader(br)
		if err != nil {
			return
		}
		rest, err := io.ReadAll(br)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(file, rest) || !bytes.Contains(file[:len(file)-len(rest)], []byte("\n")) {
			t.Fatalf("message %q is not what follows the envelope line of %q", rest, file)
		}
		if err := env.check(); err != nil {
			t.Fatalf("accepted an envelope that check refuses: %v", err)
		}
		d, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		name, err := d.Drop(env, bytes.NewReader(rest))
		if err != nil {
			t.Fatalf("Drop refused an envelope Pickup accepts: %v", err)
		}
		written, err := os.ReadFile(filepath.Join(d.Path(), "new", name))
		if err != nil {
			t.Fatal(err)
		}
		br = bufio.NewReader(bytes.NewReader(written))
		again, err := readHeader(br)
		if err != nil || !reflect.DeepEqual(again, env) {
			t.Fatalf("read back %+v, %v; want %+v", again, err, env)
		}
		if body, _ := io.ReadAll(br); !bytes.Equal(body, rest) {
			t.Fatalf("body read back %q, want %q", body, rest)
		}
	})
}
