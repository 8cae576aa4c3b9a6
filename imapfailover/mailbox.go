package imapfailover

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// MailboxOptions configure a Mailbox. A nil pointer or zero field means
// the default stated on the field.
type MailboxOptions struct {
	// Store keeps the mailbox state; default a new MemoryStore, which
	// survives failovers but not a restart of the process.
	Store StateStore
	// StateKey is the key in Store; default the mailbox name.
	StateKey string
	// DeliverExisting hands the messages already in the mailbox at the
	// very first sync to the handler. By default they are recorded as
	// handled and only later arrivals are delivered.
	DeliverExisting bool
	// Sections are body sections fetched with each delivered message (see
	// Message.Section). They are always fetched with PEEK, so \Seen is not
	// set. Default none: envelope, flags, size and internal date only.
	Sections []*imap.FetchItemBodySection
	// OnFlags, when set, receives flag changes found by a resync, and flags
	// are remembered per message. When nil, flags are not tracked, which
	// saves a flags fetch of the whole mailbox on servers without
	// CONDSTORE.
	OnFlags func(ctx context.Context, changes []FlagChange) error
	// OnExpunge, when set, receives the UIDs of handled messages that were
	// expunged.
	OnExpunge func(ctx context.Context, uidValidity uint32, uids []imap.UID) error
}

// FlagChange is the new flag list of one known message.
type FlagChange struct {
	UID   imap.UID
	Flags []imap.Flag
}

// Message is a newly arrived message handed to a Handler.
type Message struct {
	UID          imap.UID
	UIDValidity  uint32
	Replica      string // the replica it was read from
	Flags        []imap.Flag
	Size         int64
	InternalDate time.Time
	Envelope     *imap.Envelope
	Sections     []imapclient.FetchBodySectionBuffer
}

// Section returns the bytes of a section requested in
// MailboxOptions.Sections, or nil.
func (m *Message) Section(s *imap.FetchItemBodySection) []byte {
	buf := imapclient.FetchMessageBuffer{BodySection: m.Sections}
	q := *s
	q.Peek = false // the server answers without PEEK
	return buf.FindBodySection(&q)
}

// Handler handles one new message. When it returns nil the message is
// recorded as handled (and saved) before the next one; when it returns an
// error, Sync and Watch stop and return it, and the message is handed out
// again by the next Sync or Watch.
type Handler func(ctx context.Context, msg *Message) error

// SyncReport says what one resync found.
type SyncReport struct {
	Replica            string
	UIDValidity        uint32
	UIDValidityChanged bool
	Delivered          int        // messages handed to the handler
	Remapped           int        // known messages found again under new UIDs
	Expunged           []imap.UID // known messages gone (UIDs of the current UIDVALIDITY); not those found again under a new UID
	FlagChanges        int
	// FlagCheck says how flags were checked: "changedsince" (CONDSTORE,
	// cost follows the changes), "full" (a flags fetch of every known
	// message) or "" (not checked: flags not tracked, or no change by
	// HIGHESTMODSEQ).
	FlagCheck string
	// Lagging: the replica lacks messages already handled (UIDNEXT not
	// above the last handled UID); nothing was trusted from it.
	Lagging bool
}

// Mailbox reads one mailbox through a Pool. Its methods may be called from
// several goroutines but run one at a time.
type Mailbox struct {
	pool *Pool
	name string
	opts MailboxOptions

	mu sync.Mutex // one Sync or Watch at a time
	st *MailboxState
	// Guarded by mu:
	moved    failTracker   // replica left after a failure, for Hooks.Failover
	userTime time.Duration // time in the caller's callbacks during a resync
	// unsaved: a change is in st but its record or save failed; the next
	// write saves the whole state, since a record holds only its own
	// change.
	unsaved bool
}

// Mailbox returns a handle on the named mailbox. It does no I/O.
func (p *Pool) Mailbox(name string, opts *MailboxOptions) *Mailbox {
	var o MailboxOptions
	if opts != nil {
		o = *opts
	}
	if o.Store == nil {
		o.Store = &MemoryStore{}
	}
	if o.StateKey == "" {
		o.StateKey = name
	}
	for i, s := range o.Sections {
		c := *s
		c.Peek = true
		o.Sections[i] = &c
	}
	return &Mailbox{pool: p, name: name, opts: o}
}

// Name returns the mailbox name.
func (m *Mailbox) Name() string { return m.name }

