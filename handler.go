package rediscache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
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
	// From here on, every decision reads the request the upstream gets.
	sanitizeRequest(r)
	if reason := h.uncacheableRequest(r, rt, canonical); reason != "" {
		return h.bypass(w, r, next, rt, "bypass", reason)
	}
	rt.normalizeQuery(r)
	ek := evaluatedKey{}
	if rt.keyRepl {
		ek = rt.evaluateKey(r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer), r.Header)
		switch {
		case ek.missing:
			return h.bypass(w, r, next, rt, "bypass", "empty-key")
		case ek.ambiguous:
			return h.bypass(w, r, next, rt, "bypass", "repeated-key-field")
		}
	}
	h.stripUnkeyed(r, rt)
	cr := &cacheRequest{
		h:       h,
		route:   rt,
		r:       r,
		next:    next,
		key:     h.buildKeyFrom(r, rt, normPath, ek),
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

// ttlSeconds is the entry's remaining freshness for Cache-Status; it is
// negative once the entry is stale.
func ttlSeconds(e *entry, now time.Time) string {
	return strconv.FormatInt(int64((e.freshFor-e.age(now))/time.Second), 10)
}

// gatewayTimeout answers an only-if-cached request that the cache cannot
// satisfy (RFC 9111 §5.2.1.7).
func (cr *cacheRequest) gatewayTimeout(w http.ResponseWriter, fwd string) error {
	cr.countResult(resultMiss)
	hdr := w.Header()
	hdr.Set("X-Cache", resultMiss)
	hdr.Add("Cache-Status", cacheStatusName+"; fwd="+fwd+"; detail=only-if-cached")
	hdr.Set("Content-Length", "0")
	w.WriteHeader(http.StatusGatewayTimeout)
	return nil
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
	if e, err = decodeEntryChecked(raw, h.store.backend.kind() != "memory"); err != nil {
		h.metrics.countCorrupt()
		if c := h.logger.Check(zap.DebugLevel, "ignoring corrupt cache entry"); c != nil {
			c.Write(zap.String("key", key), zap.Error(err))
		}
		return nil, cur, true, nil
	}
	if copies != nil {
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

// serveEntry writes a stored response to the client, answering a matching
// conditional request with 304.
func (cr *cacheRequest) serveEntry(w http.ResponseWriter, e *entry, xcache, status string) error {
	return cr.serveEntryAs(w, e, xcache, status, true)
}

func (cr *cacheRequest) serveEntryAs(w http.ResponseWriter, e *entry, xcache, status string, count bool) error {
	if count {
		cr.countResult(xcache)
	}
	hdr := w.Header()
	copyHeaderValues(hdr, e.header)
	rep := cr.selectRepresentation(hdr, e)
	cr.stampServed(hdr, e, xcache, status)
	if rep.notModified(cr.r, hdr) {
		for _, name := range []string{"Content-Length", "Content-Type", "Content-Encoding", "Content-Range"} {
			hdr.Del(name)
		}
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	if cr.serveRange(w, rep) {
		return nil
	}
	hdr.Set("Content-Length", strconv.FormatInt(rep.size, 10))
	w.WriteHeader(e.status)
	if cr.r.Method != http.MethodHead {
		rep.write(w, 0, rep.size)
	}
	return nil
}

// copyHeaderValues copies a stored entry's fields into a response header.
// The value slices are copied too, into one shared backing array: handlers
// further out (Caddy's header directive, for one) edit values in place,
// which must never reach an entry that other requests are served from.
func copyHeaderValues(dst, src http.Header) {
	n := 0
	for _, vals := range src {
		n += len(vals)
	}
	all := make([]string, 0, n)
	for name, vals := range src {
		start := len(all)
		all = append(all, vals...)
		dst[name] = all[start:len(all):len(all)]
	}
}

// stampServed sets the headers every response served by the cache gets.
func (cr *cacheRequest) stampServed(hdr http.Header, e *entry, xcache, status string) {
	age := e.age(time.Now())
	if age < 0 {
		age = 0
	}
	hdr.Set("Age", strconv.FormatInt(int64(age/time.Second), 10))
	hdr.Set("X-Cache", xcache)
	// Capped, so appending never writes into the stored entry's slice.
	upstream := hdr.Values("Cache-Status")
	hdr["Cache-Status"] = append(upstream[:len(upstream):len(upstream)], cacheStatusName+"; "+status)
	cr.route.applyClientCacheControl(hdr)
}

func (rt *Route) applyClientCacheControl(hdr http.Header) {
	switch {
	case rt.CacheControl != "":
		hdr.Set("Cache-Control", rt.CacheControl)
	case rt.keyRepl:
		hdr.Set("Cache-Control", "private")
	}
}

// protectIdentity gives an answer the cache did not store, on a route whose
// key carries an identity, the route's client Cache-Control (private by
// default) too, unless the origin already forbade shared storage.
func (rt *Route) protectIdentity(hdr http.Header) {
	if !rt.keyRepl {
		return
	}
	if cc := parseCacheControl(hdr.Values("Cache-Control")); cc.has("no-store") || cc.has("private") {
		return
	}
	rt.applyClientCacheControl(hdr)
}

// age is the entry's current age (RFC 9111 §4.2.3).
func (e *entry) age(now time.Time) time.Duration {
	return e.initialAge + now.Sub(e.storedAt)
}

// fetchWithoutStore answers a request that could not be looked up because
// the store is down (or its breaker is open): a SKIP, nothing is stored.
// Concurrent requests for the same key still share one upstream request
// when its answer could have been stored, so that an outage of the store
// does not multiply the upstream's load on hot keys.
func (cr *cacheRequest) fetchWithoutStore(w http.ResponseWriter) error {
	h := cr.h
	flightKey := "\x00" + storeUnavailable + "\x00" + cr.key.primary
	f, leader := h.flights.join(flightKey)
	if !leader {
		if res := f.wait(cr.r.Context(), time.Duration(h.FetchTimeout)); res != nil && res.sharableWith(cr.r) {
			return cr.serveEntryAs(w, res.entry, resultSkip, "fwd=bypass; collapsed; detail="+storeUnavailable, true)
		}
		return h.bypass(w, cr.r, cr.next, cr.route, "bypass", storeUnavailable)
	}
	var shared *fetched
	defer func() { h.flights.finish(flightKey, f, shared) }()
	defer cr.detach(f)()
	cw := newCaptureWriter(w, cr, "bypass")
	cw.xcache = resultSkip
	// Like every SKIP, not a cache fill: the upstream fetch time metric
	// is not observed.
	err := cr.next.ServeHTTP(cw, cr.upstreamRequest())
	h.count(cr.route, resultSkip)
	if mode := cw.finish(); mode != modeBuffer || err != nil {
		// Passed through as it arrived, or nothing was written: with no
		// stale entry to fall back on, nothing is ever held back.
		return err
	}
	shared = cw.result()
	// As in writeFetched, a client that went away is not the handler's error.
	_ = cr.serveEntryAs(w, shared.entry, resultSkip, "fwd=bypass; fwd-status="+strconv.Itoa(shared.entry.status)+"; detail="+storeUnavailable, false)
	return nil
}

// storeUnavailable is the Cache-Status detail of a request answered
// without the store because it could not be reached.
const storeUnavailable = "store-unavailable"

func randomToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// fetchDirect performs the upstream request and stores the answer when it
// may be stored. When share is non-nil, a storable answer is published
// through it for coalesced waiters.
func (cr *cacheRequest) fetchDirect(w http.ResponseWriter, fwd string, share **fetched) error {
	h := cr.h
	upReq := cr.upstreamRequest()
	cw := newCaptureWriter(w, cr, fwd)
	start := time.Now()
	err := cr.next.ServeHTTP(cw, upReq)
	h.metrics.observeUpstream(cr.route.Name, time.Since(start))
	cr.route.observeFetch(time.Since(start))
	mode := cw.finish()
	if mode == modePassthrough {
		cr.countResult(resultMiss)
		return err
	}
	if err != nil || mode == modeDiscard {
		if cr.stale != nil && cr.withinStale(cr.stale, cr.stale.age(time.Now()), cr.staleWindow(err)) {
			status := "fwd=stale; "
			if cw.status != 0 {
				status += "fwd-status=" + strconv.Itoa(cw.status) + "; "
			}
			status += "ttl=" + ttlSeconds(cr.stale, time.Now()) + "; detail=stale-if-error"
			return cr.serveEntry(w, cr.stale, resultStale, status)
		}
		if err != nil {
			cr.countResult(resultMiss)
			return err
		}
		cw.flushTo(w, fwd)
		cr.countResult(resultMiss)
		return nil
	}
	if mode == modeNone {
		// The upstream wrote nothing at all.
		cr.countResult(resultMiss)
		return nil
	}
	if mode == modeRevalidated {
		return cr.serveRevalidated(w, cw, share)
	}
	res := cw.result()
	cr.countResult(resultMiss)
	if err := cr.writeFetched(w, res, "fwd="+fwd+"; fwd-status="+strconv.Itoa(res.entry.status)+"; stored"); err != nil {
		return err
	}
	cr.shareIfCurrent(share, res, cr.storeFetched(res))
	return nil
}

// shareIfCurrent publishes a fetched answer for coalesced waiters, unless
// its store write found that a purge since the lookup covers it: a waiter
// may have asked after that purge, so it must fetch for itself.
func (cr *cacheRequest) shareIfCurrent(share **fetched, res *fetched, out storeOutcome) {
	if share != nil && out == outcomeStored {
		*share = res
	}
}

// serveRevalidated handles the upstream's 304 to a conditional request
// for a stale entry: the stored response gets the 304's header fields (RFC
// 9111 §3.2) and new freshness, and is served and stored again.
func (cr *cacheRequest) serveRevalidated(w http.ResponseWriter, cw *captureWriter, share **fetched) error {
	h := cr.h
	old := cr.stale
	hdr := old.header.Clone()
	for name, vals := range cw.header {
		if name == "Content-Length" || isHopByHop(name) || (old.coding != codingIdentity && name == "Content-Encoding") {
			continue
		}
		hdr[name] = vals
	}
	plan, reason := h.cacheability(cr, old.status, hdr, cw.start)
	h.cleanForStore(hdr)
	e := &entry{
		kind:       kindResponse,
		status:     old.status,
		storedAt:   plan.responseTime,
		initialAge: plan.initialAge,
		freshFor:   plan.freshFor,
		swr:        plan.swr,
		sie:        plan.sie,
		noCache:    plan.noCache,
		vary:       old.vary,
		header:     hdr,
		body:       old.body,

		coding:      old.coding,
		identityLen: old.identityLen,
		etagOfCoded: old.etagOfCoded,
	}
	cr.countResult(resultHit)
	if reason != "" {
		e.storedAt, e.initialAge = time.Now(), 0
		return cr.serveEntryAs(w, e, resultHit, "fwd="+cw.fwd+"; fwd-status=304; detail="+reason, false)
	}
	res := newFetched(e, plan.storeTTL, cr.r)
	if err := cr.serveEntryAs(w, e, resultHit, "fwd="+cw.fwd+"; fwd-status=304; stored", false); err != nil {
		return err
	}
	cr.shareIfCurrent(share, res, cr.storeFetched(res))
	return nil
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

// upstreamRequest is the request sent upstream on a miss: HEAD becomes
// GET so the answer can be stored, and Range and the preconditions the
// cache evaluates itself are dropped so the upstream answers in full; the
// client still gets its range from us. A stale entry is revalidated with
// its own validators. Without one, the client's If-None-Match and
// If-Modified-Since go upstream (RFC 9111 §4.3.1), so that the origin's
// 304 reaches the client (unstored); a 200 is stored as usual.
func (cr *cacheRequest) upstreamRequest() *http.Request {
	r := cr.r
	etag, lastModified := cr.staleValidators()
	drop := []string{"If-Match", "If-Unmodified-Since", "If-Range", "Range"}
	if cr.stale != nil {
		drop = append(drop, "If-None-Match", "If-Modified-Since")
	}
	if r.Method == http.MethodGet && etag == "" && lastModified == "" && !hasAnyHeader(r.Header, drop) {
		return r
	}
	up := r.Clone(r.Context())
	up.Method = http.MethodGet
	for _, name := range drop {
		up.Header.Del(name)
	}
	if etag != "" {
		up.Header.Set("If-None-Match", etag)
	}
	if lastModified != "" {
		up.Header.Set("If-Modified-Since", lastModified)
	}
	return up
}

func hasAnyHeader(hdr http.Header, names []string) bool {
	for _, name := range names {
		if hasHeader(hdr, name) {
			return true
		}
	}
	return false
}

// staleValidators returns the validators of the stale entry being
// replaced, with which the upstream request becomes a revalidation.
func (cr *cacheRequest) staleValidators() (etag, lastModified string) {
	if cr.stale == nil {
		return "", ""
	}
	return cr.stale.header.Get("ETag"), cr.stale.header.Get("Last-Modified")
}

// serveFetched answers a coalesced waiter from the leader's response.
func (cr *cacheRequest) serveFetched(w http.ResponseWriter, res *fetched, status string) error {
	cr.countResult(resultMiss)
	return cr.writeFetched(w, res, status)
}

func (cr *cacheRequest) writeFetched(w http.ResponseWriter, res *fetched, status string) error {
	_ = cr.serveEntryAs(w, res.entryFor(cr.r), resultMiss, status, false)
	// The client has the whole answer before the store write begins.
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
	return nil
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

// refreshInBackground refreshes a stale entry once, however many requests
// see it stale, without making any client wait.
func (cr *cacheRequest) refreshInBackground() {
	h := cr.h
	f, leader := h.flights.join("refresh:" + cr.key.primary)
	if !leader {
		return
	}
	bgReq := cr.r.Clone(context.WithoutCancel(cr.r.Context()))
	bg := &cacheRequest{h: h, route: cr.route, r: bgReq, next: cr.next, key: cr.key, tagGens: cr.tagGens, gens: cr.gens, cur: cr.cur, lookupAt: cr.lookupAt, varyIdx: cr.varyIdx, stale: cr.stale, background: true}
	h.background.Add(1)
	goSafe(h.logger, "background refresh", func() {
		defer h.background.Done()
		defer h.flights.finish("refresh:"+cr.key.primary, f, nil)
		ctx, cancel := context.WithCancel(bgReq.Context())
		defer cancel()
		stop := context.AfterFunc(h.ctx, cancel)
		defer stop()
		bg.r = bgReq.WithContext(ctx)
		_ = bg.fetchDirect(newDiscardWriter(), "stale", nil)
	})
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
