// Package result is the JSON of one load run: what bench/loadgen prints
// (bench/wrk.lua writes the same fields) and what bench/benchtool reads.
package result

// Latency is in milliseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// Stats are the counts and latencies of a run, or of a window of one.
type Stats struct {
	Requests   uint64                       `json:"requests"`
	RPS        float64                      `json:"rps"`
	Latency    Latency                      `json:"latency_ms"`
	Status     map[string]uint64            `json:"status"`
	Header     map[string]map[string]uint64 `json:"header,omitempty"`
	Errors     uint64                       `json:"errors"`
	ErrSamples map[string]uint64            `json:"error_samples,omitempty"`
	Bytes      uint64                       `json:"bytes"`
}

// Window is Stats for the requests that completed between StartS and EndS
// seconds into the run.
type Window struct {
	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s"`
	Stats
}

// Run is one load generator run.
type Run struct {
	Label       string  `json:"label,omitempty"`
	Loader      string  `json:"loader,omitempty"` // "wrk", or empty for loadgen
	URL         string  `json:"url"`
	Method      string  `json:"method,omitempty"`
	Connections int     `json:"connections"`
	DurationS   float64 `json:"duration_s"`
	WarmupS     float64 `json:"warmup_s"`
	Stats
	Windows []Window `json:"windows,omitempty"`
	// Check is the loadgen run that saw the statuses and X-Cache values
	// of a wrk run (see benchtool attach-check).
	Check *Stats `json:"check,omitempty"`
}