// State returns the state as last saved in the StateStore, or nil before
// the first sync. It does not wait for a running Watch.
func (m *Mailbox) State(ctx context.Context) (*MailboxState, error) {
	return m.opts.Store.Load(ctx, m.opts.StateKey)
}

// handlerError marks an error returned by the caller's code, which must
// stop Watch rather than cause a failover.
type handlerError struct{ err error }

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

// Sync connects to a healthy replica, resynchronises the mailbox and hands
// new messages to h. When the best replica reachable is lagging it is
// used only if no other replica is usable.
func (m *Mailbox) Sync(ctx context.Context, h Handler) (*SyncReport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var rep *SyncReport
	err := m.onReplica(ctx, func(c *Conn) (bool, error) {
		var err error
		r, err := m.observedResync(ctx, c, h)
		if err != nil {
			return false, err
		}
		rep = r
		return r.Lagging, nil
	})
	return rep, unwrapHandler(err)
}

func unwrapHandler(err error) error {
	var he *handlerError
	if errors.As(err, &he) {
		return he.err
	}
	return err
}

// onReplica runs fn on connections to the replicas in order until one
// succeeds without lagging. fn returns lagging=true to ask for a better
// replica; if none is better the last lagging result stands. Caller or
// handler errors stop at once.
func (m *Mailbox) onReplica(ctx context.Context, fn func(c *Conn) (lagging bool, err error)) error {
	p := m.pool
	var last error
	var laggingOn string
	for _, rs := range p.order() {
		c, err := p.get(ctx, rs)
		if err != nil {
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				return err
			}
			p.reportFailure(rs, err)
			m.moved.failed(rs.name, err)
			last = err
			continue
		}
		lagging, err := fn(c)
		if err == nil {
			p.reportSuccess(rs)
			p.put(c)
			if lagging {
				if laggingOn == "" {
					laggingOn = rs.name
				}
				continue
			}
			m.moved.served(&p.opts.Hooks, rs.name)
			return nil
		}
		var he *handlerError
		if errors.As(err, &he) || !c.Broken() {
			if c.Broken() {
				p.discard(c)
			} else {
				p.put(c)
			}
			return err
		}
		p.discard(c)
		if ctx.Err() != nil {
			return err
		}
		p.reportFailure(rs, err)
		m.moved.failed(rs.name, err)
		last = err
	}
	if laggingOn != "" {
		m.moved.served(&p.opts.Hooks, laggingOn)
		return nil
	}
	if last == nil {
		last = errors.New("no replica tried")
	}
	return &Error{Op: "sync", Err: fmt.Errorf("%w: %w", ErrNoReplica, last)}
}

// fingerprint identifies a message across UIDVALIDITY changes.
func fingerprint(env *imap.Envelope, size int64) uint64 {
	h := fnv.New64a()
	if env != nil && env.MessageID != "" {
		h.Write([]byte("id\x00"))
		h.Write([]byte(env.MessageID))
		return h.Sum64()
	}
	h.Write([]byte("nf\x00"))
	if env != nil {
		h.Write([]byte(strconv.FormatInt(env.Date.Unix(), 10)))
		for _, a := range env.From {
			h.Write([]byte{0})
			h.Write([]byte(a.Addr()))
		}
		h.Write([]byte{0})
		h.Write([]byte(env.Subject))
	}
	h.Write([]byte{0})
	h.Write([]byte(strconv.FormatInt(size, 10)))
	return h.Sum64()
}

