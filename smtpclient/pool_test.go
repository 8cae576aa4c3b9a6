package smtpclient

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

type countingCloser struct{ closed *atomic.Int32 }

func (c countingCloser) Close() error { c.closed.Add(1); return nil }

func TestPoolReuseAgeAndCap(t *testing.T) {
	t.Parallel()
	clock := fakeNow()
	p := newPool[countingCloser](PoolOptions{MaxPerHost: 2, IdleTimeout: time.Hour, MaxAge: 300 * time.Second}, clock.Now)
	defer p.close()
	var closed atomic.Int32
	ctx := context.Background()

	pc, err := p.acquire(ctx, "h")
	if err != nil || pc != nil {
		t.Fatalf("first acquire: %v %v", pc, err)
	}
	a := p.opened("h", countingCloser{&closed})
	pc, _ = p.acquire(ctx, "h")
	if pc != nil {
		t.Fatal("got an idle connection from an empty pool")
	}
	b := p.opened("h", countingCloser{&closed})

	// At the cap: a third acquire waits until the context ends.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := p.acquire(short, "h"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("acquire at cap: %v", err)
	}
	p.put("h", a)
	got, err := p.acquire(ctx, "h")
	if err != nil || got != a || !got.reused {
		t.Fatalf("reuse: %v %v", got, err)
	}
	p.put("h", got)
	p.put("h", b)
	if s := p.stats().Hosts["h"]; s.Open != 2 || s.Idle != 2 || s.Reuses != 1 || s.Dials != 2 {
		t.Fatalf("stats %+v", s)
	}

	// Past the maximum age, idle connections are closed, not reused.
	clock.Add(301 * time.Second)
	got, err = p.acquire(ctx, "h")
	if err != nil || got != nil {
		t.Fatalf("aged connection reused: %v %v", got, err)
	}
	if closed.Load() != 2 {
		t.Fatalf("closed %d, want 2", closed.Load())
	}
	c := p.opened("h", countingCloser{&closed})
	p.discard("h", c)
	if s := p.stats().Hosts["h"]; s.Open != 0 || s.Idle != 0 || s.Expired != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPoolIdleTimeout(t *testing.T) {
	t.Parallel()
	p := newPool[countingCloser](PoolOptions{IdleTimeout: 10 * time.Millisecond}, time.Now)
	defer p.close()
	var closed atomic.Int32
	if pc, err := p.acquire(context.Background(), "h"); pc != nil || err != nil {
		t.Fatal(pc, err)
	}
	p.put("h", p.opened("h", countingCloser{&closed}))
	deadline := time.Now().Add(5 * time.Second)
	for closed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection never closed")
		}
		time.Sleep(time.Millisecond)
	}
	if s := p.stats().Hosts["h"]; s.Open != 0 || s.Idle != 0 || s.Expired != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPoolClose(t *testing.T) {
	t.Parallel()
	p := newPool[countingCloser](PoolOptions{IdleTimeout: time.Hour}, time.Now)
	var closed atomic.Int32
	// Idle connections to many hosts, more than are closed at once.
	for i := range 20 {
		h := fmt.Sprintf("h%d", i)
		p.acquire(context.Background(), h)
		p.acquire(context.Background(), h)
		p.put(h, p.opened(h, countingCloser{&closed}))
		p.put(h, p.opened(h, countingCloser{&closed}))
	}
	p.close()
	if n := closed.Load(); n != 40 {
		t.Fatalf("close closed %d of 40 idle connections before returning", n)
	}
	if st := p.stats(); st.Total.Open != 0 || st.Total.Idle != 0 {
		t.Fatalf("after close: %+v", st.Total)
	}
	if _, err := p.acquire(context.Background(), "h"); !errors.Is(err, ErrClosed) {
		t.Fatalf("acquire after close: %v", err)
	}
}
