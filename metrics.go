package rediscache

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// handlerMetrics are the module's Prometheus collectors. They are created
// once per process and registered in each config's metrics registry, so
// their values survive config reloads.
type handlerMetrics struct {
	requests      *prometheus.CounterVec
	storeErrors   *prometheus.CounterVec
	storeDuration *prometheus.HistogramVec
	purges        *prometheus.CounterVec
	upstream      *prometheus.HistogramVec
	storedBytes   *prometheus.CounterVec
	corrupt       prometheus.Counter
	breakerOpen   *prometheus.GaugeVec
	copyChecks    *prometheus.CounterVec
	unstored      *prometheus.CounterVec
	purgesPending *prometheus.GaugeVec
	purgesQueued  prometheus.Counter
}

var (
	metricsOnce sync.Once
	metrics     *handlerMetrics
)

func newHandlerMetrics() *handlerMetrics {
	const ns, sub = "caddy", "redis_cache"
	return &handlerMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Requests handled by a cache route, by route and result (hit, miss, stale, skip).",
		}, []string{"route", "result"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "store_errors_total",
			Help: "Failed store operations, by operation.",
		}, []string{"op"}),
		storeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "store_duration_seconds",
			Help:    "Latency of store operations, by operation.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"op"}),
		purges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "purges_total",
			Help: "Purges, by kind (mutation, route, tag, key, pattern, all, method, corrupt).",
		}, []string{"kind"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "upstream_duration_seconds",
			Help:    "Time the upstream took to answer a cache miss, by route.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route"}),
		storedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "stored_bytes_total",
			Help: "Bytes written to the store, by route.",
		}, []string{"route"}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "corrupt_entries_total",
			Help: "Stored values that failed to decode and were treated as misses.",
		}),
		breakerOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "breaker_open",
			Help: "1 while the store's circuit breaker is open (store unavailable), by store kind.",
		}, []string{"store"}),
		copyChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "validated_copy_checks_total",
			Help: "Lookups of an entry this Caddy held a validated copy of, by outcome: unchanged (served from the copy), replaced (read again in full) or gone (no longer in the store).",
		}, []string{"outcome"}),
		unstored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "unstored_total",
			Help: "Answers served as stored whose write the store refused or failed after the response had gone out, by route and reason (purged, generation-lost, pattern-purged, staged-lost, too-late, error).",
		}, []string{"route", "reason"}),
		purgesPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "purges_pending",
			Help: "Generation purges this Caddy acknowledged but the store has not taken yet; they are retried until it does, and the entries they cover are not served meanwhile. By store kind.",
		}, []string{"store"}),
		purgesQueued: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "purges_queued_total",
			Help: "Generation purges that the store did not take at once and that were queued for retry.",
		}),
	}
}

func (m *handlerMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.storeErrors, m.storeDuration, m.purges, m.upstream, m.storedBytes, m.corrupt, m.breakerOpen, m.copyChecks, m.unstored, m.purgesPending, m.purgesQueued}
}

// provisionMetrics registers the process-wide collectors in this config's
// registry.
func provisionMetrics(ctx caddy.Context) (*handlerMetrics, error) {
	metricsOnce.Do(func() { metrics = newHandlerMetrics() })
	registry := ctx.GetMetricsRegistry()
	if registry == nil {
		return metrics, nil
	}
	for _, c := range metrics.collectors() {
		if err := registry.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return nil, err
			}
		}
	}
	return metrics, nil
}

func (m *handlerMetrics) countRequest(route, result string) {
	m.requests.WithLabelValues(route, resultLabel(result)).Inc()
}

// resultLabel is the result label value of an X-Cache value: lower case,
// as the metric's help text and Prometheus conventions have it.
func resultLabel(xcache string) string {
	switch xcache {
	case resultHit:
		return "hit"
	case resultMiss:
		return "miss"
	case resultStale:
		return "stale"
	case resultSkip:
		return "skip"
	}
	return strings.ToLower(xcache)
}

func (m *handlerMetrics) observeStore(op string, d time.Duration, err error) {
	m.storeDuration.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		m.storeErrors.WithLabelValues(op).Inc()
	}
}

func (m *handlerMetrics) countPurge(kind string) { m.purges.WithLabelValues(kind).Inc() }

func (m *handlerMetrics) countUnstored(route, reason string) {
	m.unstored.WithLabelValues(route, reason).Inc()
}
func (m *handlerMetrics) countCorrupt() { m.corrupt.Inc() }

// Outcomes of the validated-copy check.
const (
	copyUnchanged = "unchanged"
	copyReplaced  = "replaced"
	copyGone      = "gone"
)

func (m *handlerMetrics) countCopyCheck(outcome string) {
	m.copyChecks.WithLabelValues(outcome).Inc()
}
func (m *handlerMetrics) addStored(route string, n int) {
	m.storedBytes.WithLabelValues(route).Add(float64(n))
}
func (m *handlerMetrics) observeUpstream(route string, d time.Duration) {
	m.upstream.WithLabelValues(route).Observe(d.Seconds())
}

func (m *handlerMetrics) setBreaker(store string, open bool) {
	v := 0.0
	if open {
		v = 1
	}
	m.breakerOpen.WithLabelValues(store).Set(v)
}

// routeStats are a route's counters for the admin stats endpoint.
type routeStats struct {
	hits, misses, stale, skips atomic.Int64
}

func (s *routeStats) count(xcache string) {
	switch xcache {
	case resultHit:
		s.hits.Add(1)
	case resultMiss:
		s.misses.Add(1)
	case resultStale:
		s.stale.Add(1)
	case resultSkip:
		s.skips.Add(1)
	}
}
