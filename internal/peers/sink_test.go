package peers_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/hamail/hamail/internal/peers"
)

func TestSMTPSinkAcceptsAndSourceLoads(t *testing.T) {
	t.Parallel()
	sink := peers.StartSMTPSink(t, peers.SinkOptions{})
	sendVia(t, sink.Addr, "alice@example.org", []string{"bob@example.com"}, "Subject: sink\r\n\r\ngone\r\n")

	src := peers.SMTPSource(t)
	out, err := exec.Command(src, "-s", "2", "-m", "20", "-f", "alice@example.org", "-t", "bob@example.com", sink.Addr).CombinedOutput()
	if err != nil {
		t.Fatalf("smtp-source against smtp-sink: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "fatal") || strings.Contains(string(out), "error") {
		t.Fatalf("smtp-source reported a problem:\n%s", out)
	}
	sink.Stop()
	if _, err := exec.Command(src, "-m", "1", sink.Addr).CombinedOutput(); err == nil {
		t.Fatal("smtp-source still reached the sink after Stop")
	}
}