// normFlags sorts flags and drops \Recent, which belongs to a session.
func normFlags(fl []imap.Flag) []imap.Flag {
	out := make([]imap.Flag, 0, len(fl))
	for _, f := range fl {
		if f != "\\Recent" {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out
}

type ident struct {
	uid   imap.UID
	fp    uint64
	flags []imap.Flag
}

// fetchIdents fetches what identifies the messages in uids.
func (m *Mailbox) fetchIdents(ctx context.Context, c *Conn, uids imap.UIDSet, flags bool) ([]ident, error) {
	var out []ident
	err := c.Exec(ctx, "fetch", func(cl *imapclient.Client) error {
		cmd := cl.Fetch(uids, &imap.FetchOptions{UID: true, Envelope: true, RFC822Size: true, Flags: flags})
		defer cmd.Close()
		for {
			msg := cmd.Next()
			if msg == nil {
				break
			}
			b, err := msg.Collect()
			if err != nil {
				return err
			}
			if b.UID == 0 {
				continue
			}
			id := ident{uid: b.UID, fp: fingerprint(b.Envelope, b.RFC822Size)}
			if flags {
				id.flags = normFlags(b.Flags)
			}
			out = append(out, id)
		}
		return cmd.Close()
	})
	slices.SortFunc(out, func(a, b ident) int { return int(a.uid) - int(b.uid) })
	return out, err
}

func (m *Mailbox) load(ctx context.Context) error {
	if m.st != nil {
		return nil
	}
	st, err := m.opts.Store.Load(ctx, m.opts.StateKey)
	if err != nil {
		return err
	}
	if st == nil {
		st = &MailboxState{Mailbox: m.name}
	}
	if st.Messages == nil {
		st.Messages = make(map[imap.UID]KnownMessage)
	}
	if st.ModSeq == nil {
		st.ModSeq = make(map[string]uint64)
	}
	m.st = st
	return nil
}

func (m *Mailbox) save(ctx context.Context) error {
	if err := m.opts.Store.Save(ctx, m.opts.StateKey, m.st); err != nil {
		m.unsaved = true
		return err
	}
	m.unsaved = false
	return nil
}

// record makes one change to the state durable, already applied to m.st:
// as a record when the store keeps a journal, otherwise by saving all.
// After a record failed it saves all, so that the failed change is not
// left out of the stored state.
func (m *Mailbox) record(ctx context.Context, ch StateChange) error {
	if j, ok := m.opts.Store.(StateJournal); ok && !m.unsaved {
		if err := j.Record(ctx, m.opts.StateKey, ch); err != nil {
			m.unsaved = true
			return err
		}
		return nil
	}
	return m.save(ctx)
}

// observedResync runs resync and reports it to Hooks.Resynced.
func (m *Mailbox) observedResync(ctx context.Context, c *Conn, h Handler) (*SyncReport, error) {
	now := m.pool.opts.Now
	start := now()
	m.userTime = 0
	rep, err := m.resync(ctx, c, h)
	if err == nil && m.pool.opts.Hooks.Resynced != nil {
		r := *rep
		m.pool.opts.Hooks.Resynced(m.name, c.Replica(), now().Sub(start)-m.userTime, &r)
	}
	return rep, err
}

// user runs a caller's callback, accounting its time apart from the
// resync's own.
func (m *Mailbox) user(fn func() error) error {
	start := m.pool.opts.Now()
	err := fn()
	m.userTime += m.pool.opts.Now().Sub(start)
	return err
}

// resync brings the state up to date from the replica behind c and
// delivers new messages (RFC 4549 §4.3 without QRESYNC: go-imap v2 cannot
// enable it). Every UID range it sends is explicit (no "*"), because
// "UID FETCH n:*" answers with the last message when n is above it
// (RFC 3501 §6.4.8), and go-imap would hand that message to the
// unsolicited-data handler.
func (m *Mailbox) resync(ctx context.Context, c *Conn, h Handler) (*SyncReport, error) {
	if err := m.load(ctx); err != nil {
		return nil, &handlerError{err}
	}
	st := m.st
	c.dirty.Store(false)
	sel, err := c.Select(ctx, m.name, true)
	if err != nil {
		return nil, err
	}
	if sel.UIDValidity == 0 || sel.UIDNext == 0 {
		return nil, &Error{Replica: c.Replica(), Op: "select", Err: errors.New("server sent no UIDVALIDITY or UIDNEXT")}
	}
	rep := &SyncReport{Replica: c.Replica(), UIDValidity: sel.UIDValidity}
	next := sel.UIDNext
	condstore := c.caps.Has(imap.CapCondStore) && sel.HighestModSeq > 0
	track := m.opts.OnFlags != nil
	all := func() imap.UIDSet { return imap.UIDSet{imap.UIDRange{Start: 1, Stop: next - 1}} }

	switch {
	case st.UIDValidity == 0:
		// First sync: take stock of what is there.
		var ids []ident
		if next > 1 && sel.NumMessages > 0 {
			if ids, err = m.fetchIdents(ctx, c, all(), track); err != nil {
				return nil, err
			}
		}
		st.UIDValidity = sel.UIDValidity
		clear(st.ModSeq)
		var pending []imap.UID
		for _, id := range ids {
			if m.opts.DeliverExisting {
				pending = append(pending, id.uid)
			} else {
				st.Messages[id.uid] = KnownMessage{Fingerprint: id.fp, Flags: id.flags}
			}
		}
		if !m.opts.DeliverExisting {
			st.LastUID = next - 1
		}
		if condstore {
			st.ModSeq[c.Replica()] = sel.HighestModSeq
		}
		if err := m.save(ctx); err != nil {
			return nil, &handlerError{err}
		}
		return rep, m.deliver(ctx, c, h, rep, pending, next)

	case st.UIDValidity != sel.UIDValidity:
		return rep, m.remap(ctx, c, h, rep, sel, track, condstore)
	}

	if next <= st.LastUID {
		// The replica does not have the last handled message yet: its
		// missing messages may be unreplicated, not expunged.
		rep.Lagging = true
		return rep, nil
	}

	// New messages: explicit range above the last handled UID.
	var fresh []ident
	if next > st.LastUID+1 {
		if fresh, err = m.fetchIdents(ctx, c, imap.UIDSet{imap.UIDRange{Start: st.LastUID + 1, Stop: next - 1}}, track); err != nil {
			return nil, err
		}
		fresh = slices.DeleteFunc(fresh, func(id ident) bool { return id.uid <= st.LastUID || id.uid >= next })
	}
	unknown := 0
	for _, id := range fresh {
		if _, ok := st.Messages[id.uid]; !ok {
			unknown++
		}
	}

	// Expunges: every known message still there means the message count
	// is the known count plus the unknown new ones; only otherwise ask the
	// server which UIDs exist (ESEARCH gives a compact answer, RFC 4731).
	var gone []imap.UID
	if int(sel.NumMessages)-unknown != len(st.Messages) && len(st.Messages) > 0 {
		var exist imap.UIDSet
		err := c.Exec(ctx, "search", func(cl *imapclient.Client) error {
			opts := &imap.SearchOptions{}
			if c.caps.Has(imap.CapESearch) {
				opts.ReturnAll = true
			}
			data, err := cl.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{all()}}, opts).Wait()
			if err != nil {
				return err
			}
			if s, ok := data.All.(imap.UIDSet); ok {
				exist = s
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for uid := range st.Messages {
			if !exist.Contains(uid) {
				gone = append(gone, uid)
			}
		}
		slices.Sort(gone)
	}

	// Every command is done before the state changes: a connection that
	// breaks half-way must leave the state as it was, or the changes seen
	// so far would never be reported.
	//
	// Flags: CHANGEDSINCE this replica's last mod-sequence (RFC 7162
	// §3.1.4), otherwise the flags of every known message.
	var changes []FlagChange
	var flagged map[imap.UID][]imap.Flag
	if track && len(st.Messages) > 0 {
		var since uint64
		if condstore {
			since = st.ModSeq[c.Replica()]
		}
		if since > sel.HighestModSeq {
			// Mod-sequences only grow (RFC 7162 §2): this replica was
			// restored or rebuilt, and what changed since is unknown.
			// Check every flag.
			since = 0
		}
		if !(condstore && since == sel.HighestModSeq) {
			rep.FlagCheck = "full"
			if since > 0 {
				rep.FlagCheck = "changedsince"
			}
			changes, flagged, err = m.flagChanges(ctx, c, since, next)
			if err != nil {
				return nil, err
			}
		}
	}

	// A message that disappeared and reappears under a new UID in the same
	// resync (a replica renumbering after a UID conflict) is the same
	// message, not a new one.
	// So is a message handled before a UIDVALIDITY remap that did not find
	// it, arriving now that this replica caught up.
	// All changes to the state go into one StateChange, recorded as a
	// whole.
	change := StateChange{UIDValidity: st.UIDValidity, Set: map[imap.UID]KnownMessage{}}
	goneFP := map[uint64]int{}
	for _, uid := range gone {
		goneFP[st.Messages[uid].Fingerprint]++
	}
	missing := slices.Clone(st.Missing)
	var pending []imap.UID
	for _, id := range fresh {
		if _, ok := st.Messages[id.uid]; ok {
			continue
		}
		if goneFP[id.fp] > 0 {
			goneFP[id.fp]--
			change.Set[id.uid] = KnownMessage{Fingerprint: id.fp, Flags: id.flags}
			rep.Remapped++
			continue
		}
		if i := slices.Index(missing, id.fp); i >= 0 {
			missing = slices.Delete(missing, i, i+1)
			change.Found = append(change.Found, id.fp)
			change.Set[id.uid] = KnownMessage{Fingerprint: id.fp, Flags: id.flags}
			rep.Remapped++
			continue
		}
		pending = append(pending, id.uid)
	}
	// A renumbered message is not gone: report only the others.
	renumbered := map[uint64]int{}
	for _, uid := range gone {
		renumbered[st.Messages[uid].Fingerprint]++
	}
	for fp, n := range goneFP {
		renumbered[fp] -= n
	}
	var expunged []imap.UID
	for _, uid := range gone {
		fp := st.Messages[uid].Fingerprint
		if renumbered[fp] > 0 {
			renumbered[fp]--
		} else {
			expunged = append(expunged, uid)
		}
		change.Forget = append(change.Forget, uid)
	}
	gone = expunged
	rep.Expunged = gone
	for uid, fl := range flagged {
		k := st.Messages[uid]
		k.Flags = fl
		change.Set[uid] = k
	}
	rep.FlagChanges = len(changes)
	if condstore && st.ModSeq[c.Replica()] != sel.HighestModSeq {
		change.Replica, change.ModSeq = c.Replica(), sel.HighestModSeq
	}
	// One record, as large as the changes: the cost of a resync follows
	// what changed, not the size of the mailbox.
	if len(change.Set) > 0 || len(change.Forget) > 0 || change.Replica != "" {
		st.Apply(change)
		if err := m.record(ctx, change); err != nil {
			return nil, &handlerError{err}
		}
	}
	if len(gone) > 0 && m.opts.OnExpunge != nil {
		if err := m.user(func() error { return m.opts.OnExpunge(ctx, st.UIDValidity, gone) }); err != nil {
			return nil, &handlerError{err}
		}
	}
	if len(changes) > 0 {
		if err := m.user(func() error { return m.opts.OnFlags(ctx, changes) }); err != nil {
			return nil, &handlerError{err}
		}
	}
	return rep, m.deliver(ctx, c, h, rep, pending, next)
}

// flagChanges fetches the flags of known messages (changed since modseq
// when it is not zero). It returns those that differ from what is stored,
// and the new flag lists to store (the changes, and messages whose flags
// were not known yet); the caller applies them once every command of the
// resync succeeded.
func (m *Mailbox) flagChanges(ctx context.Context, c *Conn, since uint64, next imap.UID) ([]FlagChange, map[imap.UID][]imap.Flag, error) {
	st := m.st
	var changes []FlagChange
	flagged := map[imap.UID][]imap.Flag{}
	err := c.Exec(ctx, "fetch flags", func(cl *imapclient.Client) error {
		opts := &imap.FetchOptions{UID: true, Flags: true, ChangedSince: since}
		cmd := cl.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: next - 1}}, opts)
		defer cmd.Close()
		for {
			msg := cmd.Next()
			if msg == nil {
				break
			}
			b, err := msg.Collect()
			if err != nil {
				return err
			}
			k, ok := st.Messages[b.UID]
			if !ok {
				continue
			}
			fl := normFlags(b.Flags)
			if k.Flags != nil && slices.Equal(fl, k.Flags) {
				continue
			}
			flagged[b.UID] = fl
			if k.Flags != nil {
				changes = append(changes, FlagChange{UID: b.UID, Flags: fl})
			}
		}
		return cmd.Close()
	})
	if err != nil {
		return nil, nil, err
	}
	slices.SortFunc(changes, func(a, b FlagChange) int { return int(a.UID) - int(b.UID) })
	return changes, flagged, nil
}

