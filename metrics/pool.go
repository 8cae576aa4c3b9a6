package metrics

import (
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hamail/hamail/smtpclient"
)

// poolCollector reads the watched clients' pool statistics at scrape time.
type poolCollector struct {
	conns, waiting, dials, reuses, expired *prometheus.Desc

	mu      sync.Mutex
	clients map[string]*smtpclient.Client
}

func newPoolCollector(m *Metrics) *poolCollector {
	fq := func(name string) string { return prometheus.BuildFQName(m.o.Namespace, "smtp_pool", name) }
	cl := m.o.ConstLabels
	return &poolCollector{
		conns:   prometheus.NewDesc(fq("connections"), "Pooled SMTP connections by state: busy (in a session), idle (waiting for reuse).", []string{"client", "state"}, cl),
		waiting: prometheus.NewDesc(fq("waiting"), "Sends waiting for a connection slot (per-host cap reached).", []string{"client"}, cl),
		dials:   prometheus.NewDesc(fq("dials_total"), "New SMTP connections dialed, successful or not.", []string{"client"}, cl),
		reuses:  prometheus.NewDesc(fq("reuses_total"), "SMTP sessions that reused a pooled connection.", []string{"client"}, cl),
		expired: prometheus.NewDesc(fq("expired_total"), "Idle SMTP connections closed for idle time or age.", []string{"client"}, cl),
		clients: make(map[string]*smtpclient.Client),
	}
}

// WatchClient makes every scrape report the connection pool of c (all hosts
// together) under the label client=name. hamail.Mailer watches its own
// client under its Options.Name. Watching another client under the same
// name replaces the first.
func (m *Metrics) WatchClient(name string, c *smtpclient.Client) {
	m.pools.mu.Lock()
	m.pools.clients[name] = c
	m.pools.mu.Unlock()
}

// UnwatchClient stops reporting c under name. It does nothing if another
// client has replaced c under that name since.
func (m *Metrics) UnwatchClient(name string, c *smtpclient.Client) {
	m.pools.mu.Lock()
	if m.pools.clients[name] == c {
		delete(m.pools.clients, name)
	}
	m.pools.mu.Unlock()
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.waiting, c.dials, c.reuses, c.expired} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	names := make([]string, 0, len(c.clients))
	for n := range c.clients {
		names = append(names, n)
	}
	sort.Strings(names)
	clients := make([]*smtpclient.Client, len(names))
	for i, n := range names {
		clients[i] = c.clients[n]
	}
	c.mu.Unlock()
	for i, n := range names {
		st := clients[i].Stats().Total
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(max(st.Open-st.Idle, 0)), n, "busy")
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(st.Idle), n, "idle")
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(st.Waiting), n)
		ch <- prometheus.MustNewConstMetric(c.dials, prometheus.CounterValue, float64(st.Dials), n)
		ch <- prometheus.MustNewConstMetric(c.reuses, prometheus.CounterValue, float64(st.Reuses), n)
		ch <- prometheus.MustNewConstMetric(c.expired, prometheus.CounterValue, float64(st.Expired), n)
	}
}
