package smtpwire

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// FuzzReadReply: any input either fails cleanly or gives a reply with a
// sane code that survives being written back and read again.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"250 ok\r\n", "250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
		"451 4.3.0 later\r\n", "550-5.1.1 a\r\n550 5.1.1 b\r\n", "220\r\n", "199 x\r\n", "250-a\r\n251 b\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := replyReader{r: bufio.NewReaderSize(bytes.NewReader(data), 4096), maxLine: 512, maxLines: 16}
		rep, err := rr.readReply(nil)
		if err != nil {
			return
		}
		if rep.Code < 200 || rep.Code > 599 {
			t.Fatalf("code %d accepted", rep.Code)
		}
		lines := strings.Split(rep.Message, "\n")
		if len(lines) > 16 {
			t.Fatalf("%d lines accepted", len(lines))
		}
		var b strings.Builder
		for i, l := range lines {
			sep := "-"
			if i == len(lines)-1 {
				sep = " "
			}
			fmt.Fprintf(&b, "%d%s", rep.Code, sep)
			if rep.EnhancedCode != smtp.EnhancedCodeNotSet {
				ec := rep.EnhancedCode
				fmt.Fprintf(&b, "%d.%d.%d ", ec[0], ec[1], ec[2])
			}
			b.WriteString(l + "\r\n")
		}
		rr2 := replyReader{r: bufio.NewReaderSize(strings.NewReader(b.String()), 4096), maxLine: 1024, maxLines: 16}
		again, err := rr2.readReply(nil)
		if err != nil {
			t.Fatalf("re-encoded %q: %v", b.String(), err)
		}
		if *again != *rep {
			t.Fatalf("round trip: %+v became %+v", *rep, *again)
		}
	})
}

// normalise is the reference for what dotWriter must transmit (before
// stuffing): CRLF line endings everywhere, and a final line ending.
func normalise(in []byte) []byte {
	var out []byte
	for i := 0; i < len(in); i++ {
		switch in[i] {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(in) && in[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, in[i])
		}
	}
	if len(out) > 0 && !bytes.HasSuffix(out, []byte("\r\n")) {
		out = append(out, '\r', '\n')
	}
	return out
}

// unstuff is the receiving side (RFC 5321 §4.5.2): lines up to "." with
// one leading dot removed.
func unstuff(t *testing.T, data []byte) []byte {
	var out []byte
	for {
		i := bytes.Index(data, []byte("\r\n"))
		if i < 0 {
			t.Fatalf("no terminating dot line")
		}
		line := data[:i]
		data = data[i+2:]
		if string(line) == "." {
			if len(data) != 0 {
				t.Fatalf("%d bytes after the terminating dot", len(data))
			}
			return out
		}
		if len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		out = append(out, line...)
		out = append(out, '\r', '\n')
	}
}

// FuzzDotWriter: whatever the body and however it is split into writes,
// the wire form has only CRLF line endings, one terminating dot, and
// unstuffs to the normalised body.
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"", ".", "a\n.b\r\n..c", "\r\r\n\n.", "x\r", "line\r\n.\r\nafter", ".\n.\n"} {
		f.Add([]byte(s), uint16(1))
	}
	f.Fuzz(func(t *testing.T, body []byte, split uint16) {
		var wire bytes.Buffer
		dw := dotWriter{w: &wire}
		cut := 0
		if len(body) > 0 {
			cut = int(split) % (len(body) + 1)
		}
		if n, err := dw.Write(body[:cut]); err != nil || n != cut {
			t.Fatal(n, err)
		}
		if n, err := dw.Write(body[cut:]); err != nil || n != len(body)-cut {
			t.Fatal(n, err)
		}
		if err := dw.Close(); err != nil {
			t.Fatal(err)
		}
		w := wire.Bytes()
		if dw.n != int64(len(w)) {
			t.Fatalf("counted %d bytes, wrote %d", dw.n, len(w))
		}
		for i, c := range w {
			if c == '\r' && (i+1 >= len(w) || w[i+1] != '\n') {
				t.Fatalf("bare CR at %d in %q", i, w)
			}
			if c == '\n' && (i == 0 || w[i-1] != '\r') {
				t.Fatalf("bare LF at %d in %q", i, w)
			}
		}
		if got, want := unstuff(t, w), normalise(body); !bytes.Equal(got, want) {
			t.Fatalf("body %q: unstuffed %q, want %q", body, got, want)
		}
	})
}

// FuzzTransaction: whatever a server answers to a mail transaction (after a
// normal greeting and EHLO), Send ends, and what it reports never claims
// more than the server said: a recipient counts as accepted only with a
// 2xx RCPT reply, success needs 2xx to MAIL and after the final dot, and an
// unknown outcome only arises once the final dot was sent.
func FuzzTransaction(f *testing.F) {
	for _, s := range []string{
		"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n",
		"250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n250 queued\r\n",
		"250 ok\r\n550 no\r\n550 no\r\n354 go\r\n554 no valid recipients\r\n",
		"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
		"421 4.3.2 bye\r\n",
		"250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n451 4.3.0 later\r\n",
		"250-ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n",
		"550 5.7.1 refused\r\n503 bad sequence\r\n503 bad sequence\r\n503 bad sequence\r\n",
		"250 ok\r\n250 ok\r\n250 ok\r\n250 not 354\r\n250 ok\r\n",
	} {
		f.Add(true, []byte(s))
		f.Add(false, []byte(s))
	}
	f.Fuzz(func(t *testing.T, pipelining bool, script []byte) {
		client, srv := net.Pipe()
		ehlo := "250-mx.example.net\r\n250 SIZE\r\n"
		if pipelining {
			ehlo = "250-mx.example.net\r\n250-PIPELINING\r\n250 SIZE\r\n"
		}
		var wg sync.WaitGroup
		wg.Go(func() { io.Copy(io.Discard, srv) })
		wg.Go(func() {
			srv.Write([]byte("220 mx.example.net ESMTP\r\n" + ehlo))
			srv.Write(script)
			srv.Close()
		})
		defer func() {
			client.Close()
			srv.Close()
			wg.Wait()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		short := 2 * time.Second
		c, err := NewConn(ctx, client, &Options{Timeouts: Timeouts{Greeting: short, Hello: short, Mail: short,
			Rcpt: short, DataInit: short, DataBlock: short, DataEnd: short, Reset: short, Quit: short}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello(ctx); err != nil {
			t.Fatal(err)
		}
		res, err := c.Send(ctx, "s@example.org", nil, rcpts("a@example.net", "b@example.net"), strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
		if res == nil {
			if err == nil {
				t.Fatal("no result and no error")
			}
			return
		}
		accepted := 0
		for _, r := range res.Rcpt {
			if r.Err == nil && r.Reply != nil {
				if r.Reply.Code/100 != 2 {
					t.Fatalf("recipient accepted with %d", r.Reply.Code)
				}
				accepted++
			}
		}
		if accepted != res.Accepted() {
			t.Fatalf("Accepted() %d, counted %d", res.Accepted(), accepted)
		}
		if err == nil {
			if res.Mail == nil || res.Mail.Code/100 != 2 || accepted == 0 || res.Final == nil || res.Final.Code/100 != 2 {
				t.Fatalf("success without 2xx to MAIL, a recipient and the final dot: %+v", res)
			}
		}
		if errors.Is(err, ErrUnknownAfterDot) && (res.BodyBytes == 0 || res.Final != nil || accepted == 0) {
			t.Fatalf("unknown outcome before the final dot: %+v", res)
		}
	})
}
