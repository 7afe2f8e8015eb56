package rediscache

import (
	"net/http"
	"strconv"
	"time"
)

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
