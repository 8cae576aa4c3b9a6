package smtpclient

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"

	"github.com/hamail/hamail/mxresolve"
)

// mapResolver answers from a table; domains not in it fail temporarily.
type mapResolver struct {
	mu      sync.Mutex
	results map[string]*mxresolve.Result
	errs    map[string]error
	calls   map[string]int
}

var _ MXResolver = (*mapResolver)(nil)

func (r *mapResolver) Resolve(ctx context.Context, domain string) (*mxresolve.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.calls == nil {
		r.calls = map[string]int{}
	}
	r.calls[domain]++
	if err := r.errs[domain]; err != nil {
		return nil, err
	}
	if res := r.results[domain]; res != nil {
		return res, nil
	}
	return nil, &mxresolve.Error{Domain: domain, Code: 451, EnhancedCode: [3]int{4, 4, 3}, Err: mxresolve.ErrServerFailure}
}

func TestRoutingDirectMX(t *testing.T) {
	t.Parallel()
	st := newScript()
	res := &mapResolver{
		results: map[string]*mxresolve.Result{
			"example.com": {Domain: "example.com", Hosts: []mxresolve.Host{
				{Name: "mx1.example.com", Preference: 10, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
				{Name: "mx2.example.com", Preference: 20, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")}},
			}},
		},
		errs: map[string]error{
			"null.example": &mxresolve.Error{Domain: "null.example", Code: 556, EnhancedCode: [3]int{5, 1, 10}, Err: mxresolve.ErrNullMX},
		},
	}
	st.set("mx1.example.com [192.0.2.1]:25", &scriptHost{dialErr: errRefused, dialStage: StageConnect})
	c := newScriptClient(t, st, &Options{Resolver: res, FallbackRelays: []Relay{{Name: "fallback", Addr: "fb.example.net:25"}}})
	out, err := c.Send(context.Background(), testMessage("a@example.com", "b@EXAMPLE.com", "c@null.example", "d@servfail.example"))
	if err != nil {
		t.Fatal(err)
	}
	r := out.Recipients
	if r[0].Outcome != Delivered || r[0].Host != "mx2.example.com [192.0.2.2]:25" || r[1].Host != r[0].Host {
		t.Fatalf("example.com: %+v %+v", r[0], r[1])
	}
	if r[2].Outcome != Permanent || r[2].Reply == nil || r[2].Reply.Code != 556 || !errors.Is(r[2].Err, mxresolve.ErrNullMX) {
		t.Fatalf("null MX: %+v", r[2])
	}
	if r[3].Outcome != Delivered || r[3].Host != "fallback" {
		t.Fatalf("SERVFAIL goes to the fallback relay: %+v", r[3])
	}
	if res.calls["example.com"] != 1 {
		t.Fatalf("example.com resolved %d times", res.calls["example.com"])
	}
	// Both example.com recipients went in one transaction.
	if tx := st.txs("mx2.example.com [192.0.2.2]:25"); len(tx) != 1 || tx[0] != "a@example.com,b@EXAMPLE.com" {
		t.Fatalf("transactions %q", tx)
	}
}

func TestRoutingMXAddressLimit(t *testing.T) {
	t.Parallel()
	st := newScript()
	var hosts []mxresolve.Host
	for i := range 8 {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})
		hosts = append(hosts, mxresolve.Host{Name: "mx.example.com", Addrs: []netip.Addr{a}})
		st.set("mx.example.com ["+a.String()+"]:25", &scriptHost{dialErr: errRefused, dialStage: StageConnect})
	}
	res := &mapResolver{results: map[string]*mxresolve.Result{"example.com": {Hosts: hosts}}}
	c := newScriptClient(t, st, &Options{Resolver: res, MaxMXAddresses: 3})
	out, err := c.Send(context.Background(), testMessage("a@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if rr := out.Recipients[0]; rr.Outcome != Temporary || rr.Attempts != 3 {
		t.Fatalf("%+v", rr)
	}
}
