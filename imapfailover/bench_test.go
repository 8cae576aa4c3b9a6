//go:build unix

package imapfailover

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/hamail/hamail/internal/imaptest"
	"github.com/hamail/hamail/internal/peers"
)

// countingConn counts the bytes read from the server.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func countingDial(n *atomic.Int64) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{c, n}, nil
	}
}

// fillMaildir writes n messages straight into a maildir, owned by the
// Dovecot mail user, which is much faster than n APPENDs.
func fillMaildir(b testing.TB, dir string, n int) {
	b.Helper()
	st, err := os.Stat(filepath.Dir(dir))
	if err != nil {
		b.Fatal(err)
	}
	uid, gid := ownerOf(st)
	for _, sub := range []string{"", "cur", "new", "tmp"} {
		p := filepath.Join(dir, sub)
		if err := os.MkdirAll(p, 0o700); err != nil {
			b.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			b.Fatal(err)
		}
	}
	base := time.Now().Unix() - int64(n)
	for i := 1; i <= n; i++ {
		name := filepath.Join(dir, "cur", fmt.Sprintf("%d.M%dP1.bench:2,S", base+int64(i), i))
		if err := os.WriteFile(name, testMessage(i), 0o600); err != nil {
			b.Fatal(err)
		}
		if err := os.Chown(name, uid, gid); err != nil {
			b.Fatal(err)
		}
	}
}

func ownerOf(fi os.FileInfo) (int, int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return os.Getuid(), os.Getgid()
}

// naiveFlags is the baseline: connect, SELECT and fetch the flags of every
// message. With fetch false it stops after SELECT, the floor that any
// resync pays.
func naiveFlags(b *testing.B, addr, user, pass string, read *atomic.Int64, fetch bool) int {
	b.Helper()
	conn, err := countingDial(read)(b.Context(), "tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		b.Fatal(err)
	}
	if !fetch {
		return 0
	}
	msgs, err := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true}).Collect()
	if err != nil {
		b.Fatal(err)
	}
	return len(msgs)
}

// BenchmarkResync100k measures one resync after reconnecting to a
// 100,000-message mailbox in which 10 messages arrived and 10 changed
// flags, beside a naive full "UID FETCH 1:* (FLAGS)" in the same run. Run
// with -benchtime=5x; the mailbox is built once. On Dovecot the flags are
// checked with CHANGEDSINCE (CONDSTORE); on imapmemserver, which has no
// CONDSTORE, by fetching the flags of every known message, which is
// O(mailbox) by nature, so that variant also runs without flag tracking to
// show the cost of new messages and expunge checks alone. Connect, log in
// and SELECT alone are timed too, as the floor both pay: on Dovecot a
// SELECT of a large mailbox is a large part of either. Each round is a
// reconnect (the state stays in memory), except in the "restart" variant:
// a new process that loads its state from a FileStore.
func BenchmarkResync100k(b *testing.B) {
	const size = 100_000
	b.Run("dovecot", func(b *testing.B) {
		d := peers.StartDovecot(b, peers.DovecotOptions{})
		fillMaildir(b, d.Maildir, size)
		benchResync(b, d.Addr, d.User, d.Password, func(i int) {
			for j := range 10 {
				d.Append("INBOX", testMessage(size+i*10+j+1))
			}
			c := d.Login()
			defer c.Close()
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				b.Fatal(err)
			}
			var set imap.UIDSet
			for j := range 10 {
				set.AddNum(imap.UID(1 + j*9000 + i))
			}
			if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(); err != nil {
				b.Fatal(err)
			}
		}, true, nil, false)
	})
	b.Run("memserver", func(b *testing.B) {
		s := imaptest.NewSet(b, &imaptest.Options{Replicas: 1})
		for i := 1; i <= size; i++ {
			if _, err := s.Append("INBOX", testMessage(i), nil); err != nil {
				b.Fatal(err)
			}
		}
		change := func(i int) {
			for j := range 10 {
				if _, err := s.Append("INBOX", testMessage(size+i*10+j+1), nil); err != nil {
					b.Fatal(err)
				}
			}
			var set imap.UIDSet
			for j := range 10 {
				set.AddNum(imap.UID(1 + j*9000 + i))
			}
			if err := s.Store("INBOX", set, imap.StoreFlagsAdd, []imap.Flag{imap.FlagFlagged}); err != nil {
				b.Fatal(err)
			}
		}
		addr := s.Replica(0).Addr()
		b.Run("flags", func(b *testing.B) { benchResync(b, addr, s.Username(), s.Password(), change, true, nil, false) })
		b.Run("noflags", func(b *testing.B) { benchResync(b, addr, s.Username(), s.Password(), change, false, nil, false) })
		b.Run("noflags-filestore-restart", func(b *testing.B) {
			benchResync(b, addr, s.Username(), s.Password(), change, false, NewFileStore(b.TempDir()), true)
		})
	})
}

