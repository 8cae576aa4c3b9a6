package health_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hamail/hamail/health"
)

func get(t *testing.T, h http.Handler, method string) (*httptest.ResponseRecorder, health.HealthReport) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "/healthz", nil))
	var rep health.HealthReport
	if rec.Code != http.StatusMethodNotAllowed && method == http.MethodGet {
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
			t.Fatalf("body %q: %v", rec.Body, err)
		}
	}
	return rec, rep
}

func TestHandlerStatusFollowsMinUp(t *testing.T) {
	t.Parallel()
	c := health.New(&health.Options{Rise: 1, Fall: 1})
	mustAdd(t, c, health.Target{Name: "relay1", Address: "192.0.2.1:25", Kind: health.ProbeSMTP})
	mustAdd(t, c, health.Target{Name: "relay2", Address: "192.0.2.2:587", Kind: health.ProbeSMTP})
	mustAdd(t, c, health.Target{Name: "replica1", Address: "192.0.2.3:143", Kind: health.ProbeIMAP})
	h := c.Handler(&health.HandlerOptions{MinUp: 2})

	rec, rep := get(t, h, http.MethodGet)
	if rec.Code != http.StatusServiceUnavailable || rep.Status != "fail" || rep.Up != 0 || rep.MinUp != 2 {
		t.Errorf("all unknown: %d %+v", rec.Code, rep)
	}
	// Unknown counts as up for a liveness endpoint.
	if rec, _ := get(t, c.Handler(&health.HandlerOptions{MinUp: 3, CountUnknown: true}), http.MethodGet); rec.Code != http.StatusOK {
		t.Errorf("CountUnknown: %d", rec.Code)
	}

	c.ReportSuccess("relay1")
	c.ReportFailure("relay2", errRefused)
	rec, rep = get(t, h, http.MethodGet)
	if rec.Code != http.StatusServiceUnavailable || rep.Up != 1 {
		t.Errorf("one up: %d %+v", rec.Code, rep)
	}

	c.ReportSuccess("replica1")
	rec, rep = get(t, h, http.MethodGet)
	if rec.Code != http.StatusOK || rep.Status != "ok" || rep.Up != 2 || len(rep.Targets) != 3 {
		t.Fatalf("two up: %d %+v", rec.Code, rep)
	}
	r2 := rep.Targets[1]
	if r2.Name != "relay2" || r2.State != health.Down || r2.Kind != health.ProbeSMTP || r2.Address != "192.0.2.2:587" ||
		r2.LastError != errRefused.Error() || r2.ConsecutiveFailures != 1 || r2.Reports != 1 || r2.Since.IsZero() {
		t.Errorf("relay2 entry %+v", r2)
	}
	// The JSON spells states and kinds as words.
	var raw struct {
		Targets []map[string]any `json:"targets"`
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Targets[0]["state"] != "up" || raw.Targets[1]["state"] != "down" || raw.Targets[2]["kind"] != "imap" {
		t.Errorf("raw JSON targets %v", raw.Targets)
	}

	if rec, _ := get(t, h, http.MethodHead); rec.Code != http.StatusOK {
		t.Errorf("HEAD: %d", rec.Code)
	}
	if rec, _ := get(t, h, http.MethodPost); rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") == "" {
		t.Errorf("POST: %d", rec.Code)
	}
}

func TestHandlerDefaultMinUpIsOne(t *testing.T) {
	t.Parallel()
	c := health.New(&health.Options{Rise: 1, Fall: 1})
	h := c.Handler(nil)
	if rec, _ := get(t, h, http.MethodGet); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("no targets: %d", rec.Code)
	}
	mustAdd(t, c, health.Target{Name: "mx1", Address: "192.0.2.1:25"})
	c.ReportSuccess("mx1")
	if rec, _ := get(t, h, http.MethodGet); rec.Code != http.StatusOK {
		t.Errorf("one up: %d", rec.Code)
	}
}
