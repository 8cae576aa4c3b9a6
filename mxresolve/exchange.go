package mxresolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/miekg/dns"
)

// nameservers returns the configured nameservers, reading ResolvConf on
// first use (New does no I/O).
func (r *Resolver) nameservers() ([]string, error) {
	r.serversOnce.Do(func() {
		if len(r.opts.Nameservers) > 0 {
			r.servers = make([]string, 0, len(r.opts.Nameservers))
			for _, s := range r.opts.Nameservers {
				r.servers = append(r.servers, withPort(s, "53"))
			}
			return
		}
		cfg, err := dns.ClientConfigFromFile(r.opts.ResolvConf)
		if err != nil {
			r.serversErr = fmt.Errorf("%w: %w", ErrNoNameservers, err)
			return
		}
		for _, s := range cfg.Servers {
			// ClientConfig gives hosts without brackets.
			r.servers = append(r.servers, net.JoinHostPort(s, cfg.Port))
		}
		if len(r.servers) == 0 {
			r.serversErr = fmt.Errorf("%w in %s", ErrNoNameservers, r.opts.ResolvConf)
		}
	})
	return r.servers, r.serversErr
}

func withPort(s, port string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	return net.JoinHostPort(s, port)
}

// order returns the nameservers to ask: those without a recent failure in
// configuration order, then the failed ones, the longest-failed first.
func (r *Resolver) order(servers []string) []string {
	now := r.now()
	r.penaltyMu.Lock()
	defer r.penaltyMu.Unlock()
	if len(r.penalty) == 0 {
		return servers
	}
	out := make([]string, 0, len(servers))
	var late []string
	for _, s := range servers {
		if until, ok := r.penalty[s]; ok && now.Before(until) {
			late = append(late, s)
			continue
		}
		out = append(out, s)
	}
	slices.SortStableFunc(late, func(a, b string) int { return r.penalty[a].Compare(r.penalty[b]) })
	return append(out, late...)
}

func (r *Resolver) markFailed(server string) {
	r.penaltyMu.Lock()
	r.penalty[server] = r.now().Add(r.opts.NameserverBackoff)
	r.penaltyMu.Unlock()
}

func (r *Resolver) markGood(server string) {
	r.penaltyMu.Lock()
	delete(r.penalty, server)
	r.penaltyMu.Unlock()
}

// exchange asks the nameservers in turn for (name, qtype) until one gives
// a usable reply: NOERROR or NXDOMAIN, not truncated. A truncated UDP reply
// is asked again over TCP from the same server (RFC 7766 §5); its records
// are never used.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	if r.exchangeHook != nil {
		return r.exchangeHook(ctx, name, qtype)
	}
	servers, err := r.nameservers()
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, server := range r.order(servers) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m, err := r.exchangeWith(ctx, server, name, qtype)
		if err == nil {
			r.markGood(server)
			return m, nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			// Our own cancellation says nothing about the server.
			return nil, ctxErr
		}
		r.markFailed(server)
		r.log.Debug("nameserver failed", "server", server, "name", name,
			"type", dns.TypeToString[qtype], "err", err)
		errs = append(errs, err)
	}
	return nil, joinFailures(errs)
}

// joinFailures makes the error for a query no nameserver answered: it
// wraps ErrServerFailure if one of them answered with a failure code, else
// ErrNoAnswer, and every per-server error.
func joinFailures(errs []error) error {
	kind := ErrNoAnswer
	for _, err := range errs {
		if errors.Is(err, ErrServerFailure) {
			kind = ErrServerFailure
		}
	}
	return fmt.Errorf("%w: %w", kind, errors.Join(errs...))
}

func (r *Resolver) exchangeWith(ctx context.Context, server, name string, qtype uint16) (*dns.Msg, error) {
	edns := true
	m, err := r.exchangeOnce(ctx, "udp", server, name, qtype, edns)
	if err == nil && m.Rcode == dns.RcodeFormatError && m.IsEdns0() == nil {
		// A server that predates EDNS answers FORMERR without an OPT
		// record: ask again without one (RFC 6891 §7).
		edns = false
		m, err = r.exchangeOnce(ctx, "udp", server, name, qtype, edns)
	}
	if err == nil && m.Truncated {
		m, err = r.exchangeOnce(ctx, "tcp", server, name, qtype, edns)
		if err == nil && m.Truncated {
			err = fmt.Errorf("nameserver %s: %w", server, errTruncated)
		}
	}
	if err != nil {
		return nil, err
	}
	switch m.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return m, nil
	}
	return nil, &rcodeError{server: server, rcode: m.Rcode}
}

// exchangeOnce sends one query over one transport. miekg/dns honours only
// the context's deadline, so cancellation closes the connection to stop a
// query in flight.
func (r *Resolver) exchangeOnce(ctx context.Context, network, server, name string, qtype uint16, edns bool) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	// Ask for the AD bit (RFC 6840 §5.7) without asking for DNSSEC records.
	q.AuthenticatedData = true
	if edns {
		q.SetEdns0(ednsSize, false)
	}

	c := &dns.Client{Net: network, Timeout: r.opts.Timeout, UDPSize: ednsSize}
	co, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, fmt.Errorf("nameserver %s over %s: %w", server, network, err)
	}
	defer co.Close()
	stop := context.AfterFunc(ctx, func() { co.Close() })
	defer stop()
	m, _, err := c.ExchangeWithConnContext(ctx, q, co)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, fmt.Errorf("nameserver %s over %s: %w", server, network, err)
	}
	if !m.Response || len(m.Question) != 1 || m.Question[0].Qtype != qtype ||
		!equalName(m.Question[0].Name, name) {
		return nil, fmt.Errorf("nameserver %s over %s: reply does not match the question: %w",
			server, network, ErrServerFailure)
	}
	return m, nil
}

func (r *Resolver) now() time.Time { return r.opts.Clock() }
