package metrics

import (
	"context"
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hamail/hamail/queue"
)

// queueCollector reads the watched stores' Stats at scrape time, so that
// the depth is exact when scraped and costs nothing between scrapes.
type queueCollector struct {
	m *Metrics

	items  *prometheus.Desc
	oldest *prometheus.Desc
	up     *prometheus.Desc

	mu     sync.Mutex
	stores map[string]queue.Store
}

func newQueueCollector(m *Metrics) *queueCollector {
	fq := func(name string) string { return prometheus.BuildFQName(m.o.Namespace, "queue", name) }
	return &queueCollector{
		m:      m,
		items:  prometheus.NewDesc(fq("items"), "Queued messages by state: due (waiting for a worker), leased (being attempted), deferred (waiting for a retry), quarantined (undecodable records set aside).", []string{"queue", "state"}, m.o.ConstLabels),
		oldest: prometheus.NewDesc(fq("oldest_age_seconds"), "Age of the oldest queued message; 0 when the queue is empty.", []string{"queue"}, m.o.ConstLabels),
		up:     prometheus.NewDesc(fq("up"), "1 when the queue's statistics could be read at this scrape, 0 otherwise.", []string{"queue"}, m.o.ConstLabels),
		stores: make(map[string]queue.Store),
	}
}

// WatchQueue makes every scrape report the depth of s by state and the age
// of its oldest message, under the label queue=name. Stats is called at
// scrape time, bounded by Options.ScrapeTimeout; a store that fails or
// times out reports <ns>_queue_up 0 and no depth. Watching another store
// under the same name replaces the first.
func (m *Metrics) WatchQueue(name string, s queue.Store) {
	m.queues.mu.Lock()
	m.queues.stores[name] = s
	m.queues.mu.Unlock()
}

// UnwatchQueue stops reporting s under name. It does nothing if another
// store has replaced s under that name since, so that a process that
// reopens its queue before the old handle is released keeps its series.
func (m *Metrics) UnwatchQueue(name string, s queue.Store) {
	m.queues.mu.Lock()
	if m.queues.stores[name] == s {
		delete(m.queues.stores, name)
	}
	m.queues.mu.Unlock()
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.items
	ch <- c.oldest
	ch <- c.up
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	names := make([]string, 0, len(c.stores))
	for n := range c.stores {
		names = append(names, n)
	}
	stores := make([]queue.Store, len(names))
	sort.Strings(names)
	for i, n := range names {
		stores[i] = c.stores[n]
	}
	c.mu.Unlock()

	// Stores are asked in parallel so that one slow store delays the
	// scrape by one timeout, not by one per store.
	stats := make([]queue.Stats, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i := range names {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), c.m.o.ScrapeTimeout)
			defer cancel()
			stats[i], errs[i] = stores[i].Stats(ctx)
		})
	}
	wg.Wait()

	now := c.m.o.Now()
	for i, n := range names {
		if errs[i] != nil {
			ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0, n)
			continue
		}
		st := stats[i]
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1, n)
		for _, s := range []struct {
			state string
			n     int
		}{{"due", st.Due}, {"leased", st.Leased}, {"deferred", st.Deferred}, {"quarantined", st.Quarantined}} {
			ch <- prometheus.MustNewConstMetric(c.items, prometheus.GaugeValue, float64(s.n), n, s.state)
		}
		age := 0.0
		if !st.Oldest.IsZero() {
			age = max(now.Sub(st.Oldest).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age, n)
	}
}
