package rediscache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the admin.api.redis_cache module: purges, stats and health
// over Caddy's admin endpoint.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.redis_cache",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/redis_cache/purge", Handler: caddy.AdminHandlerFunc(a.handlePurge)},
		{Pattern: "/redis_cache/stats", Handler: caddy.AdminHandlerFunc(a.handleStats)},
		{Pattern: "/redis_cache/health", Handler: caddy.AdminHandlerFunc(a.handleHealth)},
		{Pattern: "/redis_cache/entry", Handler: caddy.AdminHandlerFunc(a.handleEntry)},
		{Pattern: "/redis_cache/keys", Handler: caddy.AdminHandlerFunc(a.handleKeys)},
	}
}

func apiError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

func lruStats[V any](c *boundedLRU[V]) map[string]any {
	n, size := c.size()
	return map[string]any{"entries": n, "bytes": size, "limit": c.limit}
}

// uniqueHandlers returns one live handler per store and namespace, so a
// purge touches each shared keyspace once.
func uniqueHandlers() []*Handler {
	seen := map[string]bool{}
	var out []*Handler
	liveHandlers.Range(func(k, _ any) bool {
		h := k.(*Handler)
		id := h.storeKey + "|" + h.Namespace
		if !seen[id] {
			seen[id] = true
			out = append(out, h)
		}
		return true
	})
	return out
}

func (adminAPI) handlePurge(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return apiError(http.StatusMethodNotAllowed, "method not allowed; use POST")
	}
	var p purgeRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return apiError(http.StatusBadRequest, "invalid purge request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return apiError(http.StatusBadRequest, "invalid purge request body: unexpected data after the JSON object")
	}
	kind, err := p.kind()
	if err != nil {
		return apiError(http.StatusBadRequest, "%v", err)
	}
	handlers := uniqueHandlers()
	if len(handlers) == 0 {
		return apiError(http.StatusNotFound, "no redis_cache handler is configured")
	}
	start := time.Now()
	res := purgeResult{Kind: kind, Target: p.Route + p.Key + p.Tag + p.Pattern, Soft: p.Soft}
	known := false
	for _, h := range handlers {
		if kind == "route" {
			if _, ok := h.routeByName[p.Route]; !ok {
				continue
			}
		}
		known = true
		n, queued, err := h.purge(r.Context(), p, kind)
		res.Queued = res.Queued || queued
		if err != nil {
			var apiErr caddy.APIError
			if errors.As(err, &apiErr) {
				return apiErr // the request was at fault, not the store
			}
			return apiError(http.StatusBadGateway, "purge failed: %v", err)
		}
		res.Removed += n
		res.Stores++
	}
	if !known {
		return apiError(http.StatusBadRequest, "unknown route %q", p.Route)
	}
	res.Duration = float64(time.Since(start).Microseconds()) / 1000
	if res.Queued {
		// Acknowledged: retried until the store takes it, and not served
		// by this Caddy meanwhile.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		return json.NewEncoder(w).Encode(res)
	}
	return writeJSON(w, res)
}

func (adminAPI) handleStats(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return apiError(http.StatusMethodNotAllowed, "method not allowed; use GET")
	}
	type routeStatsJSON struct {
		Hits     int64   `json:"hits"`
		Misses   int64   `json:"misses"`
		Stale    int64   `json:"stale"`
		Skips    int64   `json:"skips"`
		HitRatio float64 `json:"hit_ratio"`
	}
	type storeJSON struct {
		Namespace string         `json:"namespace"`
		Healthy   bool           `json:"healthy"`
		Health    map[string]any `json:"health"` // breaker and last PING
		// KeyCount is the number of entries of the namespace; for Redis an
		// estimate (KeyCountExact false) from DBSIZE and random samples.
		KeyCount      int64 `json:"key_count"`
		KeyCountExact bool  `json:"key_count_exact"`
		// Operations counts what the store layer sent to Redis (a command,
		// a script, or a request's pipelined lookup each count once) and the
		// requests served, since the store was created, and their ratio.
		Operations map[string]any `json:"redis_operations,omitempty"`
		Inflight   map[string]any `json:"inflight_budget,omitempty"`
		Info       map[string]any `json:"info"`
		LatencyMS  float64        `json:"latency_ms,omitempty"` // one INFO round trip
		Routes     map[string]any `json:"routes"`
		Local      map[string]any `json:"local_tier,omitempty"`
		Copies     map[string]any `json:"validated_copies,omitempty"`
		// PendingPurges counts generation purges waiting for the store.
		PendingPurges int `json:"pending_purges"`
	}
	var out []storeJSON
	for _, h := range uniqueHandlers() {
		healthy, health := h.store.storeHealth(r.Context())
		s := storeJSON{Namespace: h.Namespace, Healthy: healthy, Health: health, Routes: map[string]any{}, PendingPurges: h.store.pending.len()}
		if lt := h.store.local; lt != nil {
			s.Local = lruStats(lt.entries)
		}
		if c := h.store.copies; c != nil {
			s.Copies = lruStats(c)
		}
		if s.Healthy {
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			start := time.Now()
			s.Info = h.store.backend.info(ctx)
			s.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
			s.KeyCount, s.KeyCountExact, _ = h.keyCount(ctx)
			cancel()
		}
		s.Operations = h.store.opStats()
		s.Inflight = h.inflight.stats()
		for _, rt := range h.Routes {
			hits, misses, stale := rt.stats.hits.Load(), rt.stats.misses.Load(), rt.stats.stale.Load()
			rs := routeStatsJSON{Hits: hits, Misses: misses, Stale: stale, Skips: rt.stats.skips.Load()}
			if lookups := hits + misses + stale; lookups > 0 {
				rs.HitRatio = float64(hits+stale) / float64(lookups)
			}
			s.Routes[rt.Name] = rs
		}
		out = append(out, s)
	}
	return writeJSON(w, map[string]any{"stores": out})
}

func (adminAPI) handleHealth(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return apiError(http.StatusMethodNotAllowed, "method not allowed; use GET")
	}
	healthy := true
	var stores []map[string]any
	for _, h := range uniqueHandlers() {
		ok, st := h.store.storeHealth(r.Context())
		healthy = healthy && ok
		st["namespace"] = h.Namespace
		stores = append(stores, st)
	}
	w.Header().Set("Content-Type", "application/json")
	if !healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	return json.NewEncoder(w).Encode(map[string]any{"healthy": healthy, "stores": stores})
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = (*adminAPI)(nil)
