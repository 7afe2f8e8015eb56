package rediscache

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// X-Cache values.
const (
	resultHit   = "HIT"
	resultMiss  = "MISS"
	resultStale = "STALE"
	resultSkip  = "SKIP"
)

// cacheStatusName is this cache's identifier in the Cache-Status field.
const cacheStatusName = "redis_cache"

// prepareKey makes a GET or HEAD request into the one the upstream gets
// (sanitised, its query normalised, unkeyed fields stripped) and returns
// its key, or the Cache-Status detail of why it skips the cache. The admin
// API's inspection uses it too, so that it names the key a request would.
func (h *Handler) prepareKey(r *http.Request, rt *Route, normPath string, canonical bool) (requestKey, string) {
	sanitizeRequest(r)
	if reason := h.uncacheableRequest(r, rt, canonical); reason != "" {
		return requestKey{}, reason
	}
	rt.normalizeQuery(r)
	ek := evaluatedKey{}
	if rt.keyRepl {
		ek = rt.evaluateKey(r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer), r.Header)
		switch {
		case ek.missing:
			return requestKey{}, "empty-key"
		case ek.ambiguous:
			return requestKey{}, "repeated-key-field"
		}
	}
	h.stripUnkeyed(r, rt)
	return h.buildKeyFrom(r, rt, normPath, ek), ""
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.PurgeMethod != nil && r.Method == h.PurgeMethod.Method {
		return h.servePurgeMethod(w, r)
	}
	normPath, canonical := normalizedPath(r)
	rt := h.matchRoute(normPath)
	if rt == nil {
		return next.ServeHTTP(w, r)
	}
	if h.isPurgeMethod(r.Method) {
		return h.serveMutation(w, r, next, rt, normPath)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return h.bypass(w, r, next, rt, "method", "")
	}
	if hasHeader(r.Header, "Upgrade") {
		// WebSocket and other upgrades need the connection itself, and
		// the Connection and Upgrade fields that sanitation removes.
		return h.bypass(w, r, next, rt, "bypass", "upgrade")
	}
	key, skip := h.prepareKey(r, rt, normPath, canonical)
	if skip != "" {
		return h.bypass(w, r, next, rt, "bypass", skip)
	}
	cr := &cacheRequest{
		h:       h,
		route:   rt,
		r:       r,
		next:    next,
		key:     key,
		tagGens: h.requestTagGens(r, rt),
		budget:  &budgetHold{budget: h.inflight},
	}
	defer cr.close()
	return cr.serve(w)
}

func (h *Handler) matchRoute(normPath string) *Route {
	for _, rt := range h.Routes {
		if rt.matcher.match(normPath) {
			return rt
		}
	}
	return nil
}

// uncacheableRequest names why a GET or HEAD must skip the cache, or "".
func (h *Handler) uncacheableRequest(r *http.Request, rt *Route, canonical bool) string {
	switch {
	case !canonical:
		return "non-canonical-path"
	case hasRequestBody(r):
		return "request-body"
	case hasHeader(r.Header, "Range") && (len(r.Header.Values("Range")) > 1 || !isBytesRange(r.Header.Get("Range"))):
		return "range"
	case !rt.trustsCredentials() && hasHeader(r.Header, "Cookie"):
		return "cookie"
	}
	return ""
}

