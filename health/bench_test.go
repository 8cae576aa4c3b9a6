package health_test

import (
	"context"
	"testing"
	"time"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/imaptest"
	"github.com/hamail/hamail/internal/smtptest"
)

// BenchmarkProbe measures one probe of each kind against in-process
// servers on loopback; tcp (connect and close) is the baseline the SMTP
// and IMAP conversations are compared with.
func BenchmarkProbe(b *testing.B) {
	srv := smtptest.NewServer(b, nil)
	set := imaptest.NewSet(b, &imaptest.Options{Replicas: 1})
	for _, tc := range []struct {
		name string
		tg   health.Target
	}{
		{"tcp", health.Target{Name: "tcp", Kind: health.ProbeTCP, Address: srv.Addr()}},
		{"smtp", health.Target{Name: "smtp", Kind: health.ProbeSMTP, Address: srv.Addr(), EHLOName: "probe.example.org"}},
		{"smtp-starttls", health.Target{Name: "smtp", Kind: health.ProbeSMTP, Address: srv.Addr(),
			EHLOName: "probe.example.org", TLS: health.StartTLS, TLSConfig: srv.ClientTLSConfig("")}},
		{"imap", health.Target{Name: "imap", Kind: health.ProbeIMAP, Address: set.Replica(0).Addr()}},
		{"imap-login", health.Target{Name: "imap", Kind: health.ProbeIMAP, Address: set.Replica(0).Addr(),
			Username: set.Username(), Password: set.Password()}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p := &health.NetProber{}
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := p.Probe(ctx, tc.tg)
				cancel()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReport measures passive reports from parallel clients against
// State reads, the two calls smtpclient makes per delivery.
func BenchmarkReport(b *testing.B) {
	c := health.New(nil)
	names := []string{"relay1", "relay2", "relay3", "relay4"}
	for _, n := range names {
		if err := c.AddTarget(health.Target{Name: n, Address: "192.0.2.1:25"}); err != nil {
			b.Fatal(err)
		}
	}
	sub := c.Subscribe() // a subscriber that never reads
	defer sub.Close()
	b.Run("state", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				c.State(names[i%len(names)])
				i++
			}
		})
	})
	b.Run("report", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if i%3 == 0 {
					c.ReportFailure(names[i%len(names)], nil)
				} else {
					c.ReportSuccess(names[i%len(names)])
				}
				i++
			}
		})
	})
}
