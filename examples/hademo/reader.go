package main

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"

	"github.com/hamail/hamail/imapfailover"
)

// reader is the receiving application: it follows the recipient's INBOX
// through imapfailover and records every message it is handed, by
// Message-ID, so that the report can say what was read twice or never.
type reader struct {
	mu        sync.Mutex
	seen      map[string]int // Message-ID → times handed out
	byReplica map[string]int
	changed   chan struct{}

	wire wireCounter
}

func newReader() *reader {
	return &reader{seen: map[string]int{}, byReplica: map[string]int{}, changed: make(chan struct{}, 1)}
}

func (r *reader) handle(_ context.Context, m *imapfailover.Message) error {
	id := ""
	if m.Envelope != nil {
		id = m.Envelope.MessageID
	}
	r.mu.Lock()
	r.seen[id]++
	r.byReplica[m.Replica]++
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return nil
}

// readCounts is a snapshot of what the reader was handed.
type readCounts struct {
	Unique    int
	ReadTwice int // Message-IDs handed out more than once
	ByReplica map[string]int
	Seen      map[string]int
}

func (r *reader) counts() readCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := readCounts{Unique: len(r.seen), ByReplica: map[string]int{}, Seen: map[string]int{}}
	for id, n := range r.seen {
		c.Seen[id] = n
		if n > 1 {
			c.ReadTwice++
		}
	}
	for k, v := range r.byReplica {
		c.ByReplica[k] = v
	}
	return c
}

// wireCounter measures the reader's IMAP traffic on the wire: command
// lines sent (every line the client writes is a command or the DONE that
// ends IDLE, RFC 2177; the reader never sends literals) and bytes received.
type wireCounter struct {
	commands atomic.Int64
	bytesIn  atomic.Int64
	d        net.Dialer
}

type wireSnapshot struct{ Commands, BytesIn int64 }

func (w *wireCounter) snapshot() wireSnapshot {
	return wireSnapshot{w.commands.Load(), w.bytesIn.Load()}
}

func (s wireSnapshot) sub(o wireSnapshot) wireSnapshot {
	return wireSnapshot{s.Commands - o.Commands, s.BytesIn - o.BytesIn}
}

func (w *wireCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := w.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, w: w}, nil
}

type countedConn struct {
	net.Conn
	w *wireCounter
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.bytesIn.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.w.commands.Add(int64(bytes.Count(p[:n], []byte("\n"))))
	return n, err
}