// remap handles a new UIDVALIDITY: the known messages are found again by
// fingerprint under their new UIDs, and only the others are delivered.
// Known messages not found are remembered in Missing: this replica may lag
// behind the one they were handled on, and they must not be handed out
// again when it, or the replica that has them, is used later.
func (m *Mailbox) remap(ctx context.Context, c *Conn, h Handler, rep *SyncReport, sel *imap.SelectData, track, condstore bool) error {
	st := m.st
	next := sel.UIDNext
	var ids []ident
	if next > 1 && sel.NumMessages > 0 {
		var err error
		ids, err = m.fetchIdents(ctx, c, imap.UIDSet{imap.UIDRange{Start: 1, Stop: next - 1}}, track)
		if err != nil {
			return err
		}
	}
	oldFP := map[uint64]int{}
	for _, k := range st.Messages {
		oldFP[k.Fingerprint]++
	}
	for _, fp := range st.Missing {
		oldFP[fp]++
	}
	known := make(map[imap.UID]KnownMessage, len(ids))
	var pending []imap.UID
	for _, id := range ids {
		if oldFP[id.fp] > 0 {
			oldFP[id.fp]--
			known[id.uid] = KnownMessage{Fingerprint: id.fp, Flags: id.flags}
			rep.Remapped++
			continue
		}
		pending = append(pending, id.uid)
	}
	// What was not found stays missing: the older entries first, then the
	// known messages by old UID.
	var missing []uint64
	for _, fp := range st.Missing {
		if oldFP[fp] > 0 {
			oldFP[fp]--
			missing = append(missing, fp)
		}
	}
	for _, uid := range slices.Sorted(maps.Keys(st.Messages)) {
		if fp := st.Messages[uid].Fingerprint; oldFP[fp] > 0 {
			oldFP[fp]--
			missing = append(missing, fp)
		}
	}
	if n := len(missing) - maxMissing; n > 0 {
		missing = missing[n:]
	}
	m.pool.opts.Logger.Info("imap UIDVALIDITY changed", "mailbox", m.name, "replica", c.Replica(),
		"old", st.UIDValidity, "new", sel.UIDValidity, "remapped", rep.Remapped, "new_messages", len(pending))
	rep.UIDValidityChanged = true
	st.UIDValidity = sel.UIDValidity
	st.Messages = known
	st.Missing = missing
	clear(st.ModSeq)
	if condstore {
		st.ModSeq[c.Replica()] = sel.HighestModSeq
	}
	// Delivery goes up by UID and skips known ones, so LastUID must sit
	// just below the first message still to deliver.
	if len(pending) > 0 {
		st.LastUID = pending[0] - 1
	} else {
		st.LastUID = next - 1
	}
	if err := m.save(ctx); err != nil {
		return &handlerError{err}
	}
	return m.deliver(ctx, c, h, rep, pending, next)
}

