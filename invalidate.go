package rediscache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

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
	gens := []string{h.uriGenKey(requestScheme(r), r.Host, normPath, sortedQuery(rt.filterQuery(r.URL.RawQuery)))}
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
	if u.Host != "" && (normalizeHost(u.Host) != normalizeHost(r.Host) || u.Scheme != requestScheme(r)) {
		return ""
	}
	p := u.Path
	if p == "" {
		p = "/"
	}
	return h.uriGenKey(requestScheme(r), r.Host, p, sortedQuery(u.RawQuery))
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
