package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/imapfailover"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsSummary is what the Prometheus registry says about the run, as a
// dashboard would show it.
type MetricsSummary struct {
	// RecipientsDelivered and RecipientAttempts give the delivery success
	// rate: sum(rate(hamail_delivery_recipients_total{outcome="delivered"}))
	// over sum(rate(hamail_delivery_recipients_total)).
	RecipientsDelivered float64
	RecipientAttempts   float64
	BreakerTrips        float64 // hamail_smtp_breaker_trips_total
	IMAPFailovers       float64 // hamail_imap_failovers_total
}

// summarize reads the registry's counters.
func summarize(reg *prometheus.Registry) MetricsSummary {
	var s MetricsSummary
	families, err := reg.Gather()
	if err != nil {
		return s
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			v := m.GetCounter().GetValue()
			switch f.GetName() {
			case "hamail_delivery_recipients_total":
				s.RecipientAttempts += v
				for _, l := range m.GetLabel() {
					if l.GetName() == "outcome" && l.GetValue() == "delivered" {
						s.RecipientsDelivered += v
					}
				}
			case "hamail_smtp_breaker_trips_total":
				s.BreakerTrips += v
			case "hamail_imap_failovers_total":
				s.IMAPFailovers += v
			}
		}
	}
	return s
}

// serveMetrics serves reg at /metrics on addr until stop is called.
func serveMetrics(addr string, reg *prometheus.Registry) (stop func(), bound string, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("-metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // http.ErrServerClosed once stopped

	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, ln.Addr().String(), nil
}

// chainHealth calls the metrics hooks, then changed.
func chainHealth(m health.Hooks, changed func(health.Change)) health.Hooks {
	h := m
	h.Changed = func(c health.Change) {
		if m.Changed != nil {
			m.Changed(c)
		}
		changed(c)
	}
	return h
}

// chainIMAP calls the hooks of a, then those of b.
func chainIMAP(a, b imapfailover.Hooks) imapfailover.Hooks {
	return imapfailover.Hooks{
		Connected: func(replica string, err error) {
			if a.Connected != nil {
				a.Connected(replica, err)
			}
			if b.Connected != nil {
				b.Connected(replica, err)
			}
		},
		Failover: func(from, to string, err error) {
			if a.Failover != nil {
				a.Failover(from, to, err)
			}
			if b.Failover != nil {
				b.Failover(from, to, err)
			}
		},
		Resynced: func(mailbox, replica string, d time.Duration, r *imapfailover.SyncReport) {
			if a.Resynced != nil {
				a.Resynced(mailbox, replica, d, r)
			}
			if b.Resynced != nil {
				b.Resynced(mailbox, replica, d, r)
			}
		},
	}
}