// deliverBatch bounds how many messages are held in memory at once.
const deliverBatch = 64

// deliver fetches the pending messages in UID order and hands each to h,
// saving the state after each one. When all are handled, LastUID moves up
// to next-1: every UID below UIDNEXT was handled or is gone.
func (m *Mailbox) deliver(ctx context.Context, c *Conn, h Handler, rep *SyncReport, pending []imap.UID, next imap.UID) error {
	st := m.st
	slices.Sort(pending)
	for len(pending) > 0 {
		n := min(len(pending), deliverBatch)
		batch := pending[:n]
		pending = pending[n:]
		var set imap.UIDSet
		for _, uid := range batch {
			set.AddNum(uid)
		}
		var bufs []*imapclient.FetchMessageBuffer
		err := c.Exec(ctx, "fetch", func(cl *imapclient.Client) error {
			var err error
			bufs, err = cl.Fetch(set, &imap.FetchOptions{
				UID: true, Flags: true, Envelope: true, RFC822Size: true, InternalDate: true,
				BodySection: m.opts.Sections,
			}).Collect()
			return err
		})
		if err != nil {
			return err
		}
		slices.SortFunc(bufs, func(a, b *imapclient.FetchMessageBuffer) int { return int(a.UID) - int(b.UID) })
		for _, b := range bufs {
			if b.UID <= st.LastUID && !slices.Contains(batch, b.UID) {
				continue
			}
			if _, ok := st.Messages[b.UID]; ok {
				continue
			}
			msg := &Message{
				UID: b.UID, UIDValidity: st.UIDValidity, Replica: c.Replica(),
				Flags: normFlags(b.Flags), Size: b.RFC822Size, InternalDate: b.InternalDate,
				Envelope: b.Envelope, Sections: b.BodySection,
			}
			if err := m.user(func() error { return h(ctx, msg) }); err != nil {
				return &handlerError{err}
			}
			k := KnownMessage{Fingerprint: fingerprint(b.Envelope, b.RFC822Size)}
			if m.opts.OnFlags != nil {
				k.Flags = msg.Flags
			}
			st.Messages[b.UID] = k
			if b.UID > st.LastUID {
				st.LastUID = b.UID
			}
			rep.Delivered++
			ch := StateChange{UIDValidity: st.UIDValidity, LastUID: st.LastUID, Set: map[imap.UID]KnownMessage{b.UID: k}}
			if err := m.record(ctx, ch); err != nil {
				return &handlerError{err}
			}
		}
	}
	if next-1 > st.LastUID {
		st.LastUID = next - 1
		if err := m.record(ctx, StateChange{UIDValidity: st.UIDValidity, LastUID: st.LastUID}); err != nil {
			return &handlerError{err}
		}
	}
	return nil
}
