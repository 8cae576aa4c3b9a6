package main

import (
	"github.com/emersion/go-smtp"
	"github.com/hamail/hamail/internal/faultproxy"
	"github.com/hamail/hamail/internal/smtptest"
)

// step is one event of the fault script. It runs once the given fraction
// of the messages has been handed to the Mailer, so that the story is the
// same on a fast machine and on a loaded one.
type step struct {
	at   float64
	what string
	kill bool // a kill (counted by the test), not a repair
	do   func(s *stage) error
}

// stage is what the script acts on: the servers, and the sending process.
type stage struct {
	*world
	// restartMailer closes the Mailer at once, as a crashing process
	// would stop, and opens a new one on the same queue directory.
	restartMailer func() error
}

// script is what happens to the world while mail flows. The Mailer
// delivers directly to the MX hosts of example.com, in preference order;
// the two fallback relays (Postfix's smtp_fallback_relay) take the mail
// only while no exchanger answers.
func script() []step {
	return []step{
		{at: 0.10, kill: true, what: "kill mx1 (MX 10, the primary): server stopped, open sessions cut",
			do: func(w *stage) error { return w.mx[0].srv.Stop() }},
		{at: 0.25, kill: true, what: "black-hole mx2 (MX 20): connections accepted, never answered",
			do: func(w *stage) error { return w.mx[1].proxy.SetMode(faultproxy.BlackHole) }},
		{at: 0.35, kill: true, what: "mx3 (MX 30) drops off the network: open and new connections reset; no exchanger answers",
			do: func(w *stage) error {
				// Not Refuse: leaving it listens again on the proxy's
				// port, which is in the ephemeral range and may have
				// been handed to an outgoing connection meanwhile.
				return w.mx[2].proxy.SetMode(faultproxy.Reset)
			}},
		{at: 0.45, kill: true, what: "kill relay-1: server stopped",
			do: func(w *stage) error { return w.relay[0].srv.Stop() }},
		{at: 0.50, kill: true, what: "imap1, the replica the reader follows, goes down: its sessions cut, new connections reset",
			do: func(w *stage) error {
				// At its proxy: the replica keeps its mailbox, as a
				// stopped server keeps its disk, and never has to
				// listen again on its ephemeral-range port.
				return w.imapProxy[0].SetMode(faultproxy.Reset)
			}},
		{at: 0.52, kill: true, what: "relay-2 defers everything (451 4.3.2): no path at all, messages wait in the queue",
			do: func(w *stage) error {
				w.relay[1].srv.SetFault(smtptest.StageMail, smtptest.Reply(451, smtp.EnhancedCode{4, 3, 2}, "System not accepting network messages"))
				return nil
			}},
		{at: 0.57, kill: true, what: "restart the sending process: the Mailer is closed without grace while messages wait, and reopened on the same queue directory",
			do: func(w *stage) error { return w.restartMailer() }},
		{at: 0.62, what: "repair mx2 and mx3; relay-2 accepts again",
			do: func(w *stage) error {
				w.relay[1].srv.ClearFaults()
				if err := w.mx[1].proxy.SetMode(faultproxy.Pass); err != nil {
					return err
				}
				return w.mx[2].proxy.SetMode(faultproxy.Pass)
			}},
		{at: 0.68, what: "restart relay-1",
			do: func(w *stage) error { return w.relay[0].srv.Start() }},
		{at: 0.75, what: "restart mx1 (same address): its breaker lets a probe through, then it takes the mail again",
			do: func(w *stage) error { return w.mx[0].srv.Start() }},
		{at: 0.85, what: "imap1 comes back",
			do: func(w *stage) error { return w.imapProxy[0].SetMode(faultproxy.Pass) }},
	}
}
