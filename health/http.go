package health

import (
	"encoding/json"
	"net/http"
	"time"
)

// HandlerOptions configures Checker.Handler. A nil *HandlerOptions or a
// zero field means the documented default.
type HandlerOptions struct {
	// MinUp is how many targets must be up for a 200; fewer give 503.
	// Default 1.
	MinUp int
	// CountUnknown counts Unknown targets (not yet probed enough) as up,
	// as clients do: for liveness rather than readiness endpoints.
	CountUnknown bool
}

// HealthReport is the JSON document the handler serves.
type HealthReport struct {
	// Status is "ok" when at least MinUp targets are up, else "fail".
	Status  string         `json:"status"`
	Up      int            `json:"up"`
	MinUp   int            `json:"min_up"`
	Targets []TargetReport `json:"targets"`
}

// TargetReport is one target in a HealthReport.
type TargetReport struct {
	Name                 string    `json:"name"`
	Address              string    `json:"address"`
	Kind                 ProbeKind `json:"kind"`
	State                State     `json:"state"`
	Since                time.Time `json:"since"`
	LastError            string    `json:"last_error,omitempty"`
	LastErrorAt          time.Time `json:"last_error_at,omitzero"`
	ConsecutiveSuccesses int       `json:"consecutive_successes"`
	ConsecutiveFailures  int       `json:"consecutive_failures"`
	LastProbe            time.Time `json:"last_probe,omitzero"`
	// LastLatencyMS is LastLatency in milliseconds.
	LastLatencyMS float64 `json:"last_latency_ms"`
	Probes        uint64  `json:"probes"`
	Reports       uint64  `json:"reports"`
}

// Handler returns an http.Handler for /healthz-style endpoints: it serves
// a HealthReport of the checker's snapshot as JSON, with status 200 when
// at least MinUp targets are up and 503 otherwise. It answers GET and
// HEAD; other methods get 405.
func (c *Checker) Handler(opts *HandlerOptions) http.Handler {
	var o HandlerOptions
	if opts != nil {
		o = *opts
	}
	if o.MinUp <= 0 {
		o.MinUp = 1
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		rep := c.healthReport(o)
		code := http.StatusOK
		if rep.Status != "ok" {
			code = http.StatusServiceUnavailable
		}
		body, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		w.Write(append(body, '\n'))
	})
}

func (c *Checker) healthReport(o HandlerOptions) HealthReport {
	snap := c.Snapshot()
	rep := HealthReport{MinUp: o.MinUp, Targets: make([]TargetReport, 0, len(snap))}
	for _, st := range snap {
		if st.State == Up || (o.CountUnknown && st.State == Unknown) {
			rep.Up++
		}
		tr := TargetReport{
			Name: st.Name, Address: st.Address, Kind: st.Kind, State: st.State, Since: st.Since,
			LastErrorAt:          st.LastErrorAt,
			ConsecutiveSuccesses: st.ConsecutiveSuccesses, ConsecutiveFailures: st.ConsecutiveFailures,
			LastProbe:     st.LastProbe,
			LastLatencyMS: float64(st.LastLatency) / float64(time.Millisecond),
			Probes:        st.Probes, Reports: st.Reports,
		}
		if st.LastError != nil {
			tr.LastError = st.LastError.Error()
		}
		rep.Targets = append(rep.Targets, tr)
	}
	rep.Status = "fail"
	if rep.Up >= o.MinUp {
		rep.Status = "ok"
	}
	return rep
}
