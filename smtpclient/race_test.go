//go:build race

package smtpclient

const raceEnabled = true
