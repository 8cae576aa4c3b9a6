package peers

import (
	"fmt"
	"strconv"
	"syscall"
	"testing"

	"github.com/hamail/hamail/internal/syncbuf"
)

// SinkOptions configures an smtp-sink server.
type SinkOptions struct {
	// Args are extra smtp-sink options, placed before the address, for
	// instance []string{"-c"} to print a counter or {"-R", "/tmp", "-d",
	// "%M."} to dump messages (see smtp-sink(1)).
	Args []string
	// Backlog is the listen backlog. Default 256.
	Backlog int
}

// SMTPSink is Postfix's smtp-sink: a fast SMTP server that accepts every
// message and throws it away, the baseline of load benchmarks.
type SMTPSink struct {
	// Addr is the listener, 127.0.0.1:port.
	Addr string

	t    testing.TB
	log  *syncbuf.Buffer
	proc *process
}

// StartSMTPSink starts smtp-sink on a free loopback port and returns once
// it greets. It is stopped at t.Cleanup.
func StartSMTPSink(t testing.TB, opts SinkOptions) *SMTPSink {
	t.Helper()
	bin := need(t, "Postfix smtp-sink", "smtp-sink")[0]
	backlog := opts.Backlog
	if backlog <= 0 {
		backlog = 256
	}
	s := &SMTPSink{t: t, log: &syncbuf.Buffer{}}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("smtp-sink %s output:\n%s", s.Addr, s.Log())
		}
	})
	for attempt := 0; ; attempt++ {
		s.Addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		// As root smtp-sink must be told which user to become after
		// binding the port.
		args := append([]string{"-u", "postfix"}, opts.Args...)
		args = append(args, s.Addr, strconv.Itoa(backlog))
		proc, err := startProcess(s.log, bin, args...)
		if err != nil {
			t.Fatalf("peers: start smtp-sink: %v", err)
		}
		s.proc = proc
		err = waitGreeting(s.Addr, "220 ", proc)
		if err == nil {
			return s
		}
		s.Stop()
		if attempt < 2 && listenFailed(s.Log()) {
			continue
		}
		t.Fatalf("peers: smtp-sink did not start: %v\n%s", err, s.Log())
	}
}

// Stop ends smtp-sink. Stopping twice does nothing.
func (s *SMTPSink) Stop() {
	if s.proc == nil {
		return
	}
	proc := s.proc
	s.proc = nil
	syscall.Kill(-proc.cmd.Process.Pid, syscall.SIGTERM)
	if !proc.wait(stopTimeout) {
		proc.kill()
	}
}

// Log returns smtp-sink's output so far.
func (s *SMTPSink) Log() string { return s.log.String() }

// SMTPSource returns the path of Postfix's smtp-source load generator, or
// skips the test (fails it under HAMAIL_REQUIRE_PEERS=1) when it is not
// installed. Run it against an Addr with, for instance,
// `smtp-source -s 10 -m 1000 -f from@example.org -t to@example.com ADDR`.
func SMTPSource(t testing.TB) string {
	t.Helper()
	p, err := lookBinary("smtp-source")
	if err != nil {
		unavailable(t, "Postfix smtp-source not installed (%v)", err)
	}
	return p
}
