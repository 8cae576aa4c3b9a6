package main

import (
	"bufio"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/hamail/hamail/smtpclient"
)

// users holds the accounts allowed to submit: name → bcrypt hash, and the
// sender addresses each may use.
//
// The users file has one "name:hash" per line, as htpasswd -B writes it
// ("htpasswd -nbB alice secret") or relayd -hash-password prints it; blank
// lines and lines starting with # are skipped. Only bcrypt hashes ($2a$, $2b$,
// $2y$) are accepted: they are salted and slow on purpose, so a stolen file
// does not give the passwords away cheaply.
//
// An optional third field restricts the envelope senders (MAIL FROM) of the
// account, as Postfix's smtpd_sender_login_maps does: a comma-separated list
// of addresses, "@domain" for any address of a domain, and "<>" for the null
// sender. Without it the account may use any sender.
//
//	alice:$2y$05$...:alice@example.org,@alice.example.org
//	monitoring:$2y$05$...:alerts@example.org,<>
type users struct {
	hashes  map[string][]byte
	senders map[string][]string // name → allowed senders; absent: any
	// dummy is checked for unknown names, so that the time of a refusal
	// does not tell whether the name exists.
	dummy []byte
}

func loadUsers(path string) (*users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	defer f.Close()
	return parseUsers(path, f)
}

func parseUsers(path string, r io.Reader) (*users, error) {
	u := &users{hashes: map[string][]byte{}, senders: map[string][]string{}}
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hash, ok := strings.Cut(line, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("%s:%d: want name:bcrypt-hash[:senders]", path, n)
		}
		hash, senders, restricted := strings.Cut(hash, ":")
		if restricted {
			var list []string
			for _, a := range strings.Split(senders, ",") {
				if a = strings.TrimSpace(a); a == "" {
					continue
				}
				if a != "<>" && !strings.HasPrefix(a, "@") {
					if _, err := smtpclient.ParseAddress(a); err != nil {
						return nil, fmt.Errorf("%s:%d: user %s: sender %q: %v", path, n, name, a, err)
					}
				}
				list = append(list, a)
			}
			if len(list) == 0 {
				return nil, fmt.Errorf("%s:%d: user %s: empty sender list (leave the field out to allow any)", path, n, name)
			}
			u.senders[name] = list
		}
		cost, err := bcrypt.Cost([]byte(hash))
		if err != nil || !strings.HasPrefix(hash, "$2") {
			return nil, fmt.Errorf("%s:%d: user %s: not a bcrypt hash (make one with relayd -hash-password)", path, n, name)
		}
		if cost > maxCost {
			// Each AUTH would take minutes: a denial of service.
			return nil, fmt.Errorf("%s:%d: user %s: bcrypt cost %d is above %d", path, n, name, cost, maxCost)
		}
		if _, dup := u.hashes[name]; dup {
			return nil, fmt.Errorf("%s:%d: user %s listed twice", path, n, name)
		}
		u.hashes[name] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(u.hashes) == 0 {
		return nil, fmt.Errorf("%s: no users", path)
	}
	for _, h := range u.hashes {
		// The dummy costs what a real check costs.
		cost, _ := bcrypt.Cost(h)
		u.dummy, _ = bcrypt.GenerateFromPassword([]byte("relayd-dummy"), cost)
		break
	}
	return u, nil
}

// maxCost bounds the bcrypt cost accepted: 2^14 rounds take about a second
// on a small machine, and every AUTH pays it.
const maxCost = 14

var errBadCredentials = errors.New("bad credentials")

// verify checks a name and password (RFC 4616 PLAIN: authcid, passwd).
func (u *users) verify(name, password string) error {
	h, ok := u.hashes[name]
	if !ok {
		_ = bcrypt.CompareHashAndPassword(u.dummy, []byte(password))
		return errBadCredentials
	}
	if bcrypt.CompareHashAndPassword(h, []byte(password)) != nil {
		return errBadCredentials
	}
	return nil
}

// mayUse reports whether the authenticated user may send as from ("" is
// the null sender).
func (u *users) mayUse(name, from string) bool {
	if u == nil {
		return false
	}
	list, restricted := u.senders[name]
	if !restricted {
		return true
	}
	for _, a := range list {
		switch {
		case a == "<>":
			if from == "" {
				return true
			}
		case strings.HasPrefix(a, "@"):
			if i := strings.LastIndexByte(from, '@'); i >= 0 && strings.EqualFold(from[i:], a) {
				return true
			}
		case strings.EqualFold(a, from):
			return true
		}
	}
	return false
}

// sameIdentity reports whether the PLAIN authorization identity is the
// authenticated user (an empty one means the same, RFC 4616 §2); relayd
// lets nobody act for another.
func sameIdentity(authzid, authcid string) bool {
	return authzid == "" || subtle.ConstantTimeCompare([]byte(authzid), []byte(authcid)) == 1
}
