package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hamail/hamail/imapfailover"
	"github.com/hamail/hamail/internal/imaptest"
	"github.com/hamail/hamail/internal/smtptest"
)

// mailStore is the destination's local delivery. It takes every message an
// SMTP server of the demo accepted (answered 2xx after the final dot) and
// stores it in the recipient's INBOX: on imap1 at once, on imap2 after the
// replication lag and in the same order, so that both replicas give it the
// same UID, as replicating mail stores (Dovecot's dsync) do.
//
// A message accepted twice (the Mailer's queue delivers at least once: a
// connection lost after the final dot leaves it not knowing whether the
// server took the message, RFC 5321 §4.5.3.2.6, so it sends it again) is
// stored once, the way a mail store that suppresses duplicates by
// Message-ID would; the duplicate acceptance is counted, not hidden.
type mailStore struct {
	set *imaptest.Set
	lag time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	toSync chan pendingCopy // to imap2, in imap1's order

	mu         sync.Mutex
	accepts    map[string][]string // Message-ID → hosts that accepted it, in order
	byHost     map[string]int      // messages each host accepted first
	unanswered int                 // dropped after the dot without a reply
	stored     int                 // stored on imap1
	err        error               // first storage failure
}

type pendingCopy struct {
	body []byte
	at   time.Time // when it was stored on imap1
}

func newMailStore(set *imaptest.Set, lag time.Duration) *mailStore {
	ctx, cancel := context.WithCancel(context.Background())
	s := &mailStore{set: set, lag: lag, ctx: ctx, cancel: cancel, toSync: make(chan pendingCopy, 1<<16),
		accepts: map[string][]string{}, byHost: map[string]int{}}
	s.wg.Add(1)
	go s.replicate()
	return s
}

// collect follows what h's server records, until stop.
func (s *mailStore) collect(h *smtpHost) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		seen := 0
		for {
			if _, err := h.srv.Wait(s.ctx, func(st smtptest.Stats) bool { return st.Messages > seen }); err != nil {
				return
			}
			msgs := h.srv.Messages()
			for _, m := range msgs[seen:] {
				s.accept(h.name, m)
			}
			seen = len(msgs)
		}
	}()
}

func (s *mailStore) accept(host string, m smtptest.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.Unanswered || m.Reply.Code/100 != 2 {
		// The server never said it took responsibility (RFC 5321
		// §4.5.3.2.6): like a server that crashed before its queue
		// file was safe, it drops the message; the sender retries.
		s.unanswered++
		return
	}
	id, ok, err := imapfailover.MessageID(m.Body)
	if !ok || err != nil {
		s.fail(fmt.Errorf("%s accepted a message without a usable Message-ID: %v", host, err))
		return
	}
	s.accepts[id] = append(s.accepts[id], host)
	if len(s.accepts[id]) > 1 {
		return
	}
	s.byHost[host]++
	// Holding s.mu keeps imap1's order equal to the order of toSync.
	if _, err := s.set.Append("INBOX", m.Body, nil, 0); err != nil {
		s.fail(fmt.Errorf("store on imap1: %w", err))
		return
	}
	s.stored++
	s.toSync <- pendingCopy{body: m.Body, at: time.Now()}
}

func (s *mailStore) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

// replicate copies to imap2 what imap1 received, lag later.
func (s *mailStore) replicate() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case c := <-s.toSync:
			if d := time.Until(c.at.Add(s.lag)); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-s.ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			if _, err := s.set.Append("INBOX", c.body, nil, 1); err != nil {
				s.mu.Lock()
				s.fail(fmt.Errorf("replicate to imap2: %w", err))
				s.mu.Unlock()
			}
		}
	}
}

func (s *mailStore) stop() {
	s.cancel()
	s.wg.Wait()
}

// storeCounts is a snapshot of what the SMTP servers accepted.
type storeCounts struct {
	Unique        int            // distinct Message-IDs accepted
	ByHost        map[string]int // first acceptance per host
	AcceptedTwice int            // acceptances after the first of a Message-ID
	Unanswered    int
	Stored        int
	Err           error
}

func (s *mailStore) counts() storeCounts {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := storeCounts{Unique: len(s.accepts), ByHost: map[string]int{}, Unanswered: s.unanswered,
		Stored: s.stored, Err: s.err}
	for h, n := range s.byHost {
		c.ByHost[h] = n
	}
	for _, hosts := range s.accepts {
		c.AcceptedTwice += len(hosts) - 1
	}
	return c
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