func benchResync(b *testing.B, addr, user, pass string, change func(i int), flags bool, store StateStore, restart bool) {
	var read atomic.Int64
	// Prime: the server indexes the mailbox, and the reader takes stock.
	naiveFlags(b, addr, user, pass, &read, true)
	if store == nil {
		store = &MemoryStore{}
	}
	opts := &MailboxOptions{Store: store}
	if flags {
		opts.OnFlags = func(context.Context, []FlagChange) error { return nil }
	}
	newPool := func() *Pool {
		p, err := New(&Options{
			Replicas:       []Replica{{Name: "r", Addr: addr, TLS: TLSNone, Username: user, Password: pass}},
			Dial:           countingDial(&read),
			CommandTimeout: time.Minute,
		})
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	p := newPool()
	mb := p.Mailbox("INBOX", opts)
	if _, err := mb.Sync(b.Context(), func(context.Context, *Message) error { return nil }); err != nil {
		b.Fatal(err)
	}
	defer func() { p.Close() }()

	var resyncBytes, naiveBytes int64
	var resyncTime, naiveTime, selectTime time.Duration
	round := 0
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		round++
		change(round)
		if restart {
			// A new process: a new pool and mailbox, the state loaded
			// from the store.
			p.Close()
			p = newPool()
			mb = p.Mailbox("INBOX", opts)
		} else {
			// A reconnect: the connection is gone, the state is in memory.
			for p.evictIdle() {
			}
		}
		read.Store(0)
		b.StartTimer()
		start := time.Now()
		rep, err := mb.Sync(b.Context(), func(context.Context, *Message) error { return nil })
		resyncTime += time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		resyncBytes += read.Load()
		if rep.Delivered != 10 || (flags && rep.FlagChanges != 10) {
			b.Fatalf("resync found %+v", rep)
		}
		read.Store(0)
		start = time.Now()
		naiveFlags(b, addr, user, pass, &read, true)
		naiveTime += time.Since(start)
		naiveBytes += read.Load()
		start = time.Now()
		naiveFlags(b, addr, user, pass, &read, false)
		selectTime += time.Since(start)
		b.StartTimer()
	}
	n := float64(round)
	b.ReportMetric(float64(resyncBytes)/n, "resync-B/op")
	b.ReportMetric(float64(naiveBytes)/n, "naive-B/op")
	b.ReportMetric(float64(naiveBytes)/float64(resyncBytes), "bytes-ratio")
	b.ReportMetric(float64(naiveTime)/float64(resyncTime), "time-ratio")
	// Connect, log in and SELECT alone: the part of both that does not
	// depend on the changes.
	b.ReportMetric(float64(resyncTime)/float64(selectTime), "resync/select-ratio")
	b.ReportMetric(float64(naiveTime)/float64(selectTime), "naive/select-ratio")
	b.Log("resync", time.Duration(float64(resyncTime)/n), strconv.FormatInt(resyncBytes/int64(round), 10), "B; naive full flags fetch",
		time.Duration(float64(naiveTime)/n), naiveBytes/int64(round), "B; connect+SELECT only", time.Duration(float64(selectTime)/n))
}

// BenchmarkStateStore measures making one handled message durable in the
// state of a 100,000-message mailbox: a journal record against rewriting
// the whole state, the cost each message paid before journals; and
// loading that state, which a process pays once when it starts.
func BenchmarkStateStore(b *testing.B) {
	const size = 100_000
	st := &MailboxState{Mailbox: "INBOX", UIDValidity: 1, LastUID: size, Messages: make(map[imap.UID]KnownMessage, size)}
	for uid := imap.UID(1); uid <= size; uid++ {
		st.Messages[uid] = KnownMessage{Fingerprint: uint64(uid) * 0x9e3779b97f4a7c15}
	}
	ctx := b.Context()
	for _, tc := range []struct {
		name  string
		store func() StateStore
	}{
		{"file", func() StateStore { return NewFileStore(b.TempDir()) }},
		{"memory", func() StateStore { return &MemoryStore{} }},
	} {
		b.Run(tc.name+"/save", func(b *testing.B) {
			s := tc.store()
			cur := st.Clone()
			uid := cur.LastUID
			for b.Loop() {
				uid++
				cur.Apply(StateChange{UIDValidity: 1, LastUID: uid, Set: map[imap.UID]KnownMessage{uid: KnownMessage{Fingerprint: uint64(uid)}}})
				if err := s.Save(ctx, "INBOX", cur); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/load", func(b *testing.B) {
			s := tc.store()
			if err := s.Save(ctx, "INBOX", st); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if got, err := s.Load(ctx, "INBOX"); err != nil || len(got.Messages) != size {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/record", func(b *testing.B) {
			s := tc.store()
			if err := s.Save(ctx, "INBOX", st); err != nil {
				b.Fatal(err)
			}
			j := s.(StateJournal)
			uid := st.LastUID
			for b.Loop() {
				uid++
				if err := j.Record(ctx, "INBOX", StateChange{UIDValidity: 1, LastUID: uid, Set: map[imap.UID]KnownMessage{uid: KnownMessage{Fingerprint: uint64(uid)}}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
