package metrics

import (
	"time"

	"github.com/hamail/hamail/imapfailover"
)

// IMAPHooks returns hooks for imapfailover.Options.Hooks: connection
// attempts by replica and result (reconnects show as repeated attempts),
// failovers from one replica to another, and the duration and volume of
// mailbox resyncs by replica.
func (m *Metrics) IMAPHooks() imapfailover.Hooks {
	return imapfailover.Hooks{
		Connected: func(replica string, err error) {
			m.imapConnections.WithLabelValues(m.replicas.get(replica), okOrError(err)).Inc()
		},
		Failover: func(from, to string, _ error) {
			m.imapFailovers.WithLabelValues(m.replicas.get(from), m.replicas.get(to)).Inc()
		},
		Resynced: func(_, replica string, d time.Duration, r *imapfailover.SyncReport) {
			rep := m.replicas.get(replica)
			m.imapResync.WithLabelValues(rep).Observe(d.Seconds())
			if r == nil {
				return
			}
			m.imapResyncMessages.WithLabelValues(rep, "delivered").Add(float64(r.Delivered))
			m.imapResyncMessages.WithLabelValues(rep, "remapped").Add(float64(r.Remapped))
			m.imapResyncMessages.WithLabelValues(rep, "expunged").Add(float64(len(r.Expunged)))
			m.imapResyncMessages.WithLabelValues(rep, "flags_changed").Add(float64(r.FlagChanges))
			if r.UIDValidityChanged {
				m.imapUIDValidity.WithLabelValues(rep).Inc()
			}
		},
	}
}
