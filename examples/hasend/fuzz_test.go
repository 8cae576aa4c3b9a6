package main

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/smtpclient"
)

// FuzzPrepare feeds arbitrary standard input through reading, header
// splitting, recipient extraction and header completion.
func FuzzPrepare(f *testing.F) {
	f.Add([]byte("To: a@example.org\nBcc: b@example.org\n\nbody\n"), true)
	f.Add([]byte("To: root\nSubject: cron\n\n.\n"), true)
	f.Add([]byte("no header at all\n"), false)
	f.Fuzz(func(t *testing.T, input []byte, extract bool) {
		data, err := readMessage(bytes.NewReader(input), true, 1<<20)
		if err != nil {
			return
		}
		p, err := prepare(data, prepareOptions{
			extract: extract, args: []string{"arg@example.org"}, user: "u", domain: "example.org", now: time.Unix(0, 0),
		})
		if err != nil {
			var ae *addressError
			if !errors.As(err, &ae) {
				t.Fatalf("error of an unexpected type %T: %v", err, err)
			}
			return
		}
		if len(p.rcpts) == 0 || p.rcpts[0] != "arg@example.org" {
			t.Fatalf("argument recipient lost: %q", p.rcpts)
		}
		for _, r := range p.rcpts {
			if _, err := smtpclient.ParseAddress(r); err != nil {
				t.Fatalf("recipient %q would be refused by smtpclient: %v", r, err)
			}
		}
		m := splitMessage(p.data)
		for _, name := range []string{"Bcc", "Resent-Bcc"} {
			if m.has(name) {
				t.Fatalf("%s field left in the message:\n%q", name, p.data)
			}
		}
		for _, name := range []string{"From", "Date", "Message-ID"} {
			if !m.has(name) {
				t.Fatalf("%s field missing:\n%q", name, p.data)
			}
		}
		if again := splitMessage(p.data).bytes(); !bytes.Equal(again, p.data) {
			t.Fatalf("the prepared message does not split and join back to itself:\n%q\n%q", p.data, again)
		}
	})
}

// FuzzAddressList checks that whatever net/mail accepts comes out as an
// envelope address that smtpclient accepts, with no line break in it.
func FuzzAddressList(f *testing.F) {
	f.Add("Ops <ops@example.org>, \"a b\"@example.org")
	f.Add("undisclosed-recipients:;")
	f.Add("root, daemon")
	f.Fuzz(func(t *testing.T, list string) {
		addrs, err := parseAddressList("To header", list, "example.org")
		if err != nil {
			return
		}
		for _, a := range addrs {
			if strings.ContainsAny(a, "\r\n\x00") {
				t.Fatalf("address %q holds a line break or NUL", a)
			}
			if _, err := smtpclient.ParseAddress(a); err != nil {
				t.Fatalf("address %q from %q refused by smtpclient: %v", a, list, err)
			}
		}
	})
}

// FuzzParseArgs: any command line (arguments separated by NUL) parses or
// fails with a usage error; the values it takes come from the arguments.
func FuzzParseArgs(f *testing.F) {
	f.Add("-FCronDaemon\x00-i\x00-odi\x00-oem\x00-oi\x00-t\x00-f\x00root")
	f.Add("--relay=a:1\x00-tif\x00me@example.org\x00--\x00-x@example.org")
	f.Add("-N\x00success,delay\x00-R\x00hdrs\x00-V\x00id\x00-bm\x00a@b")
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\x00")
		inv, err := parseArgs(args)
		if err != nil {
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		for _, r := range inv.rcpts {
			if !slices.Contains(args, r) {
				t.Fatalf("recipient %q is not one of the arguments", r)
			}
		}
		for _, kv := range inv.longs {
			st, ok := lookupSetting(kv.key)
			if !ok || st.secret {
				t.Fatalf("long option %q accepted", kv.key)
			}
		}
	})
}

// FuzzConfigFile: any config file applies or fails with an error naming
// the file; it never panics.
func FuzzConfigFile(f *testing.F) {
	f.Add("relay = a:587, b:587\nuser u\n# c\ntls=verify\ntimeout = 30s\n")
	f.Add("relay=x\nrelay=y\nnameserver=1.1.1.1\nmx=true\nmx_port=25\nmax_size=10\n")
	f.Add("unknown-key = 1\n")
	f.Fuzz(func(t *testing.T, content string) {
		s := &settings{}
		if err := readConfigFile(s, "hasend.conf", strings.NewReader(content)); err != nil {
			if !strings.HasPrefix(err.Error(), "hasend.conf") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if s.timeout < 0 || s.maxSize < 0 || s.mxPort < 0 || s.mxPort > 65535 {
			t.Fatalf("accepted out-of-range values: %+v", s)
		}
		switch s.tls {
		case "", "verify", "encrypt", "may", "none", "implicit":
		default:
			t.Fatalf("accepted tls %q", s.tls)
		}
	})
}
