package rediscache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// serveMutation passes a mutating request to the upstream and, when the
// answer is not an error, invalidates before the client sees it, so the
// client's next read cannot get the old data. A purge the store does not
// take is queued and retried; the client's answer is not held back.
func (h *Handler) serveMutation(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rt *Route, normPath string) error {
	h.count(rt, resultSkip)
	sw := &stampWriter{ResponseWriter: w, h: h, xcache: resultSkip, fwd: "method"}
	sw.onHeader = func(code int, hdr http.Header) {
		if code < 200 || code >= 400 {
			return
		}
		h.purgeGens(r.Context(), "mutation", false, h.mutationGens(r, rt, normPath, code, hdr)...)
	}
	return next.ServeHTTP(sw, r)
}

// purgeGens bumps generations, queueing them for retry when the store does
// not take them, and reports whether they were queued.
func (h *Handler) purgeGens(ctx context.Context, kind string, soft bool, gens ...string) bool {
	queued := h.store.purge(ctx, soft, h.genTTL, h.allGenKey(), gens...)
	h.metrics.countPurge(kind)
	return queued
}

// mutationGens lists the generations a successful mutation bumps: the
// target URI and same-origin Location / Content-Location on any non-error
// answer (RFC 9111 §4.4); the route and the routes it invalidates (unless
// the route purges by URI only) only on an answer with a purging status
// (2xx by default), so that a redirect to a login page purges no route; and
// whatever the upstream names in the purge header.
func (h *Handler) mutationGens(r *http.Request, rt *Route, normPath string, code int, hdr http.Header) []string {
	scheme, host := requestScheme(r), strings.ToLower(r.Host)
	gens := []string{h.uriGenKey(scheme, host, normPath, sortedQuery(r.URL.RawQuery))}
	if !rt.purgeURI && h.purgesRoutes(code) {
		gens = append(gens, rt.routeGen)
		gens = append(gens, rt.invalGens...)
		gens = append(gens, h.invalidationTagGens(r, rt)...)
	}
	for _, name := range []string{"Location", "Content-Location"} {
		if g := h.sameOriginGen(r, hdr.Get(name)); g != "" {
			gens = append(gens, g)
		}
	}
	for _, item := range splitList(hdr.Values(h.PurgeHeader)) {
		if tag, ok := strings.CutPrefix(item, "tag:"); ok {
			gens = append(gens, h.tagGenKey(tag))
		} else if routeNamePattern.MatchString(item) {
			gens = append(gens, h.routeGenKey(item))
		}
	}
	return gens
}

// sameOriginGen returns the URI generation of a Location-style reference
// when it points at the request's own origin.
func (h *Handler) sameOriginGen(r *http.Request, ref string) string {
	if ref == "" {
		return ""
	}
	u, err := r.URL.Parse(ref)
	if err != nil {
		return ""
	}
	host := strings.ToLower(r.Host)
	if u.Host != "" && (!strings.EqualFold(u.Host, host) || u.Scheme != requestScheme(r)) {
		return ""
	}
	p := u.Path
	if p == "" {
		p = "/"
	}
	return h.uriGenKey(requestScheme(r), host, p, sortedQuery(u.RawQuery))
}

// purgeRequest is the JSON body of POST /redis_cache/purge.
type purgeRequest struct {
	Route   string `json:"route,omitempty"`
	Key     string `json:"key,omitempty"`
	Tag     string `json:"tag,omitempty"`
	Pattern string `json:"pattern,omitempty"`
	All     bool   `json:"all,omitempty"`
	Soft    bool   `json:"soft,omitempty"`
}

func (p purgeRequest) kind() (string, error) {
	var kinds []string
	if p.Route != "" {
		kinds = append(kinds, "route")
	}
	if p.Key != "" {
		kinds = append(kinds, "key")
	}
	if p.Tag != "" {
		kinds = append(kinds, "tag")
	}
	if p.Pattern != "" {
		kinds = append(kinds, "pattern")
	}
	if p.All {
		kinds = append(kinds, "all")
	}
	switch len(kinds) {
	case 0:
		return "", errors.New(`give one of "route", "key", "tag", "pattern" or "all": true`)
	case 1:
		return kinds[0], nil
	}
	return "", fmt.Errorf("give only one purge kind, not %s", strings.Join(kinds, " and "))
}

