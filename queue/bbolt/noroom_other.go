//go:build !linux

package bbolt

// noRoom would tell why the database file cannot grow; outside Linux the
// cause of a failed commit is known only from its error.
func (s *Store) noRoom() string { return "" }
