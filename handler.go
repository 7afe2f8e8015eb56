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

// overrideHeaders let a client make the upstream answer something other
// than what the key describes; they are removed from cacheable requests.
// They are kept in canonical form, so removing them costs no allocation.
var overrideHeaders = canonicalHeaderNames(
	"X-Original-URL", "X-Rewrite-URL", "X-Override-URL",
	"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
	"X-Forwarded-Host", "X-Forwarded-Server", "X-Host", "X-Forwarded-Scheme",
)

func canonicalHeaderNames(names ...string) []string {
	for i, name := range names {
		names[i] = http.CanonicalHeaderKey(name)
	}
	return names
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
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
	if reason := h.uncacheableRequest(r, rt, canonical); reason != "" {
		return h.bypass(w, r, next, rt, "bypass", reason)
	}
	keyPart := ""
	if rt.keyRepl {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		keyPart = strings.TrimSpace(repl.ReplaceAll(rt.Key, ""))
		if keyPart == "" || keyPart == rt.keyLiteral {
			return h.bypass(w, r, next, rt, "bypass", "empty-key")
		}
	}
	for _, name := range overrideHeaders {
		delete(r.Header, name)
	}
	cr := &cacheRequest{
		h:       h,
		route:   rt,
		r:       r,
		next:    next,
		key:     h.buildKey(r, rt, normPath, keyPart),
		tagGens: h.requestTagGens(r, rt),
	}
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
	case r.ContentLength > 0 || len(r.TransferEncoding) > 0:
		return "request-body"
	case r.Header.Get("Range") != "" && !isBytesRange(r.Header.Get("Range")):
		return "range"
	case r.Header.Get("Upgrade") != "":
		// WebSocket and other upgrades need the connection itself.
		return "upgrade"
	case !rt.keyRepl && r.Header.Get("Cookie") != "":
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
	return !cr.route.keyRepl && cr.r.Header.Get("Authorization") != ""
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

	// purgeEpoch is the namespace's purge epoch at lookup; see storeFetched.
	purgeEpoch string

	// background marks a refresh that no client waits for; it is not a
	// request, so it is not counted in metrics or stats.
	background bool
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
	if e == nil || e.noCache || e.age(time.Now()) >= e.freshFor {
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
	h := cr.h
	e, cur, present, err := cr.readEntry(cr.key.primary, append(cr.gens[:len(cr.gens):len(cr.gens)], h.purgeEpochKey()))
	if err != nil {
		return nil, "", err
	}
	cr.cur, cr.purgeEpoch = cur[:len(cur)-1], cur[len(cur)-1]
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
	if e, err = decodeEntry(raw); err != nil {
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

// gensValid reports whether no generation the entry recorded was hard
// bumped since. Tags that came from the upstream's response are not known
// before the lookup, so their generations cost a second round trip.
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
	for _, g := range e.gens {
		if hardPart(g.val) != hardPart(cr.currentGen(g.key)) {
			return false, nil
		}
	}
	// Generations the request implies but the entry did not record (a tag
	// added to the route later) must still be untouched.
	recorded := make(map[string]bool, len(e.gens))
	for _, g := range e.gens {
		recorded[g.key] = true
	}
	for i, key := range cr.gens {
		if !recorded[key] && hardPart(cr.cur[i]) != hardPart(zeroGen) {
			return false, nil
		}
	}
	return true, nil
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
	return ""
}

func hardPart(gen string) string {
	h, _, _ := strings.Cut(gen, ":")
	return h
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
	cr.stampServed(hdr, e, xcache, status)
	if notModified(cr.r, e.header) {
		for _, name := range []string{"Content-Length", "Content-Type", "Content-Encoding", "Content-Range"} {
			hdr.Del(name)
		}
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	if cr.serveRange(w, e) {
		return nil
	}
	hdr.Set("Content-Length", strconv.Itoa(len(e.body)))
	w.WriteHeader(e.status)
	if cr.r.Method != http.MethodHead && len(e.body) > 0 {
		_, _ = w.Write(e.body)
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

// fetch goes to the upstream, coalescing concurrent misses for the same
// key into one upstream request.
func (cr *cacheRequest) fetch(w http.ResponseWriter, fwd string) error {
	h := cr.h
	// Only requests that read the same generations share a fetch: one that
	// looked up after a purge must not get an answer the upstream began
	// producing before it.
	flightKey := cr.key.primary + "\x00" + strings.Join(cr.cur, ",") + "\x00" + cr.purgeEpoch
	f, leader := h.flights.join(flightKey)
	if !leader {
		if res := f.wait(cr.r.Context(), time.Duration(h.CoalesceWait)); res != nil && res.sharableWith(cr.r) {
			return cr.serveFetched(w, res, "fwd="+fwd+"; collapsed")
		}
		// The leader's answer was not shareable; go ourselves, without
		// coalescing again.
		return cr.fetchDirect(w, fwd, nil)
	}
	var shared *fetched
	defer func() { h.flights.finish(flightKey, f, shared) }()
	if h.Coalesce {
		release, e := cr.coalesceAcrossInstances()
		if e != nil {
			shared = newFetched(e, 0, cr.r) // local waiters share it
			return cr.serveEntry(w, e, resultMiss, "fwd="+fwd+"; collapsed")
		}
		if release != nil {
			defer release()
		}
	}
	return cr.fetchDirect(w, fwd, &shared)
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
		if res := f.wait(cr.r.Context(), time.Duration(h.CoalesceWait)); res != nil && res.sharableWith(cr.r) {
			return cr.serveEntryAs(w, res.entry, resultSkip, "fwd=bypass; collapsed; detail="+storeUnavailable, true)
		}
		return h.bypass(w, cr.r, cr.next, cr.route, "bypass", storeUnavailable)
	}
	var shared *fetched
	defer func() { h.flights.finish(flightKey, f, shared) }()
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

// coalesceAcrossInstances makes one Caddy among all those sharing the store
// fetch a cold key. It either takes the key's lock (and returns its
// release) or waits for the lock holder's entry, which it returns. With
// neither, because the holder's answer was not storable, the wait timed
// out or the store failed, the caller fetches by itself.
func (cr *cacheRequest) coalesceAcrossInstances() (release func(), e *entry) {
	h := cr.h
	ctx := cr.r.Context()
	lockKey := h.lockKey(cr.key.primary)
	token := randomToken()
	wait := time.Duration(h.CoalesceWait)
	ok, err := h.store.lock(ctx, lockKey, token, wait)
	if err != nil {
		return nil, nil
	}
	if ok {
		return func() { _ = h.store.unlock(context.WithoutCancel(ctx), lockKey, token) }, nil
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(coalescePoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case <-deadline.C:
			return nil, nil
		case <-tick.C:
		}
		// The lock first: read after it, the entry of a holder that just
		// stored and released is seen. The lock's value reads like a
		// generation: zeroGen when absent.
		held, err := h.store.gens(ctx, []string{lockKey})
		if err != nil {
			return nil, nil
		}
		found, _, err := cr.lookup()
		if err != nil {
			return nil, nil
		}
		if found != nil && found.age(time.Now()) < found.freshFor && !found.noCache {
			return nil, found
		}
		if held[0] == zeroGen {
			return nil, nil
		}
	}
}

// coalescePoll is how often an instance waiting for another instance's
// upstream request checks the store.
const coalescePoll = 20 * time.Millisecond

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
	if share != nil {
		*share = res
	}
	cr.countResult(resultMiss)
	if err := cr.writeFetched(w, res, "fwd="+fwd+"; fwd-status="+strconv.Itoa(res.entry.status)+"; stored"); err != nil {
		return err
	}
	cr.storeFetched(res)
	return nil
}

// serveRevalidated handles the upstream's 304 to a conditional request
// for a stale entry: the stored response gets the 304's header fields (RFC
// 9111 §3.2) and new freshness, and is served and stored again.
func (cr *cacheRequest) serveRevalidated(w http.ResponseWriter, cw *captureWriter, share **fetched) error {
	h := cr.h
	old := cr.stale
	hdr := old.header.Clone()
	for name, vals := range cw.header {
		if name == "Content-Length" || isHopByHop(name) {
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
	}
	cr.countResult(resultHit)
	if reason != "" {
		e.storedAt, e.initialAge = time.Now(), 0
		return cr.serveEntryAs(w, e, resultHit, "fwd="+cw.fwd+"; fwd-status=304; detail="+reason, false)
	}
	res := newFetched(e, plan.storeTTL, cr.r)
	if share != nil {
		*share = res
	}
	if err := cr.serveEntryAs(w, e, resultHit, "fwd="+cw.fwd+"; fwd-status=304; stored", false); err != nil {
		return err
	}
	cr.storeFetched(res)
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
		if hdr.Get(name) != "" {
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
	_ = cr.serveEntryAs(w, res.entry, resultMiss, status, false)
	// The client has the whole answer before the store write begins.
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
	return nil
}

// storeFetched writes a fetched response (and, for a Vary response, its
// index) to the store. Failures only cost a future miss.
func (cr *cacheRequest) storeFetched(res *fetched) {
	h := cr.h
	ctx := context.WithoutCancel(cr.r.Context())
	e := res.entry
	e.gens = cr.stamps()
	// The purge epoch advances with every purge. If it moved while the
	// upstream was answering, this answer may predate a purge that its
	// lookup could not see coming (a pattern, or a tag the upstream only
	// now names), so it is not stored.
	// The final write repeats the check atomically where the store can.
	if len(res.tags) > 0 {
		check := make([]string, 0, 1+len(res.tags))
		check = append(check, h.purgeEpochKey())
		for _, t := range res.tags {
			check = append(check, h.tagGenKey(t))
		}
		vals, err := h.store.gens(ctx, check)
		if err != nil {
			h.logStoreError("store", err)
			return
		}
		if vals[0] != cr.purgeEpoch {
			return
		}
		for i, g := range check[1:] {
			e.gens = append(e.gens, genStamp{key: g, val: vals[i+1]})
		}
	}
	ttl := res.storeTTL
	key := cr.key.primary
	if len(res.vary) > 0 {
		epoch := ""
		if cr.varyIdx != nil && equalFold(cr.varyIdx.vary, res.vary) {
			epoch = cr.varyIdx.varyEpoch
		} else {
			epoch = strconv.FormatInt(time.Now().UnixNano(), 36)
			idx := &entry{kind: kindVaryIndex, storedAt: e.storedAt, vary: res.vary, varyEpoch: epoch, header: http.Header{}}
			if err := h.store.set(ctx, key, idx.encode(), time.Duration(h.MaxTTL)); err != nil {
				h.logStoreError("store", err)
				return
			}
			cr.keepLocal(key, idx)
		}
		key = variantKey(cr.key.primary, epoch, res.vary, cr.r)
	}
	var buf []byte
	if b, ok := encodeBuffers.Get().(*[]byte); ok {
		buf = *b
	}
	raw := e.appendEncoded(buf)
	stored, err := h.store.setIf(ctx, key, raw, ttl, h.purgeEpochKey(), cr.purgeEpoch)
	if err != nil {
		h.logStoreError("store", err)
	} else if cap(raw) <= maxPooledEncodeBuffer {
		// The store has written raw out (or copied it) and nothing keeps
		// it. After an error it may still be queued to be written, so it is
		// left to the garbage collector.
		encodeBuffers.Put(&raw)
	}
	if !stored {
		return
	}
	if copies := h.store.copies; copies != nil {
		// Whatever this instance held for the key is not what Redis holds
		// now. The new entry is not held until it is read back: most
		// entries are never read by the instance that stored them.
		copies.remove(key)
	}
	cr.keepLocal(key, e)
	h.metrics.addStored(cr.route.Name, len(raw))
}

// stamps records the generation values seen at lookup, so that a purge that
// happens while the upstream is answering invalidates this entry too.
func (cr *cacheRequest) stamps() []genStamp {
	out := make([]genStamp, 0, len(cr.gens))
	for i, k := range cr.gens {
		v := zeroGen
		if i < len(cr.cur) {
			v = cr.cur[i]
		}
		out = append(out, genStamp{key: k, val: v})
	}
	return out
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
	bg := &cacheRequest{h: h, route: cr.route, r: bgReq, next: cr.next, key: cr.key, tagGens: cr.tagGens, gens: cr.gens, cur: cr.cur, purgeEpoch: cr.purgeEpoch, varyIdx: cr.varyIdx, stale: cr.stale, background: true}
	h.background.Add(1)
	go func() {
		defer h.background.Done()
		defer h.flights.finish("refresh:"+cr.key.primary, f, nil)
		ctx, cancel := context.WithCancel(bgReq.Context())
		defer cancel()
		stop := context.AfterFunc(h.ctx, cancel)
		defer stop()
		bg.r = bgReq.WithContext(ctx)
		_ = bg.fetchDirect(newDiscardWriter(), "stale", nil)
	}()
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
