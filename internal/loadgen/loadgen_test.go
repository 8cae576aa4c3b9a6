package loadgen

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/hamail/hamail/internal/smtptest"
)

// waitPipelined waits for n messages on s and checks that each has size
// octets and came pipelined.
func waitPipelined(ctx context.Context, t *testing.T, s *smtptest.Server, n int, size int64) {
	t.Helper()
	msgs, err := s.WaitMessages(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Size != size || !m.Pipelined {
			t.Fatalf("message size %d pipelined %v", m.Size, m.Pipelined)
		}
	}
}

func TestRunDeliversEveryMessage(t *testing.T) {
	t.Parallel()
	for _, reset := range []ResetMode{ResetNone, ResetLockstep, ResetPipelined} {
		s := smtptest.NewServer(t, &smtptest.Options{DiscardBodies: true})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := Run(ctx, Config{Addr: s.Addr(), Conns: 4, Messages: 200, Size: 1000, Reset: reset})
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != 200 || res.Failed != 0 || res.Rate() <= 0 {
			t.Fatalf("result %+v", res)
		}
		waitPipelined(ctx, t, s, 200, 1000)
		st := s.Stats()
		if st.Connections != 4 || st.EHLO != 4 {
			t.Errorf("connections not reused: %+v", st)
		}
		want := 200 - 4
		if reset == ResetNone {
			want = 0
		}
		if st.Rset != want {
			t.Errorf("%s: RSET %d, want %d", reset, st.Rset, want)
		}
	}
}

func TestRunGoSMTPBaseline(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, &smtptest.Options{DiscardBodies: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, Config{Addr: s.Addr(), Conns: 3, Messages: 30, GoSMTP: true, Reset: ResetNone})
	if err != nil || res.Sent != 30 {
		t.Fatalf("%+v %v", res, err)
	}
	msgs, err := s.WaitMessages(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if msgs[0].Pipelined {
		t.Error("go-smtp's client pipelined")
	}
}

func TestRunCountsRefusals(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, nil)
	s.SetFault(smtptest.StageDataEnd, smtptest.Fault{Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"}, Times: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, Config{Addr: s.Addr(), Conns: 2, Messages: 20})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 17 || res.Failed != 3 || res.FirstErr == nil {
		t.Fatalf("result %+v", res)
	}
}

func TestRunNoServer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := Run(ctx, Config{Addr: addr, Conns: 2, Messages: 10}); err == nil {
		t.Fatal("no error without a server")
	}
}

func TestBodySize(t *testing.T) {
	t.Parallel()
	for _, n := range []int{100, 2048, 4096, 100000} {
		if got := len(Body(n)); got != n {
			t.Errorf("Body(%d) is %d bytes", n, got)
		}
	}
}

// BenchmarkRun sends b.N 2 KB messages over 16 reused connections to the
// in-process server: go-smtp's client (the baseline), smtpwire, and
// smtpclient.Client. compare.sh measures against Postfix's smtp-sink and
// smtp-source instead.
func BenchmarkRun(b *testing.B) {
	for _, bc := range []struct {
		name string
		cfg  Config
	}{
		{"gosmtp", Config{GoSMTP: true, Reset: ResetNone}},
		{"smtpwire", Config{}},
		{"smtpclient", Config{Client: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := smtptest.NewServer(b, &smtptest.Options{DiscardBodies: true})
			cfg := bc.cfg
			cfg.Addr, cfg.Conns, cfg.Messages, cfg.Size = s.Addr(), 16, b.N, 2048
			b.ReportAllocs()
			b.ResetTimer()
			res, err := Run(context.Background(), cfg)
			if err != nil || res.Failed > 0 {
				b.Fatal(err, res.FirstErr)
			}
			b.ReportMetric(res.Rate(), "msgs/s")
		})
	}
}

func TestRunThroughClient(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, &smtptest.Options{DiscardBodies: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, Config{Addr: s.Addr(), Conns: 4, Messages: 200, Size: 1000, Client: true})
	if err != nil || res.Sent != 200 || res.Failed != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	waitPipelined(ctx, t, s, 200, 1000)
	if st := s.Stats(); st.Connections > 4 || st.Messages != 200 {
		t.Errorf("pool not capped at 4 connections or messages lost: %+v", st)
	}

	// No server: every message fails and the run says why.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res, err = Run(ctx, Config{Addr: addr, Conns: 2, Messages: 10, Client: true})
	if err == nil || res.Sent != 0 || res.Failed != 10 {
		t.Fatalf("%+v %v", res, err)
	}
}
