package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hamail/hamail"
	"github.com/hamail/hamail/health"
	"github.com/hamail/hamail/imapfailover"
	"github.com/hamail/hamail/metrics"
	"github.com/hamail/hamail/mxresolve"
	"github.com/hamail/hamail/queue"
	"github.com/hamail/hamail/smtpclient"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Config sizes a run. Zero fields take the defaults of the flags.
type Config struct {
	Messages    int           // messages to send
	Duration    time.Duration // how long the sending lasts
	Concurrency int           // Send calls in flight
	// Drain bounds the wait, after the last Send, for the last deliveries
	// and reads; what is not read by then counts as lost.
	Drain time.Duration
	// ReplicaLag is how far imap2 is behind imap1.
	ReplicaLag time.Duration
	Quiet      bool
	// MetricsAddr, when set, serves the Prometheus metrics of the run at
	// http://MetricsAddr/metrics while it lasts.
	MetricsAddr string
}

func (c *Config) defaults() {
	if c.Messages <= 0 {
		c.Messages = 300
	}
	if c.Duration <= 0 {
		c.Duration = 20 * time.Second
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.Drain <= 0 {
		c.Drain = 30 * time.Second
	}
	if c.ReplicaLag <= 0 {
		c.ReplicaLag = 200 * time.Millisecond
	}
}

// Event is a step of the fault script as it happened.
type Event struct {
	At   time.Duration
	What string
	Kill bool
}

// Resync is the first resynchronisation of the reader on a replica it
// moved to.
type Resync struct {
	Replica  string
	Move     string // "failover", or "failback" to a preferred replica
	Took     time.Duration
	Fetched  int // new messages fetched and handed out
	Lagging  bool
	Commands int64 // IMAP command lines sent from the failover to the end of the resync
	BytesIn  int64
}

// Report is what the run measured. Delivered, lost and read twice come
// from the servers' records and the reader's own log, not from the
// sender's beliefs.
type Report struct {
	Sent          int            // Send returned: durable in the queue
	SendErrors    int            // Send failed: nothing was promised
	Delivered     int            // distinct Message-IDs the SMTP servers accepted
	ByHost        map[string]int // which host accepted each message first
	AcceptedTwice int            // later acceptances of a message already accepted
	Attempts      int            // delivery attempts made by the queue
	Retried       int            // messages that needed more than one attempt
	HostFailures  map[string]int // sessions that failed on a host, whose recipients moved on
	BreakerTrips  map[string]int // breakers that opened, per host
	IMAPFailovers int
	Resyncs       []Resync
	// MailerRestarts: the Mailer closed and opened again on its queue.
	MailerRestarts []MailerRestart
	Read           int            // distinct Message-IDs the reader was handed
	ReadByReplica  map[string]int // messages read from each replica
	Lost           int            // sent, never read
	ReadTwice      int            // handed to the reader more than once
	Events         []Event
	Elapsed        time.Duration
	// Metrics are the same events as the Prometheus registry counted them.
	Metrics MetricsSummary
}

// Kills counts the fault events that happened.
func (r *Report) Kills() int {
	n := 0
	for _, e := range r.Events {
		if e.Kill {
			n++
		}
	}
	return n
}

// OK says whether nothing was lost and nothing read twice.
func (r *Report) OK() bool { return r.Lost == 0 && r.ReadTwice == 0 && r.SendErrors == 0 }

// MailerRestart is one restart of the sending process.
type MailerRestart struct {
	Queued int // messages in the queue just before Close
	Found  int // messages the new Mailer found in the queue
}

// mailerBox holds the current Mailer; the script replaces it while
// senders keep sending.
type mailerBox struct {
	mu sync.RWMutex
	m  *hamail.Mailer
}

func (b *mailerBox) send(ctx context.Context, msg *hamail.Message) (string, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.m.Send(ctx, msg)
}

func (b *mailerBox) stats(ctx context.Context) (queue.Stats, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.m.Stats(ctx)
}

// restart waits for the Sends in progress, closes the Mailer without a
// grace period (attempts in flight are cut, their messages stay queued)
// and opens a new one on the same directory.
func (b *mailerBox) restart(ctx context.Context, o *hamail.Options) (queued, found int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, err := b.m.Stats(ctx)
	if err != nil {
		return 0, 0, err
	}
	if err := b.m.Close(); err != nil {
		return 0, 0, fmt.Errorf("closing the mailer: %w", err)
	}
	if b.m, err = hamail.Open(o); err != nil {
		return 0, 0, fmt.Errorf("reopening the mailer: %w", err)
	}
	st2, err := b.m.Stats(ctx)
	if err != nil {
		return 0, 0, err
	}
	return st.Items, st2.Items, nil
}

// progress prints timestamped lines relative to the start.
type progress struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
	quiet bool
}

