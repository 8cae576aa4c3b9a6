// Command testsummary reads `go test -json` on standard input and prints a
// short log: build errors, the output of failed tests only, one line per
// package, the skipped tests, and the tests that ran against real Postfix
// and Dovecot servers. It exits 1 if anything failed, or if no test of a
// real Postfix or a real Dovecot passed, so that CI cannot go green with
// the real-peer tests silently skipped.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
)

type event struct {
	Action     string
	Package    string
	ImportPath string
	Test       string
	Elapsed    float64
	Output     string
}

// realPeer matches the names of tests that start real servers.
var realPeer = regexp.MustCompile(`(?i)postfix|dovecot|smtpsink`)

// maxBuffered bounds the output kept per test or package; the first lines
// carry the failure (a timeout's panic comes before its goroutine dump).
const maxBuffered = 400

type key struct{ pkg, test string }

func main() {
	buf := make(map[key][]string)
	type pkgCount struct{ pass, skip, fail int }
	counts := make(map[string]*pkgCount)
	var skipped, peersRan []string
	failed := false
	peerPostfix, peerDovecot := false, false

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	for in.Scan() {
		line := in.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Println(string(line))
			continue
		}
		if e.Action == "build-output" {
			fmt.Print(e.Output)
			continue
		}
		if e.Action == "build-fail" {
			failed = true
			continue
		}
		k := key{e.Package, e.Test}
		c := counts[e.Package]
		if c == nil {
			c = &pkgCount{}
			counts[e.Package] = c
		}
		switch e.Action {
		case "output":
			switch b := buf[k]; {
			case len(b) < maxBuffered:
				buf[k] = append(b, e.Output)
			case len(b) == maxBuffered:
				buf[k] = append(b, "\t... (further output cut)\n")
			}
		case "pass", "skip", "fail":
			if e.Test == "" {
				switch {
				case e.Action == "fail":
					failed = true
					fmt.Print(strings.Join(buf[k], ""))
					fmt.Printf("FAIL\t%s\t%.1fs\n", e.Package, e.Elapsed)
				case e.Action == "skip":
					// No test files.
				default:
					fmt.Printf("ok\t%s\t%.1fs\t(%d passed, %d skipped)\n", e.Package, e.Elapsed, c.pass, c.skip)
				}
				delete(buf, k)
				continue
			}
			top := !strings.Contains(e.Test, "/")
			switch e.Action {
			case "fail":
				failed = true
				c.fail++
				fmt.Print(strings.Join(buf[k], ""))
			case "skip":
				if top {
					c.skip++
					skipped = append(skipped, e.Package+" "+e.Test)
				}
			case "pass":
				if top {
					c.pass++
				}
			}
			if top && realPeer.MatchString(e.Test) {
				peersRan = append(peersRan, fmt.Sprintf("%s\t%s\t%s\t%.2fs", e.Action, short(e.Package), e.Test, e.Elapsed))
				if e.Action == "pass" {
					lower := strings.ToLower(e.Test)
					peerPostfix = peerPostfix || strings.Contains(lower, "postfix")
					peerDovecot = peerDovecot || strings.Contains(lower, "dovecot")
				}
			}
			delete(buf, k)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(1)
	}

	if len(skipped) > 0 {
		sort.Strings(skipped)
		fmt.Printf("\nskipped tests (%d):\n", len(skipped))
		for _, s := range skipped {
			fmt.Println("  " + s)
		}
	}
	sort.Strings(peersRan)
	fmt.Printf("\ntests against real servers (Postfix, Dovecot, smtp-sink): %d\n", len(peersRan))
	for _, s := range peersRan {
		fmt.Println("  " + s)
	}
	if !peerPostfix || !peerDovecot {
		fmt.Printf("FAIL: a real Postfix test passed: %v, a real Dovecot test passed: %v\n", peerPostfix, peerDovecot)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
}

func short(pkg string) string {
	return strings.TrimPrefix(pkg, "github.com/hamail/hamail/")
}
