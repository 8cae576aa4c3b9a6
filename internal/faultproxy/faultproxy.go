package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamail/hamail/internal/loopback"
)

// Mode is what the proxy does with traffic.
type Mode int32

const (
	// Pass forwards traffic in both directions.
	Pass Mode = iota
	// BlackHole accepts and reads, but never forwards or answers.
	BlackHole
	// Reset tears down open and new connections with a TCP RST.
	Reset
	// Refuse stops listening, so new dials are refused.
	Refuse
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case BlackHole:
		return "black-hole"
	case Reset:
		return "reset"
	case Refuse:
		return "refuse"
	default:
		return fmt.Sprintf("Mode(%d)", int32(m))
	}
}

// Options configures a Proxy. A nil *Options or a zero field means the
// documented default.
type Options struct {
	// Mode is the initial mode. Default Pass.
	Mode Mode
	// Latency is the initial added latency per chunk. Default 0.
	Latency time.Duration
	// DialTimeout bounds the dial to the target. Default 5s.
	DialTimeout time.Duration
	// Logger receives connection events at debug level. Nil discards.
	Logger *slog.Logger
}

// ErrClosed is returned by operations on a closed Proxy.
var ErrClosed = errors.New("faultproxy: proxy closed")

// Proxy is a fault-injecting TCP proxy. Create it with Listen or Start.
type Proxy struct {
	target      string
	addr        string
	dialTimeout time.Duration
	log         *slog.Logger

	mode     atomic.Int32
	latency  atomic.Int64
	accepted atomic.Int64

	mu     sync.Mutex
	ln     net.Listener // nil while refusing or closed
	links  map[*link]struct{}
	closed bool
	ctx    context.Context // canceled by Close; bounds dials to the target
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Listen starts a proxy on 127.0.0.1 with a free port that forwards to
// target (host:port). It returns once the proxy is listening.
func Listen(target string, opts *Options) (*Proxy, error) {
	if opts == nil {
		opts = &Options{}
	}
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("faultproxy: bad target %q: %w", target, err)
	}
	p := &Proxy{
		target:      target,
		dialTimeout: opts.DialTimeout,
		log:         opts.Logger,
		links:       make(map[*link]struct{}),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if p.dialTimeout <= 0 {
		p.dialTimeout = 5 * time.Second
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.mode.Store(int32(opts.Mode))
	p.latency.Store(int64(opts.Latency))
	// A port outside the ephemeral range: in Refuse mode the port is
	// free, and no outgoing connection may take it before the proxy
	// listens on it again.
	ln, err := loopback.Listen("tcp", "127.0.0.1")
	if err != nil {
		p.cancel()
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p.addr = ln.Addr().String()
	if opts.Mode == Refuse {
		ln.Close()
		return p, nil
	}
	p.mu.Lock()
	p.serve(ln)
	p.mu.Unlock()
	return p, nil
}

// Start is Listen for tests: it forwards to target in Pass mode, fails the
// test if the proxy cannot start, and closes the proxy at t.Cleanup.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := Listen(target, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// Addr is the proxy's listening address (127.0.0.1:port). It stays the same
// for the proxy's life, including across Refuse.
func (p *Proxy) Addr() string { return p.addr }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Mode returns the current mode.
func (p *Proxy) Mode() Mode { return Mode(p.mode.Load()) }

// Accepted is the number of connections accepted since the proxy started,
// whatever their fate.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Active is the number of connections open through the proxy right now.
func (p *Proxy) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// SetLatency sets the delay added to every chunk forwarded in either
// direction, for open and new connections. Zero removes it.
func (p *Proxy) SetLatency(d time.Duration) {
	if d < 0 {
		d = 0
	}
	p.latency.Store(int64(d))
}

// SetMode switches the mode for open and new connections (see the package
// documentation). It returns an error only when leaving Refuse cannot listen
// on the proxy's address again, or when the proxy is closed.
func (p *Proxy) SetMode(m Mode) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	p.mode.Store(int32(m))
	p.log.Debug("faultproxy mode", "addr", p.addr, "mode", m)
	switch m {
	case Refuse:
		if p.ln != nil {
			p.ln.Close()
			p.ln = nil
		}
		return nil
	case Reset:
		for l := range p.links {
			l.close(true)
		}
	}
	if p.ln == nil {
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			// Stay refusing: that is what a client sees anyway.
			p.mode.Store(int32(Refuse))
			return fmt.Errorf("faultproxy: listen again on %s: %w", p.addr, err)
		}
		p.serve(ln)
	}
	return nil
}

// Close stops listening, closes every connection and waits for the proxy's
// goroutines to end. It is safe to call more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	p.cancel()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for l := range p.links {
		l.close(false)
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// serve runs an accept loop on ln. Called with p.mu held.
func (p *Proxy) serve(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				// The listener was closed by SetMode(Refuse) or Close.
				// A transient accept error on loopback (EMFILE) also ends
				// the loop; the test will see refused dials.
				return
			}
			p.accepted.Add(1)
			p.handle(c.(*net.TCPConn))
		}
	}()
}

