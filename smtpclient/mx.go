package smtpclient

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/mxresolve"
)

var _ MXResolver = (*mxresolve.Resolver)(nil)

func (c *Client) hasMX() bool { return c.opts.Resolver != nil }

func (c *Client) checkMX() error {
	if c.opts.MXPort < 0 || c.opts.MXPort > 65535 {
		return fmt.Errorf("smtpclient: invalid MXPort %d", c.opts.MXPort)
	}
	if c.opts.MXTLS == TLSNone && c.opts.MXTLSConfig != nil {
		return errors.New("smtpclient: MXTLSConfig set with MXTLS none")
	}
	return nil
}

// deliverMX sends the pending recipients to the mail exchangers of their
// domains, one domain at a time (RFC 5321 §5.1), and returns those that may
// still go to the fallback relays.
func (c *Client) deliverMX(ctx context.Context, s *sendState, pending []parsedRecipient) []parsedRecipient {
	var order []string
	groups := map[string][]parsedRecipient{}
	for _, p := range pending {
		d := p.addr.DomainKey()
		if _, ok := groups[d]; !ok {
			order = append(order, d)
		}
		groups[d] = append(groups[d], p)
	}
	var rest []parsedRecipient
	for _, d := range order {
		rcpts := groups[d]
		if ctx.Err() != nil {
			rest = append(rest, rcpts...)
			continue
		}
		targets, err := c.mxTargets(ctx, d)
		if err != nil {
			v := classify(StageResolve, err)
			var r *Reply
			var me *mxresolve.Error
			if errors.As(err, &me) {
				e := me.EnhancedCode
				r = &Reply{Code: me.Code, Enhanced: smtp.EnhancedCode{e[0], e[1], e[2]}, Message: me.Err.Error()}
			}
			e := &Error{Stage: StageResolve, Reply: r, Outcome: v.outcome, Err: err}
			for _, p := range rcpts {
				s.set(p, v.outcome, "", r, e)
			}
			if v.next {
				s.lastSkip = err
				rest = append(rest, rcpts...)
			} else {
				// A definitive answer: the recipients are decided.
				s.attempted = true
			}
			c.log.Debug("MX resolution failed", "domain", d, "err", err)
			continue
		}
		rest = append(rest, c.deliverVia(ctx, s, targets, rcpts)...)
	}
	return rest
}

// mxTargets lists the exchanger addresses of a domain, best first, at most
// MaxMXAddresses (Postfix smtp_mx_address_limit). An address literal is its
// own target (RFC 5321 §4.1.3).
func (c *Client) mxTargets(ctx context.Context, domain string) ([]*target, error) {
	port := uint16(c.opts.MXPort)
	if strings.HasPrefix(domain, "[") {
		lit := strings.TrimPrefix(strings.Trim(domain, "[]"), "ipv6:")
		a, err := netip.ParseAddr(lit)
		if err != nil {
			return nil, fmt.Errorf("smtpclient: address literal %s: %w", domain, err)
		}
		return []*target{c.mxTarget(domain, a, port)}, nil
	}
	res, err := c.opts.Resolver.Resolve(ctx, domain)
	if err != nil {
		return nil, err
	}
	var out []*target
	for _, h := range res.Hosts {
		for _, a := range h.Addrs {
			if len(out) == c.opts.MaxMXAddresses {
				return out, nil
			}
			out = append(out, c.mxTarget(h.Name, a, port))
		}
	}
	if len(out) == 0 {
		return nil, &mxresolve.Error{Domain: domain, Code: 451, EnhancedCode: [3]int{4, 4, 3}, Err: mxresolve.ErrNoAddress}
	}
	return out, nil
}

func (c *Client) mxTarget(name string, a netip.Addr, port uint16) *target {
	addr := netip.AddrPortFrom(a.Unmap(), port).String()
	info := HostInfo{Name: name + " " + bracket(a) + ":" + strconv.Itoa(int(port)), Addr: addr}
	return newTarget(info, c.opts.MXTLS, c.opts.MXTLSConfig, name)
}

func bracket(a netip.Addr) string { return "[" + a.Unmap().String() + "]" }