func (h *Handler) requestTagGens(r *http.Request, rt *Route) []string {
	if len(rt.Tags) == 0 {
		return nil
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	gens := make([]string, 0, len(rt.Tags))
	for _, tpl := range rt.Tags {
		if tag := strings.TrimSpace(repl.ReplaceAll(tpl, "")); tag != "" {
			gens = append(gens, h.tagGenKey(tag))
		}
	}
	return gens
}

// bypass passes a request to the upstream without using the cache, and
// marks the response as such.
func (h *Handler) bypass(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rt *Route, fwd, detail string) error {
	h.count(rt, resultSkip)
	sw := &stampWriter{ResponseWriter: w, h: h, xcache: resultSkip, fwd: fwd, detail: detail}
	if rt.keyRepl && detail != "empty-key" {
		sw.onHeader = func(_ int, hdr http.Header) { rt.protectIdentity(hdr) }
	}
	return next.ServeHTTP(sw, r)
}

// authenticated reports whether the request carries credentials that the
// route's key does not account for.
func (cr *cacheRequest) authenticated() bool {
	return !cr.route.trustsCredentials() && hasHeader(cr.r.Header, "Authorization")
}

// cacheRequest carries one cacheable GET or HEAD through lookup, fetch and
// store.
type cacheRequest struct {
	h       *Handler
	route   *Route
	r       *http.Request
	next    caddyhttp.Handler
	key     requestKey
	tagGens []string

	gens    []string // generation keys checked on lookup
	cur     []string // their current values
	stale   *entry   // an expired entry that may still be served
	varyIdx *entry   // the Vary index found at the primary key
	reqCC   requestDirectives

	// lookupAt is when the lookup began: purges after it may postdate the
	// answer the upstream computes, see storeGuard.
	lookupAt time.Time

	// background marks a refresh that no client waits for; it is not a
	// request, so it is not counted in metrics or stats.
	background bool

	// writers are the request's capture writers, finished (at the latest)
	// when ServeHTTP returns; budget is what their bodies took from the
	// in-flight budget (nil for a background refresh: no slow client holds
	// its body).
	writers []*captureWriter
	budget  *budgetHold

	// copyKey names the validated copy of the entry read last ("" when
	// none is kept), so that its decoded body can join it.
	copyKey string
}

func (cr *cacheRequest) serve(w http.ResponseWriter) error {
	h := cr.h
	cr.gens = append([]string{h.allGenKey(), cr.route.routeGen, cr.key.uriGen}, cr.tagGens...)
	cr.reqCC = cr.requestDirectives()
	if cr.reqCC.forceMiss {
		// The lookup still runs: its generations stamp the new entry.
		if _, _, err := cr.lookup(); err != nil {
			h.logStoreError("lookup", err)
			return h.bypass(w, cr.r, cr.next, cr.route, "bypass", storeUnavailable)
		}
		return cr.fetch(w, "request")
	}
	if e := cr.localHit(); e != nil && cr.reqCC.acceptsFresh(e, time.Now()) {
		return cr.serveEntry(w, e, resultHit, "hit; ttl="+ttlSeconds(e, time.Now()))
	}
	e, fwd, err := cr.lookup()
	if err != nil {
		h.logStoreError("lookup", err)
		return cr.fetchWithoutStore(w)
	}
	now := time.Now()
	if e != nil {
		if cr.reqCC.acceptsFresh(e, now) && !cr.softPurged(e) {
			cr.maybeRefreshAhead(e, now)
			return cr.serveEntry(w, e, resultHit, "hit; ttl="+ttlSeconds(e, now))
		}
		cr.stale = e
		fwd = "stale"
		if !e.noCache && e.age(now) < e.freshFor && !cr.softPurged(e) {
			// Fresh, but the request's directives did not allow its use
			// (RFC 9211 §2.2.2).
			fwd = "request"
		}
		if cr.reqCC.acceptsStale(e, now) {
			return cr.serveEntry(w, e, resultStale, "hit; ttl="+ttlSeconds(e, now)+"; detail=max-stale")
		}
		if !e.noCache && cr.withinStale(e, e.age(now), e.swr) {
			cr.refreshInBackground()
			return cr.serveEntry(w, e, resultStale, "fwd=stale; ttl="+ttlSeconds(e, now)+"; detail=stale-while-revalidate")
		}
	}
	if cr.reqCC.onlyIfCached {
		return cr.gatewayTimeout(w, fwd)
	}
	return cr.fetch(w, fwd)
}

// localHit returns a fresh entry from the in-process tier, if there is one
// whose generations are all known to be current.
func (cr *cacheRequest) localHit() *entry {
	lt := cr.h.store.local
	if lt == nil {
		return nil
	}
	e := lt.get(cr.key.primary, func(idx *entry) string {
		return variantKey(cr.key.primary, idx.varyEpoch, idx.vary, cr.r)
	})
	if e == nil || e.noCache || e.age(time.Now()) >= e.freshFor || cr.h.store.pending.coversAny(e.gens) {
		return nil
	}
	return e
}

// keepLocal offers an entry read from, or written to, the store to the
// in-process tier, for as long as it stays fresh.
func (cr *cacheRequest) keepLocal(key string, e *entry) {
	lt := cr.h.store.local
	if lt == nil {
		return
	}
	if e.kind == kindVaryIndex {
		lt.put(key, e, time.Duration(cr.h.MaxTTL))
		return
	}
	if ttl := e.freshFor - e.age(time.Now()); ttl > 0 && !e.noCache {
		lt.put(key, e, ttl)
	}
}

// lookup finds a usable entry (fresh or stale) and, when there is none,
// the Cache-Status fwd reason.
func (cr *cacheRequest) lookup() (*entry, string, error) {
	if lt := cr.h.store.local; lt != nil {
		epoch := lt.readEpoch()
		defer func() { lt.observeGens(epoch, cr.gens, cr.cur) }()
	}
	return cr.lookupStore()
}

func (cr *cacheRequest) lookupStore() (*entry, string, error) {
	cr.lookupAt = time.Now()
	e, cur, present, err := cr.readEntry(cr.key.primary, cr.gens)
	if err != nil {
		return nil, "", err
	}
	cr.cur = cur
	switch {
	case e == nil && present:
		return nil, "miss", nil
	case e == nil:
		return nil, "uri-miss", nil
	}
	key := cr.key.primary
	if e.kind == kindVaryIndex {
		cr.varyIdx = e
		cr.keepLocal(key, e)
		key = variantKey(cr.key.primary, e.varyEpoch, e.vary, cr.r)
		if e, _, _, err = cr.readEntry(key, nil); err != nil {
			return nil, "", err
		}
		if e == nil || e.kind != kindResponse {
			return nil, "vary-miss", nil
		}
	}
	valid, err := cr.gensValid(e)
	if err != nil {
		return nil, "", err
	}
	if !valid {
		return nil, "miss", nil
	}
	cr.keepLocal(key, e)
	return e, "", nil
}

// readEntry reads the entry at key and the generations gens in one round
// trip. When this instance holds a validated copy of the entry, only the
// entry's tail is read to check that the copy is still what Redis holds.
// A nil entry comes with whether a (corrupt) value was there.
func (cr *cacheRequest) readEntry(key string, gens []string) (e *entry, cur []string, present bool, err error) {
	h := cr.h
	copies := h.store.copies
	cr.copyKey = ""
	var held heldCopy
	if copies != nil {
		held, _ = copies.get(key)
	}
	raw, cur, unchanged, err := h.store.get(cr.r.Context(), key, gens, held.tail)
	switch {
	case err != nil:
		return nil, nil, false, err
	case unchanged:
		h.metrics.countCopyCheck(copyUnchanged)
		cr.copyKey = key
		return held.e, cur, true, nil
	case held.e != nil:
		outcome := copyReplaced
		if raw == nil {
			outcome = copyGone
		}
		h.metrics.countCopyCheck(outcome)
		copies.remove(key)
	}
	if raw == nil {
		return nil, cur, false, nil
	}
	if e, err = decodeEntryChecked(raw, false); err != nil {
		h.metrics.countCorrupt()
		if c := h.logger.Check(zap.DebugLevel, "ignoring corrupt cache entry"); c != nil {
			c.Write(zap.String("key", key), zap.Error(err))
		}
		return nil, cur, true, nil
	}
	if copies != nil {
		cr.copyKey = key
		copies.put(key, heldCopy{e: e, tail: entryTail(raw)}, entryMemSize(key, e), time.Time{})
	}
	return e, cur, true, nil
}

// gensValid reports whether every generation the entry recorded is still
// known and not hard bumped since, and none has a purge waiting in this
// instance's queue. Tags that came from the upstream's response are not
// known before the lookup, so their generations cost a second round trip.
func (cr *cacheRequest) gensValid(e *entry) (bool, error) {
	var extra []string
	for _, g := range e.gens {
		if cr.currentGen(g.key) == "" {
			extra = append(extra, g.key)
		}
	}
	if len(extra) > 0 {
		vals, err := cr.h.store.gens(cr.r.Context(), extra)
		if err != nil {
			return false, err
		}
		cr.gens = append(cr.gens, extra...)
		cr.cur = append(cr.cur, vals...)
	}
	pending := cr.h.store.pending
	for _, g := range e.gens {
		cur := cr.currentGen(g.key)
		if cur == genMissing || hardPart(g.val) != hardPart(cur) || pending.covers(g.key) {
			return false, nil
		}
	}
	// A generation the request implies but the entry did not record (a tag
	// added to the route since) says nothing about the entry.
	for _, key := range cr.gens {
		if !e.records(key) {
			return false, nil
		}
	}
	return true, nil
}

// records reports whether the entry recorded the generation key.
func (e *entry) records(key string) bool {
	for _, g := range e.gens {
		if g.key == key {
			return true
		}
	}
	return false
}

// softPurged reports whether a soft purge marked the entry stale.
func (cr *cacheRequest) softPurged(e *entry) bool {
	for _, g := range e.gens {
		if g.val != cr.currentGen(g.key) {
			return true
		}
	}
	return false
}

func (cr *cacheRequest) currentGen(key string) string {
	for i, k := range cr.gens {
		if k == key && i < len(cr.cur) {
			return cr.cur[i]
		}
	}
	return genMissing
}

func (cr *cacheRequest) withinStale(e *entry, age, window time.Duration) bool {
	return window > 0 && age < e.freshFor+window
}

func (cr *cacheRequest) countResult(xcache string) {
	if cr.background {
		return
	}
	cr.h.count(cr.route, xcache)
}

// count records a request's result in the metrics and the route's stats.
func (h *Handler) count(rt *Route, xcache string) {
	h.metrics.countRequest(rt.Name, xcache)
	rt.stats.count(xcache)
	h.store.countRequest()
}

func equalFold(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !strings.EqualFold(a[i], b[i]) {
			return false
		}
	}
	return true
}

func (h *Handler) logStoreError(op string, err error) {
	if errors.Is(err, errBreakerOpen) {
		return
	}
	if c := h.logger.Check(zap.DebugLevel, "cache store error"); c != nil {
		c.Write(zap.String("op", op), zap.Error(err))
	}
}

// Interface guards
var _ caddyhttp.MiddlewareHandler = (*Handler)(nil)