func (p *progress) printf(format string, args ...any) {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "%6.2fs  %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

func (p *progress) since() time.Duration { return time.Since(p.start) }

// counters collect what the Mailer's and the reader's hooks report.
type counters struct {
	mu           sync.Mutex
	attempts     int
	tries        map[string]int // queue item → attempts
	hostFailures map[string]int
	breakerTrips map[string]int
	failovers    int
	connectedAt  map[string]wireSnapshot // replica → reader traffic when its last connection opened
	firstResync  map[string]bool         // replica → its first resync since connecting is to come
	current      string                  // replica of the reader's last connection
	resyncs      []Resync                // first resyncs after moving to another replica
	restarts     []MailerRestart
}

func run(ctx context.Context, cfg Config, out io.Writer) (rep Report, err error) {
	cfg.defaults()
	p := &progress{out: out, start: time.Now(), quiet: cfg.Quiet}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	w, err := newWorld(cfg.ReplicaLag)
	if err != nil {
		return rep, fmt.Errorf("starting the servers: %w", err)
	}
	defer w.Close()
	dir, err := os.MkdirTemp("", "hademo-queue-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)

	if !cfg.Quiet {
		describe(out, w, cfg, dir)
	}

	c := &counters{tries: map[string]int{}, hostFailures: map[string]int{}, breakerTrips: map[string]int{},
		connectedAt: map[string]wireSnapshot{}, firstResync: map[string]bool{}}
	rd := newReader()

	// The sender: direct delivery to example.com's exchangers found in
	// DNS, the two relays as fallback, a durable queue retrying what no
	// host took.
	resolver := mxresolve.New(&mxresolve.Options{Nameservers: []string{w.dns.Addr()}, Timeout: 500 * time.Millisecond})
	var fallback []smtpclient.Relay
	for _, h := range w.relay {
		fallback = append(fallback, smtpclient.Relay{Name: h.name, Addr: h.dial})
	}
	smtpOpts := &smtpclient.Options{
		LocalName: "app.example.org",
		Dialer:    w.net,
		MXPort:    mxPort,
		// Demo-sized timeouts: a black-holed host is given up in a
		// second rather than after RFC 5321's minutes.
		Timeouts: smtpclient.Timeouts{Connect: time.Second, Greeting: time.Second, Hello: time.Second,
			StartTLS: time.Second, Mail: 2 * time.Second, Rcpt: 2 * time.Second, DataInit: 2 * time.Second,
			DataBlock: 2 * time.Second, DataEnd: 2 * time.Second, Reset: time.Second, Quit: time.Second},
		Breaker: smtpclient.BreakerOptions{Failures: 3, OpenTimeout: 2 * time.Second},
		Hooks: &smtpclient.Hooks{
			AttemptDone: func(a smtpclient.Attempt) {
				if a.Err != nil {
					c.mu.Lock()
					c.hostFailures[hostName(a.Host)]++
					c.mu.Unlock()
				}
			},
			BreakerStateChange: func(e smtpclient.BreakerEvent) {
				name := shortHost(e.Host)
				switch {
				case e.To == gobreaker.StateOpen:
					c.mu.Lock()
					c.breakerTrips[name]++
					c.mu.Unlock()
					// Half-open probes that fail are counted, not
					// printed: one line per outage is enough.
					if e.From == gobreaker.StateClosed {
						p.printf("breaker  %s open: skipped until a probe gets through", name)
					}
				case e.To == gobreaker.StateClosed:
					p.printf("breaker  %s closed: in use again", name)
				}
			},
		},
	}
	// Prometheus metrics on a registry of the demo's own, fed by the
	// Mailer, the health checker and the reader, and served at
	// -metrics when asked.
	reg := prometheus.NewRegistry()
	mtr, err := metrics.New(reg, nil)
	if err != nil {
		return rep, err
	}
	if cfg.MetricsAddr != "" {
		stop, addr, err := serveMetrics(cfg.MetricsAddr, reg)
		if err != nil {
			return rep, err
		}
		defer stop()
		p.printf("metrics  http://%s/metrics", addr)
	}

	mailerOpts := &hamail.Options{
		Metrics:        mtr,
		Resolver:       resolver,
		FallbackRelays: fallback,
		SMTP:           smtpOpts,
		Dir:            dir,
		Runner: &queue.RunnerOptions{
			Concurrency:    8,
			AttemptTimeout: 10 * time.Second,
			LeaseDuration:  12 * time.Second,
			// Demo-sized retry schedule: Postfix waits minutes.
			Schedule:     queue.Retry{MinBackoff: 300 * time.Millisecond, MaxBackoff: 2 * time.Second, MaxLifetime: time.Hour},
			PollInterval: 100 * time.Millisecond,
			// Nothing is given up within the demo's lifetime; had it
			// been, app@example.org has no mailbox for the notice.
			NoDSN: true,
			OnAttempt: func(a *queue.Attempt) {
				c.mu.Lock()
				c.attempts++
				c.tries[a.ID] = max(c.tries[a.ID], a.Number)
				c.mu.Unlock()
			},
		},
	}
	mailer := &mailerBox{}
	if mailer.m, err = hamail.Open(mailerOpts); err != nil {
		return rep, fmt.Errorf("opening the mailer: %w", err)
	}
	mailerOpen := true
	defer func() {
		if mailerOpen {
			mailer.m.Close()
		}
	}()

	// The receiving application, following the INBOX across replicas.
	// A health checker probes them (greeting, CAPABILITY, LOGIN), so the
	// reader moves back to imap1 once it is up again.
	checker := health.New(&health.Options{Interval: 500 * time.Millisecond, FastInterval: 200 * time.Millisecond,
		DownInterval: 300 * time.Millisecond, Timeout: time.Second, Rise: 2, Fall: 2,
		Hooks: chainHealth(mtr.HealthHooks(), func(ch health.Change) {
			if ch.From != health.Unknown {
				p.printf("health   %s %s → %s", ch.Target, ch.From, ch.To)
			}
		})})
	for _, r := range w.imapReplicas() {
		if err := checker.AddTarget(health.Target{Name: r.Name, Address: r.Addr, Kind: health.ProbeIMAP,
			Username: r.Username, Password: r.Password}); err != nil {
			return rep, err
		}
	}
	rank := map[string]int{} // replica → priority, lower preferred
	for _, r := range w.imapReplicas() {
		rank[r.Name] = r.Priority
	}
	checkCtx, stopCheck := context.WithCancel(ctx)
	checkDone := make(chan error, 1)
	go func() { checkDone <- checker.Run(checkCtx) }()
	defer func() {
		stopCheck()
		<-checkDone
	}()
	pool, err := imapfailover.New(&imapfailover.Options{
		Health:         checker,
		Replicas:       w.imapReplicas(),
		Dial:           rd.wire.dial,
		DialTimeout:    2 * time.Second,
		CommandTimeout: 2 * time.Second,
		Heartbeat:      time.Second,
		FailureHold:    2 * time.Second,
		ReconnectDelay: 100 * time.Millisecond,
		Hooks: chainIMAP(mtr.IMAPHooks(), imapfailover.Hooks{
			// The cost of moving to another replica: from the new
			// connection (after LOGIN) to the end of the first resync
			// there.
			Connected: func(replica string, err error) {
				if err == nil {
					c.mu.Lock()
					c.connectedAt[replica] = rd.wire.snapshot()
					c.firstResync[replica] = true
					c.mu.Unlock()
				}
			},
			Resynced: func(mailbox, replica string, d time.Duration, r *imapfailover.SyncReport) {
				c.mu.Lock()
				defer c.mu.Unlock()
				if !c.firstResync[replica] {
					return // a resync on the same connection, after new mail
				}
				c.firstResync[replica] = false
				prev := c.current
				c.current = replica
				if prev == "" || prev == replica {
					return // the first connection, or a reconnection
				}
				used := rd.wire.snapshot().sub(c.connectedAt[replica])
				rs := Resync{Replica: replica, Move: "failover", Took: d, Fetched: r.Delivered,
					Lagging: r.Lagging, Commands: used.Commands, BytesIn: used.BytesIn}
				if rank[replica] < rank[prev] {
					rs.Move = "failback"
					p.printf("reader   back on %s, the preferred replica, now up again; resync took %s, %d new message(s)",
						replica, fmtDur(rs.Took), rs.Fetched)
				}
				c.resyncs = append(c.resyncs, rs)
			},
			// Called once the new replica has served: its resync is done.
			Failover: func(from, to string, err error) {
				c.mu.Lock()
				c.failovers++
				var rs Resync
				if n := len(c.resyncs); n > 0 {
					rs = c.resyncs[n-1]
				}
				c.mu.Unlock()
				p.printf("reader   failover %s → %s (%s); resync took %s, %d new message(s)%s",
					from, to, shortErr(err), fmtDur(rs.Took), rs.Fetched, lagNote(rs.Lagging))
			},
		}),
	})
	if err != nil {
		return rep, err
	}
	defer pool.Close()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- pool.Mailbox("INBOX", &imapfailover.MailboxOptions{DeliverExisting: true}).Watch(watchCtx, rd.handle)
	}()

	// The stream of messages, paced over the duration, with the fault
	// script keyed to how much has been sent.
	var (
		sentMu     sync.Mutex
		sentIDs    = map[string]bool{}
		sendErrors atomic.Int64
		handed     atomic.Int64 // messages handed to Send so far
	)
	stg := &stage{world: w, restartMailer: func() error {
		queued, found, err := mailer.restart(ctx, mailerOpts)
		if err == nil {
			p.printf("mailer   closed with %d message(s) queued; the new Mailer found %d on disk", queued, found)
			c.mu.Lock()
			c.restarts = append(c.restarts, MailerRestart{Queued: queued, Found: found})
			c.mu.Unlock()
		}
		return err
	}}
	steps := script()
	var events []Event
	next := 0
	runSteps := func() error {
		for next < len(steps) && float64(handed.Load()) >= steps[next].at*float64(cfg.Messages) {
			s := steps[next]
			next++
			p.printf("FAULT    %s", s.what)
			events = append(events, Event{At: p.since(), What: s.what, Kill: s.kill})
			if err := s.do(stg); err != nil {
				return fmt.Errorf("fault script: %s: %w", s.what, err)
			}
		}
		return nil
	}

	runID := fmt.Sprintf("%x", time.Now().UnixNano())
	work := make(chan int)
	var senders sync.WaitGroup
	for range cfg.Concurrency {
		senders.Add(1)
		go func() {
			defer senders.Done()
			for n := range work {
				msgID := fmt.Sprintf("hademo-%d.%s@example.org", n, runID)
				body := fmt.Sprintf("From: App <%s>\r\nTo: <%s>\r\nSubject: demo message %d\r\nMessage-ID: <%s>\r\n"+
					"Date: %s\r\n\r\nMessage %d of the hamail high-availability demo.\r\n",
					sender, recipient, n, msgID, time.Now().Format(time.RFC1123Z), n)
				_, err := mailer.send(ctx, &hamail.Message{From: sender, To: []string{recipient},
					Body: strings.NewReader(body), Key: msgID})
				if err != nil {
					sendErrors.Add(1)
					p.printf("send %d failed: %v", n, err)
					continue
				}
				sentMu.Lock()
				sentIDs[msgID] = true
				sentMu.Unlock()
			}
		}()
	}

	report := func(phase string) {
		st := w.store.counts()
		rc := rd.counts()
		qs, _ := mailer.stats(ctx)
		sentMu.Lock()
		sent := len(sentIDs)
		sentMu.Unlock()
		p.printf("%-8s sent %d/%d · accepted by servers %d · read %d · queue %d (%d waiting to retry)",
			phase, sent, cfg.Messages, st.Unique, rc.Unique, qs.Items, qs.Deferred)
	}

	interval := cfg.Duration / time.Duration(cfg.Messages)
	pace := time.NewTicker(max(interval, time.Microsecond))
	status := time.NewTicker(max(cfg.Duration/8, 500*time.Millisecond))
	var scriptErr error
send:
	for n := 1; n <= cfg.Messages; n++ {
		if scriptErr = runSteps(); scriptErr != nil {
			break
		}
		select {
		case <-ctx.Done():
			break send
		case work <- n:
			handed.Add(1)
		}
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				break send
			case <-status.C:
				report("progress")
			case <-pace.C:
				waiting = false
			}
		}
	}
	close(work)
	senders.Wait()
	pace.Stop()
	if scriptErr == nil {
		scriptErr = runSteps() // steps at 100%, if any
	}
	if scriptErr != nil {
		return rep, scriptErr
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	report("sent")

	// Drain: wait until the reader has every message that was sent, or
	// the drain time is up.
	sentMu.Lock()
	want := make(map[string]bool, len(sentIDs))
	for id := range sentIDs {
		want[id] = true
	}
	sentMu.Unlock()
	drain := time.NewTimer(cfg.Drain)
	defer drain.Stop()
	drained := false
wait:
	for ; ; drained = true {
		if missing(want, rd.counts().Seen) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case err := <-watchDone:
			return rep, fmt.Errorf("reader stopped: %w", err)
		case <-drain.C:
			p.printf("drain    gave up after %v", cfg.Drain)
			break wait
		case <-status.C:
			report("draining")
		case <-rd.changed:
		}
	}
	status.Stop()
	if drained {
		report("done")
	}

	shutCtx, cancelShut := context.WithTimeout(ctx, 10*time.Second)
	err = mailer.m.Shutdown(shutCtx)
	cancelShut()
	mailerOpen = false
	if err != nil {
		return rep, fmt.Errorf("mailer shutdown: %w", err)
	}
	stopWatch()
	if err := <-watchDone; err != nil && !errors.Is(err, context.Canceled) {
		return rep, fmt.Errorf("reader: %w", err)
	}

	// The report, from the records.
	st := w.store.counts()
	if st.Err != nil {
		return rep, st.Err
	}
	rc := rd.counts()
	c.mu.Lock()
	defer c.mu.Unlock()
	rep = Report{
		Sent: len(want), SendErrors: int(sendErrors.Load()),
		Delivered: st.Unique, ByHost: st.ByHost, AcceptedTwice: st.AcceptedTwice,
		Attempts: c.attempts, HostFailures: c.hostFailures, BreakerTrips: c.breakerTrips,
		IMAPFailovers: c.failovers, Resyncs: c.resyncs, MailerRestarts: c.restarts,
		Read: rc.Unique, ReadByReplica: rc.ByReplica, ReadTwice: rc.ReadTwice,
		Lost:    missing(want, rc.Seen),
		Events:  events,
		Elapsed: p.since(),
		Metrics: summarize(reg),
	}
	for _, n := range c.tries {
		if n > 1 {
			rep.Retried++
		}
	}
	return rep, printTable(out, w, &rep)
}

