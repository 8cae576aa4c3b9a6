package imapfailover

import (
	"context"
	"errors"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/hamail/hamail/health"
)

// errLeave asks Watch to move to another replica although the current one
// works: it lags, or a better one is up again.
var errLeave = errors.New("imapfailover: leaving replica")

// Watch hands every new message of the mailbox to h, exactly once, until
// ctx ends or h fails. It resyncs on a healthy replica, then waits with
// IDLE (RFC 2177), leaving IDLE every Options.Heartbeat to send NOOP so
// that a half-open connection is found; on a server without IDLE it sends
// NOOP every Options.PollInterval instead. When the replica fails, Watch
// moves to the next healthy one and resyncs there; a lagging replica is
// used only when no other works, and a better-priority replica that the
// health view reports Up again is moved back to at a heartbeat.
//
// The state is saved after h returns, so with a durable StateStore a
// message is handed out once across failovers and restarts of the
// process; only a crash between h's return and the save can repeat one.
// Watch returns ctx's error, h's error, a StateStore error or ErrClosed.
func (m *Mailbox) Watch(ctx context.Context, h Handler) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pool
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := m.watchRound(ctx, h)
		var he *handlerError
		switch {
		case errors.As(err, &he):
			return he.err
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrClosed):
			return err
		case errors.Is(err, errLeave):
			continue
		case errors.Is(err, ErrNoReplica):
			p.opts.Logger.Warn("imap watch: no replica usable", "mailbox", m.name, "err", err)
			t := time.NewTimer(p.opts.ReconnectDelay)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		default:
			p.opts.Logger.Info("imap watch: reconnecting", "mailbox", m.name, "err", err)
		}
	}
}

// watchRound picks a replica, resyncs and idles on it until something
// fails.
func (m *Mailbox) watchRound(ctx context.Context, h Handler) error {
	p := m.pool
	order := p.order()
	var lagging *replicaState
	for _, rs := range order {
		err := m.watchOn(ctx, rs, h, false)
		if errors.Is(err, ErrLagging) {
			if lagging == nil {
				lagging = rs
			}
			continue
		}
		if err == nil || errors.Is(err, errLeave) {
			return errLeave
		}
		var he *handlerError
		if errors.As(err, &he) || errors.Is(err, ErrClosed) || ctx.Err() != nil {
			return err
		}
		// This replica failed; try the next one now.
	}
	if lagging != nil {
		// Nothing better: follow the lagging replica, new messages
		// appear on it once it catches up.
		err := m.watchOn(ctx, lagging, h, true)
		if errors.Is(err, ErrLagging) {
			return errLeave
		}
		return err
	}
	return &Error{Op: "watch", Err: ErrNoReplica}
}

// watchOn resyncs and idles on rs. It returns ErrLagging when rs lags and
// acceptLag is false.
func (m *Mailbox) watchOn(ctx context.Context, rs *replicaState, h Handler, acceptLag bool) error {
	p := m.pool
	c, err := p.get(ctx, rs)
	if err != nil {
		if !errors.Is(err, ErrClosed) && ctx.Err() == nil {
			p.reportFailure(rs, err)
			m.moved.failed(rs.name, err)
		}
		return err
	}
	err = m.follow(ctx, c, h, acceptLag)
	switch {
	case err == nil, errors.Is(err, ErrLagging), errors.Is(err, errLeave):
		p.reportSuccess(rs)
		p.put(c)
	case c.Broken():
		p.discard(c)
		if ctx.Err() == nil && !isHandler(err) {
			p.reportFailure(rs, err)
			m.moved.failed(rs.name, err)
		}
	default:
		p.put(c)
	}
	return err
}

func isHandler(err error) bool {
	var he *handlerError
	return errors.As(err, &he)
}

// follow resyncs on c, then loops: IDLE until the server reports a change
// or the heartbeat is due, leave IDLE, NOOP or resync.
func (m *Mailbox) follow(ctx context.Context, c *Conn, h Handler, acceptLag bool) error {
	p := m.pool
	rep, err := m.observedResync(ctx, c, h)
	if err != nil {
		return err
	}
	lagging := rep.Lagging
	if lagging && !acceptLag {
		return ErrLagging
	}
	m.moved.served(&p.opts.Hooks, c.Replica())
	p.opts.Logger.Debug("imap watch: following", "mailbox", m.name, "replica", c.Replica(), "lagging", lagging)
	heartbeat := time.NewTimer(p.opts.Heartbeat)
	defer heartbeat.Stop()
	for {
		if c.dirty.Load() {
			rep, err := m.observedResync(ctx, c, h)
			if err != nil {
				return err
			}
			if rep.Lagging != lagging {
				// Caught up, or fell behind: choose again.
				return errLeave
			}
			continue
		}
		if !c.caps.Has(imap.CapIdle) {
			// No IDLE (RFC 2177): NOOP brings the changes instead
			// (RFC 3501 §6.1.2), every PollInterval.
			if err := m.poll(ctx, c, heartbeat, lagging); err != nil {
				return err
			}
			continue
		}
		// Drop a stale token: dirty is false, nothing is pending.
		select {
		case <-c.notify:
		default:
		}
		var idle *imapclient.IdleCommand
		err := c.Exec(ctx, "idle", func(cl *imapclient.Client) error {
			var err error
			idle, err = cl.Idle()
			return err
		})
		if err != nil {
			return err
		}
		beat := false
		select {
		case <-c.notify:
		case <-heartbeat.C:
			beat = true
		case <-ctx.Done():
		case <-c.client.Closed():
		}
		// Leaving IDLE writes DONE and waits for the tagged OK, bounded by
		// CommandTimeout: a black-holed server fails here.
		err = c.Exec(context.WithoutCancel(ctx), "idle", func(*imapclient.Client) error {
			if err := idle.Close(); err != nil {
				return err
			}
			return idle.Wait()
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		if beat {
			heartbeat.Reset(p.opts.Heartbeat)
			if err := c.Noop(ctx); err != nil {
				return err
			}
			if lagging || m.betterUp(c) {
				return errLeave
			}
		}
	}
}

// poll waits PollInterval and sends NOOP, for a server without IDLE. At
// the heartbeat it asks to leave a lagging replica or for a better one
// that is up again, as the IDLE loop does.
func (m *Mailbox) poll(ctx context.Context, c *Conn, heartbeat *time.Timer, lagging bool) error {
	p := m.pool
	t := time.NewTimer(p.opts.PollInterval)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	if err := c.Noop(ctx); err != nil {
		return err
	}
	select {
	case <-heartbeat.C:
		heartbeat.Reset(p.opts.Heartbeat)
		if lagging || m.betterUp(c) {
			return errLeave
		}
	default:
	}
	return nil
}

// betterUp reports whether a replica of better priority than c's is known
// Up by the health view (fail back, as keepalived's priority does).
func (m *Mailbox) betterUp(c *Conn) bool {
	p := m.pool
	if p.opts.Health == nil {
		return false
	}
	for _, rs := range p.replicas {
		if rs.cfg.Priority < c.rep.cfg.Priority && p.opts.Health.State(rs.name) == health.Up {
			return true
		}
	}
	return false
}
