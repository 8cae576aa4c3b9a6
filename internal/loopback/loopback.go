package loopback

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

const (
	// lowestPort is the first port Listen considers: ports below are
	// left to well-known and commonly configured services.
	lowestPort = 10000
	// highestPort is the last TCP port.
	highestPort = 65535
	// minCandidates is the fewest ports outside the ephemeral range for
	// which choosing among them is worth it; with fewer, concurrent
	// listeners would collide often, and Listen uses port 0 instead.
	minCandidates = 1024
	// attempts bounds the ports tried before Listen gives up.
	attempts = 100
	// rangeFile holds Linux's ephemeral port range, "low\thigh\n".
	rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"
)

// ErrNotLoopback is returned for a host that is not a loopback IP address.
var ErrNotLoopback = errors.New("loopback: not a loopback IP address")

// Listen listens for TCP on host, a loopback IP address ("127.0.0.1",
// "::1" or any address of 127.0.0.0/8; "" means 127.0.0.1), on a free
// port outside the kernel's ephemeral range (see the package
// documentation). network is "tcp", "tcp4" or "tcp6".
func Listen(network, host string) (net.Listener, error) {
	return listen(network, host, rangeFile)
}

// listen is Listen reading the ephemeral range from path.
func listen(network, host, path string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("loopback: network %q: %w", network, net.UnknownNetworkError(network))
	}
	if host == "" {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("loopback: host %q: %w", host, ErrNotLoopback)
	}
	low, high, err := readRange(path)
	if err != nil {
		return listenPort(network, host, 0)
	}
	gaps := outside(low, high)
	if gaps.size() < minCandidates {
		return listenPort(network, host, 0)
	}
	var lastErr error
	for range attempts {
		ln, err := listenPort(network, host, gaps.port(rand.IntN(gaps.size())))
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
		lastErr = err
	}
	return nil, fmt.Errorf("loopback: %d ports outside the ephemeral range %d-%d were in use: %w", attempts, low, high, lastErr)
}

func listenPort(network, host string, port int) (net.Listener, error) {
	ln, err := net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("loopback: %w", err)
	}
	return ln, nil
}

// readRange reads the ephemeral port range from path.
func readRange(path string) (low, high int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	return parseRange(string(b))
}

// parseRange parses the contents of ip_local_port_range: two port numbers
// separated by white space, the first not above the second.
func parseRange(s string) (low, high int, err error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("loopback: port range %q: want two numbers", s)
	}
	low, err1 := strconv.Atoi(f[0])
	high, err2 := strconv.Atoi(f[1])
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("loopback: port range %q: %w", s, err)
	}
	if low < 1 || high > highestPort || low > high {
		return 0, 0, fmt.Errorf("loopback: port range %q: want 1 <= low <= high <= %d", s, highestPort)
	}
	return low, high, nil
}

// gaps are the candidate ports: [belowLo, belowHi] and [aboveLo, aboveHi],
// either possibly empty (hi < lo).
type gaps struct{ belowLo, belowHi, aboveLo, aboveHi int }

// outside returns the ports from lowestPort to highestPort that are not in
// the ephemeral range [low, high].
func outside(low, high int) gaps {
	return gaps{belowLo: lowestPort, belowHi: low - 1, aboveLo: max(high+1, lowestPort), aboveHi: highestPort}
}

func (g gaps) below() int { return max(0, g.belowHi-g.belowLo+1) }
func (g gaps) above() int { return max(0, g.aboveHi-g.aboveLo+1) }
func (g gaps) size() int  { return g.below() + g.above() }

// port returns the i-th candidate, 0 <= i < size().
func (g gaps) port(i int) int {
	if i < g.below() {
		return g.belowLo + i
	}
	return g.aboveLo + i - g.below()
}