// missing counts the Message-IDs of want that seen lacks.
func missing(want map[string]bool, seen map[string]int) int {
	n := 0
	for id := range want {
		if seen[id] == 0 {
			n++
		}
	}
	return n
}

// hostName names a host as the table does: "mx1.example.com" for an
// exchanger ("mx1.example.com [127.0.1.1]:25" in the client's terms), the
// relay's name for a relay.
func hostName(h smtpclient.HostInfo) string { return shortHost(h.Name) }

func shortHost(name string) string {
	name, _, _ = strings.Cut(name, " ")
	return name
}

func shortErr(err error) string {
	if err == nil {
		return "no error"
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// fmtDur rounds d for people: to 10 µs under 10 ms, to the millisecond above.
func fmtDur(d time.Duration) string {
	if d < 10*time.Millisecond {
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func lagNote(lagging bool) string {
	if lagging {
		return " (replica behind: followed until it catches up)"
	}
	return ""
}

// describe tells what the world is before anything happens.
func describe(out io.Writer, w *world, cfg Config, dir string) {
	fmt.Fprintf(out, "hamail HA demo: every server runs in this process, on loopback.\n")
	fmt.Fprintf(out, "  DNS    %s: %s MX 10 mx1, MX 20 mx2, MX 30 mx3\n", w.dns.Addr(), destDomain)
	for _, h := range w.mx {
		fmt.Fprintf(out, "  SMTP   %-16s %-15s at %s, through a fault proxy\n", h.name, h.role, h.dial)
	}
	for _, h := range w.relay {
		fmt.Fprintf(out, "  SMTP   %-16s %-15s at %s\n", h.name, h.role, h.dial)
	}
	for i, r := range w.imap.Replicas() {
		role := "preferred replica"
		if i > 0 {
			role = fmt.Sprintf("replica, %v behind", cfg.ReplicaLag)
		}
		fmt.Fprintf(out, "  IMAP   %-16s %-15s at %s, through a fault proxy\n", r.Name(), role, w.imapProxy[i].Addr())
	}
	fmt.Fprintf(out, "Sending %d messages to %s over %v, %d at a time, through hamail.Mailer:\n"+
		"  - direct delivery to the MX hosts of %s in preference order;\n"+
		"  - relay-1 and relay-2 are fallback relays (Postfix smtp_fallback_relay), used only\n"+
		"    while no exchanger answers;\n"+
		"  - what nobody takes waits in the durable queue and is retried\n"+
		"    (%s);\n"+
		"  - a reader follows the INBOX through imapfailover.\n"+
		"Faults are injected as the stream goes.\n\n",
		cfg.Messages, recipient, cfg.Duration, cfg.Concurrency, destDomain, dir)
}
