package health

import "fmt"

// State is what the checker believes about a target.
type State int

const (
	// Unknown: not probed enough yet, or not a target of the checker.
	// Clients treat an unknown target as usable.
	Unknown State = iota
	// Up: the last Rise observations were good.
	Up
	// Down: the last Fall observations were bad.
	Down
)

func (s State) String() string {
	switch s {
	case Up:
		return "up"
	case Down:
		return "down"
	default:
		return "unknown"
	}
}

// MarshalText makes a State read as "up", "down" or "unknown" in JSON.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (s *State) UnmarshalText(b []byte) error {
	for _, v := range []State{Unknown, Up, Down} {
		if string(b) == v.String() {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("health: unknown state %q", b)
}

// View is the part of the checker that clients (smtpclient, imapfailover)
// use: they read a target's state before choosing it and report what they
// saw on real connections. Target names are the names given to the checker;
// a name the checker does not hold reads as Unknown and its reports are
// ignored.
type View interface {
	// State returns the current state of the named target.
	State(target string) State
	// ReportSuccess records a good exchange seen on a real connection;
	// it counts toward Rise.
	ReportSuccess(target string)
	// ReportFailure records a site failure seen on a real connection
	// (connect error, timeout, TLS failure, 421, lost connection);
	// it counts toward Fall.
	ReportFailure(target string, err error)
}
