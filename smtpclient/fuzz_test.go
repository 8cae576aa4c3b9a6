package smtpclient

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// FuzzClassify feeds the classification table any reply code, enhanced
// code and stage, and checks the rules that protect recipients: a failure
// is never "delivered", only the final dot can make an outcome unknown,
// only a 5xx reply makes it permanent, and a 421 is always the host's.
func FuzzClassify(f *testing.F) {
	f.Add(uint8(StageRcpt), 550, 5, 1, 1, true)
	f.Add(uint8(StageDataEnd), 0, 0, 0, 0, false)
	f.Add(uint8(StageMail), 451, 4, 3, 0, true)
	f.Add(uint8(StageRcpt), 552, 5, 5, 3, true)
	f.Add(uint8(StageGreeting), 421, 4, 4, 2, true)
	f.Fuzz(func(t *testing.T, st uint8, code, e1, e2, e3 int, isReply bool) {
		stage := Stage(st % uint8(StagePolicy))
		if stage == StageResolve || stage == StageNone {
			stage = StageMail
		}
		var err error = io.EOF
		if isReply {
			err = &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{e1, e2, e3}, Message: "x"}
		}
		v := classify(stage, err)
		if v.outcome == Delivered {
			t.Fatalf("%v %v: failure classified as delivered", stage, err)
		}
		if v.outcome == Unknown && (stage != StageDataEnd || isReply) {
			t.Fatalf("%v %v: unknown outside the wait for the final reply", stage, err)
		}
		if v.outcome == Permanent && (!isReply || code/100 != 5) {
			t.Fatalf("%v %v: permanent without a 5xx reply", stage, err)
		}
		if isReply && code == 421 && (v.outcome != Temporary || !v.site || !v.next) {
			t.Fatalf("%v: 421 gives %+v", stage, v)
		}
		if v.outcome == Temporary && !v.next {
			t.Fatalf("%v %v: temporary but not offered to the next host", stage, err)
		}
		if isReply && code/100 == 4 && code != 421 && v.site {
			if stage >= StageMail && stage <= StageDataEnd && (code != 451 || e1 != 4 || e2 != 3) {
				t.Fatalf("%v %d %d.%d.%d: counted against the host", stage, code, e1, e2, e3)
			}
		}
	})
}

// FuzzValidate checks that a message validate accepts can only produce
// safe SMTP command lines.
func FuzzValidate(f *testing.F) {
	f.Add("alice@example.org", "bob@example.com", "carol@example.net", "env-1", "bob@example.com")
	f.Add("", "josé@example.com", "x@[192.0.2.1]", "", "")
	f.Add("a@b", "c@d\r\nRSET", "e@f", "x y", "\x00")
	f.Fuzz(func(t *testing.T, from, to1, to2, envid, orcpt string) {
		body := strings.NewReader("x")
		m := &Message{From: from, To: []Recipient{{Addr: to1, OriginalRecipient: orcpt}, {Addr: to2}}, Body: body, Size: 1, EnvelopeID: envid}
		env, err := validate(m)
		if err != nil {
			// Refusals are clear and come before any I/O; an address
			// refusal is typed.
			if !strings.HasPrefix(err.Error(), "smtpclient: ") {
				t.Fatalf("unclear error %q", err)
			}
			if _, perr := ParseAddress(to1); perr != nil && from == "" && envid == "" && orcpt == "" {
				var ae *AddressError
				if !errors.As(err, &ae) {
					t.Fatalf("bad recipient %q refused without *AddressError: %v", to1, err)
				}
			}
			return
		}
		for _, s := range []string{from, to1, to2, envid, orcpt} {
			if strings.ContainsAny(s, "\r\n\x00") {
				t.Fatalf("accepted %q", s)
			}
		}
		for i := 0; i < len(envid); i++ {
			if c := envid[i]; c < 0x21 || c > 0x7e {
				t.Fatalf("accepted ENVID %q", envid)
			}
		}
		for _, a := range []string{to1, to2} {
			if len(a) > maxAddress || strings.ContainsAny(a, " <>") && !strings.HasPrefix(a, "\"") {
				t.Fatalf("accepted recipient %q", a)
			}
		}
		if len(env.rcpts) != 2 {
			t.Fatalf("%d recipients", len(env.rcpts))
		}
		ascii := isASCII(from + to1 + to2)
		if !ascii && !env.utf8 {
			t.Fatalf("non-ASCII envelope without SMTPUTF8: %q %q %q", from, to1, to2)
		}
	})
}
