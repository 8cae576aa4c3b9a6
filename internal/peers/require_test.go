package peers

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// recordingTB records how a helper gave up instead of ending the test.
type recordingTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func runRecorded(t *testing.T, f func(tb testing.TB)) *recordingTB {
	r := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

// Not parallel: it sets the environment.
func TestMissingBinarySkipsUnlessRequired(t *testing.T) {
	missing := func(tb testing.TB) { need(tb, "Postfix", "hamail-no-such-binary") }

	t.Setenv(RequireEnv, "")
	r := runRecorded(t, missing)
	if r.failed != "" || !strings.Contains(r.skipped, "hamail-no-such-binary not installed") {
		t.Fatalf("without %s: skipped %q, failed %q", RequireEnv, r.skipped, r.failed)
	}

	t.Setenv(RequireEnv, "1")
	r = runRecorded(t, missing)
	if r.skipped != "" || !strings.Contains(r.failed, "hamail-no-such-binary not installed") {
		t.Fatalf("with %s=1: skipped %q, failed %q", RequireEnv, r.skipped, r.failed)
	}
}
