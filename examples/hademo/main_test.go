package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestRunFailsOverAndBack(t *testing.T) {
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	lines := strings.Split(out.String(), "\n")
	if len(lines) < 4 {
		t.Fatalf("short output:\n%s", out.String())
	}
	for i, want := range []string{"black-hole", "reset", "pass"} {
		row := lines[i+1]
		if !strings.Contains(row, want) {
			t.Errorf("row %d = %q, want fault %q", i+1, row, want)
		}
		wantRelay := "relay-2"
		if want == "pass" {
			wantRelay = "relay-1"
		}
		if !strings.Contains(row, wantRelay) {
			t.Errorf("row %d = %q, want delivery by %s", i+1, row, wantRelay)
		}
	}
}
