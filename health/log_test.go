package health_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/syncbuf"
)

// TestLogging: changes are logged with the target and the cause, downs at
// warning level; credentials never appear.
func TestLogging(t *testing.T) {
	t.Parallel()
	var buf syncbuf.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := health.New(&health.Options{Rise: 1, Fall: 1, Logger: logger})
	mustAdd(t, c, health.Target{Name: "imap1", Address: "192.0.2.1:143", Kind: health.ProbeIMAP,
		Username: "alice@example.org", Password: "s3cr3t-pw"})
	c.ReportSuccess("imap1")
	c.ReportFailure("imap1", errRefused)
	c.RemoveTarget("imap1")
	out := buf.String()
	for _, want := range []string{
		`level=INFO msg="health: target up" target=imap1 address=192.0.2.1:143 from=unknown`,
		`level=WARN msg="health: target down" target=imap1 address=192.0.2.1:143 from=up passive=true error="connection refused"`,
		`level=INFO msg="health: target removed" target=imap1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cr3t-pw") {
		t.Errorf("log holds the password:\n%s", out)
	}
}
