package rediscache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strconv"
	"time"
)

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
			return cr.serveEntryAs(w, res.entryFor(cr.r), resultSkip, "fwd=bypass; collapsed; detail="+storeUnavailable, true)
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
	_ = cr.serveEntryAs(w, shared.entryFor(cr.r), resultSkip, "fwd=bypass; fwd-status="+strconv.Itoa(shared.entry.status)+"; detail="+storeUnavailable, false)
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
	took := time.Since(start)
	h.metrics.observeUpstream(cr.route.Name, took)
	cr.route.observeFetch(took)
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
