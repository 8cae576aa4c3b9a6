package metrics_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hamail/hamail"
	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/internal/smtptest"
	"github.com/hamail/hamail/metrics"
	"github.com/hamail/hamail/smtpclient"
)

// Metrics on a registry of one's own, served at /metrics, fed by a Mailer
// (which installs the SMTP and queue hooks itself) and a health checker.
func ExampleNew() {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, nil) // namespace "hamail"
	if err != nil {
		log.Fatal(err)
	}
	checker := health.New(&health.Options{Hooks: m.HealthHooks()})
	_ = checker // add targets and Run it; pass it as Options.Health

	relay, err := smtptest.New(nil) // a smarthost; here an in-process test server
	if err != nil {
		log.Fatal(err)
	}
	if err := relay.Start(); err != nil {
		log.Fatal(err)
	}
	defer relay.Stop()
	dir, _ := os.MkdirTemp("", "hamail-metrics-example")
	defer os.RemoveAll(dir)
	mailer, err := hamail.Open(&hamail.Options{
		Relays:  []smtpclient.Relay{{Name: "relay-a", Addr: relay.Addr()}},
		Dir:     dir,
		Metrics: m,
		Health:  checker,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer mailer.Close()

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := httptest.NewServer(mux) // http.ListenAndServe(":9100", mux) in a program
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := mailer.Send(ctx, &hamail.Message{From: "app@example.org", To: []string{"bob@example.com"},
		Body: strings.NewReader("Subject: hi\r\n\r\nhi\r\n")}); err != nil {
		log.Fatal(err)
	}
	for st, _ := mailer.Stats(ctx); st.Items > 0 && ctx.Err() == nil; st, _ = mailer.Stats(ctx) {
		time.Sleep(10 * time.Millisecond) // waiting for the delivery to be recorded
	}

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "hamail_delivery_recipients_total") || strings.HasPrefix(line, "hamail_queue_items") {
			fmt.Println(line)
		}
	}
	// Output:
	// hamail_delivery_recipients_total{host="relay-a",outcome="delivered"} 1
	// hamail_queue_items{queue="mail",state="deferred"} 0
	// hamail_queue_items{queue="mail",state="due"} 0
	// hamail_queue_items{queue="mail",state="leased"} 0
	// hamail_queue_items{queue="mail",state="quarantined"} 0
}