// link is one client connection and, unless it was black-holed at accept,
// its connection to the target.
type link struct {
	client, server *net.TCPConn
	done           chan struct{}
	once           sync.Once
}

func (l *link) close(rst bool) {
	l.once.Do(func() {
		close(l.done)
		if rst {
			l.client.SetLinger(0)
			if l.server != nil {
				l.server.SetLinger(0)
			}
		}
		l.client.Close()
		if l.server != nil {
			l.server.Close()
		}
	})
}

func (p *Proxy) handle(c *net.TCPConn) {
	switch p.Mode() {
	case Reset, Refuse:
		// Refuse can race with an accept already under way: treat that
		// connection like a reset, the nearest thing to a refusal.
		c.SetLinger(0)
		c.Close()
		return
	}
	l := &link{client: c, done: make(chan struct{})}
	if !p.track(l) {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer p.untrack(l)
		if p.Mode() == BlackHole {
			// Never reaches the target: read and discard until the
			// client or the proxy gives up.
			io.Copy(io.Discard, c)
			l.close(false)
			return
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.dialTimeout)
		var d net.Dialer
		sc, err := d.DialContext(ctx, "tcp", p.target)
		cancel()
		if err != nil {
			p.log.Debug("faultproxy dial target", "target", p.target, "err", err)
			l.close(true)
			return
		}
		p.mu.Lock()
		select {
		case <-l.done:
			p.mu.Unlock()
			sc.Close()
			return
		default:
		}
		l.server = sc.(*net.TCPConn)
		p.mu.Unlock()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); p.pipe(l, l.server, l.client, false) }()
		p.pipe(l, l.client, l.server, true)
		wg.Done()
		wg.Wait()
		l.close(false)
	}()
}

// track registers l unless the proxy is closed.
func (p *Proxy) track(l *link) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		l.client.Close()
		return false
	}
	p.links[l] = struct{}{}
	return true
}

func (p *Proxy) untrack(l *link) {
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// pipe copies src to dst chunk by chunk, consulting the mode for every
// chunk so that a mode change takes effect on open connections.
func (p *Proxy) pipe(l *link, dst, src *net.TCPConn, fromClient bool) {
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			switch p.Mode() {
			case BlackHole:
				// Discard.
			case Reset:
				l.close(true)
				return
			default:
				if d := time.Duration(p.latency.Load()); d > 0 {
					t := time.NewTimer(d)
					select {
					case <-t.C:
					case <-l.done:
						t.Stop()
						return
					}
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					l.close(false)
					return
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) && p.Mode() == Pass {
				// Half-close: pass the FIN on and let the other
				// direction finish.
				dst.CloseWrite()
				return
			}
			if fromClient || !errors.Is(err, io.EOF) {
				l.close(false)
			}
			// The server's FIN while black-holed is swallowed: a black
			// hole never answers, not even with a close.
			return
		}
	}
}
