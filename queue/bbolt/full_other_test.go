//go:build !linux

package bbolt_test

// TestFullDisk needs Linux's RLIMIT_FSIZE; elsewhere its child is never
// started.
const fullEnv = "HAMAIL_QUEUE_FULL_CHILD"

func fullChild(string) {}
