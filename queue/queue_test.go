package queue_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hamail/hamail/queue"
)

func TestRetrySchedule(t *testing.T) {
	t.Parallel()
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := queue.Retry{}
	for _, tc := range []struct {
		age      time.Duration
		min, max time.Duration
	}{
		{0, 270 * time.Second, 330 * time.Second},                  // 5 min ± 10 %
		{20 * time.Minute, 18 * time.Minute, 22 * time.Minute},     // the age
		{10 * time.Hour, 3600 * time.Second, 4400 * time.Second},   // 4000 s ± 10 %
		{119*time.Hour + 59*time.Minute, time.Minute, time.Minute}, // capped at the lifetime
	} {
		for range 50 {
			now := created.Add(tc.age)
			next, ok := r.Next(created, now)
			if !ok {
				t.Fatalf("age %v: gave up", tc.age)
			}
			if w := next.Sub(now); w < tc.min || w > tc.max {
				t.Errorf("age %v: wait %v, want in [%v, %v]", tc.age, w, tc.min, tc.max)
			}
		}
	}
	if _, ok := r.Next(created, created.Add(5*24*time.Hour)); ok {
		t.Error("still retrying at the end of the 5-day lifetime")
	}
	if r.DelayWarning() != 0 || r.Lifetime() != 5*24*time.Hour {
		t.Errorf("defaults: warn %v lifetime %v", r.DelayWarning(), r.Lifetime())
	}
	// Jitter spreads the retries of messages queued together.
	seen := map[time.Time]bool{}
	for range 20 {
		next, _ := r.Next(created, created.Add(time.Hour))
		seen[next] = true
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct retry times out of 20", len(seen))
	}
}

func TestEnvelopeValidate(t *testing.T) {
	t.Parallel()
	good := queue.Envelope{From: "", Recipients: []queue.Recipient{{Address: "bob@example.net", Notify: queue.NotifyFailure | queue.NotifyDelay, ORcpt: "rfc822;bob@example.net"}}}
	if err := good.Validate(); err != nil {
		t.Errorf("valid envelope: %v", err)
	}
	for name, e := range map[string]queue.Envelope{
		"no recipients":          {From: "a@example.org"},
		"CRLF in from":           {From: "a@example.org\r\nDATA", Recipients: good.Recipients},
		"angle in rcpt":          {Recipients: []queue.Recipient{{Address: "<b@example.net>"}}},
		"NEVER combined":         {Recipients: []queue.Recipient{{Address: "b@example.net", Notify: queue.NotifyNever | queue.NotifyDelay}}},
		"long path":              {From: strings.Repeat("a", 300), Recipients: good.Recipients},
		"LF in ENVID":            {EnvID: "x\ny", Recipients: good.Recipients},
		"bad RET":                {Ret: 9, Recipients: good.Recipients},
		"negative size":          {Size: -1, Recipients: good.Recipients},
		"UTF-8 without SMTPUTF8": {Recipients: []queue.Recipient{{Address: "josé@example.net"}}},
		"LF in ORCPT":            {Recipients: []queue.Recipient{{Address: "b@example.net", ORcpt: "rfc822;b\n"}}},
	} {
		if err := e.Validate(); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestNotify(t *testing.T) {
	t.Parallel()
	var unset queue.Notify
	if !unset.Wants(queue.NotifyFailure) || !unset.Wants(queue.NotifyDelay) || unset.Wants(queue.NotifySuccess) {
		t.Error("unset NOTIFY should mean FAILURE,DELAY")
	}
	if queue.NotifyNever.Wants(queue.NotifyFailure) {
		t.Error("NEVER wants failures")
	}
	if s := (queue.NotifySuccess | queue.NotifyDelay).String(); s != "SUCCESS,DELAY" {
		t.Errorf("String = %q", s)
	}
}

func TestIDs(t *testing.T) {
	t.Parallel()
	var src queue.IDSource
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for range 100 {
		ids = append(ids, src.New(at)) // a clock standing still
	}
	if !slices.IsSorted(ids) {
		t.Error("IDs from a standing clock do not increase")
	}
	if len(slices.Compact(slices.Clone(ids))) != len(ids) {
		t.Error("duplicate IDs")
	}
	if got, ok := queue.IDTime(ids[0]); !ok || !got.Equal(at) {
		t.Errorf("IDTime = %v %v, want %v", got, ok, at)
	}
	if a, b := queue.NewID(at), queue.NewID(at.Add(time.Nanosecond)); a >= b {
		t.Errorf("NewID not ordered by time: %s %s", a, b)
	}
}
