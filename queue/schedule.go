package queue

import (
	"math/rand/v2"
	"time"
)

// Schedule decides when a message is tried again and when it is given up.
// Implementations must be safe for concurrent use.
type Schedule interface {
	// Next returns when to try again an item created at created after an
	// attempt that failed at now; ok is false when its lifetime is over
	// and the pending recipients are to be given up. The time returned is
	// never after the end of the lifetime, so the last attempt happens at
	// that end.
	Next(created, now time.Time) (next time.Time, ok bool)
	// Lifetime is how long an item may stay queued.
	Lifetime() time.Duration
	// DelayWarning is the age after which a delay notice (RFC 3464
	// Action: delayed) is sent for recipients still pending; 0 for none.
	DelayWarning() time.Duration
}

// Retry is the default Schedule, modelled on Postfix's queue manager: the
// wait before the next attempt is the message's age, clamped between
// MinBackoff and MaxBackoff (so the waits about double until they reach
// the maximum), with random jitter so that messages queued together do
// not retry together. The zero value holds Postfix's defaults.
type Retry struct {
	// MinBackoff is the shortest wait; 0 means 5 minutes (Postfix
	// minimal_backoff_time 300s).
	MinBackoff time.Duration
	// MaxBackoff is the longest wait; 0 means 4000 s, about 67 minutes
	// (maximal_backoff_time).
	MaxBackoff time.Duration
	// MaxLifetime is how long an item may be queued; 0 means 5 days
	// (maximal_queue_lifetime).
	MaxLifetime time.Duration
	// Jitter is the largest fraction by which a wait is randomly
	// shortened or lengthened; 0 means 0.1, negative means none.
	Jitter float64
	// Warn is the age after which a delay notice is sent; 0 means none,
	// as Postfix's delay_warning_time default.
	Warn time.Duration
	// Rand returns a number in [0, 1); nil means math/rand/v2.
	Rand func() float64
}

var _ Schedule = Retry{}

// Lifetime implements Schedule.
func (r Retry) Lifetime() time.Duration {
	if r.MaxLifetime > 0 {
		return r.MaxLifetime
	}
	return 5 * 24 * time.Hour
}

// DelayWarning implements Schedule.
func (r Retry) DelayWarning() time.Duration { return r.Warn }

// Next implements Schedule.
func (r Retry) Next(created, now time.Time) (time.Time, bool) {
	end := created.Add(r.Lifetime())
	if !now.Before(end) {
		return time.Time{}, false
	}
	lo, hi := r.MinBackoff, r.MaxBackoff
	if lo <= 0 {
		lo = 5 * time.Minute
	}
	if hi <= 0 {
		hi = 4000 * time.Second
	}
	if hi < lo {
		hi = lo
	}
	wait := min(max(now.Sub(created), lo), hi)
	j := r.Jitter
	if j == 0 {
		j = 0.1
	}
	if j > 0 {
		rnd := rand.Float64
		if r.Rand != nil {
			rnd = r.Rand
		}
		wait = time.Duration(float64(wait) * (1 + j*(2*rnd()-1)))
	}
	next := now.Add(wait)
	if next.After(end) {
		next = end
	}
	return next, true
}