// purgeResult is the JSON answer of a purge.
type purgeResult struct {
	Kind     string  `json:"kind"`
	Target   string  `json:"target,omitempty"`
	Soft     bool    `json:"soft,omitempty"`
	Removed  int64   `json:"removed"`
	Stores   int     `json:"stores"`
	Queued   bool    `json:"queued,omitempty"`
	Duration float64 `json:"duration_ms"`
}

// purge carries out one admin purge on this handler's store and namespace.
// A generation purge (route, tag, all) that the store does not take is
// queued and retried, and reported as queued; a key or pattern purge is
// remembered for the answers in flight (so none is stored after it), then
// deleted, and fails as a whole when the store fails.
func (h *Handler) purge(ctx context.Context, p purgeRequest, kind string) (removed int64, queued bool, err error) {
	key := h.Namespace + ":" + strings.TrimPrefix(p.Key, h.Namespace+":")
	switch {
	case kind == "route" && h.routeByName[p.Route] == nil:
		return 0, false, apiError(http.StatusBadRequest, "unknown route %q", p.Route)
	case kind == "key" && !h.isEntryKey(key):
		return 0, false, apiError(http.StatusBadRequest, "key %q is not a cache entry key", p.Key)
	case kind == "pattern" && strings.ContainsAny(p.Pattern, "\n\r\x00"):
		return 0, false, apiError(http.StatusBadRequest, "pattern %q: control characters are not allowed", p.Pattern)
	}
	notEntry := func(k string) bool { return !h.isEntryKey(k) }
	switch kind {
	case "route":
		queued = h.purgeGens(ctx, kind, p.Soft, h.routeGenKey(p.Route))
	case "tag":
		queued = h.purgeGens(ctx, kind, p.Soft, h.tagGenKey(p.Tag))
	case "all":
		queued = h.purgeGens(ctx, kind, p.Soft, h.allGenKey())
		if !queued && !p.Soft {
			// The generation already invalidates everything; this frees
			// the memory.
			removed, err = h.store.scanDelete(ctx, h.Namespace+":*", notEntry)
		}
	case "key":
		// The key's Vary variants share its prefix.
		if err = h.store.rememberPurge(ctx, h.recentPurgesKey(), escapeGlob(key)+"*"); err == nil {
			removed, err = h.store.del(ctx, key)
		}
	case "pattern":
		glob := h.Namespace + ":" + p.Pattern
		if err = h.store.rememberPurge(ctx, h.recentPurgesKey(), glob); err == nil {
			removed, err = h.store.scanDelete(ctx, glob, notEntry)
		}
	}
	if err == nil && (kind == "key" || kind == "pattern") {
		h.metrics.countPurge(kind)
	}
	return removed, queued, err
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
		Info      map[string]any `json:"info"`
		LatencyMS float64        `json:"latency_ms,omitempty"` // one INFO round trip
		Routes    map[string]any `json:"routes"`
		Local     map[string]any `json:"local_tier,omitempty"`
		Copies    map[string]any `json:"validated_copies,omitempty"`
		// PendingPurges counts generation purges waiting for the store.
		PendingPurges int `json:"pending_purges"`
	}
	var out []storeJSON
	for _, h := range uniqueHandlers() {
		s := storeJSON{Namespace: h.Namespace, Healthy: !h.store.breaker.isOpen.Load(), Routes: map[string]any{}, PendingPurges: h.store.pending.len()}
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
			cancel()
		}
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
		ok := !h.store.breaker.isOpen.Load()
		healthy = healthy && ok
		stores = append(stores, map[string]any{"namespace": h.Namespace, "kind": h.store.backend.kind(), "healthy": ok})
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
