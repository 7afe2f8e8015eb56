package rediscache

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
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
		cr.writeBody(w, rep, 0, rep.size)
	}
	return nil
}

// writeBody sends n bytes of a representation's body from offset first.
// When a whole coded body is decoded for a client that does not take the
// coding, and the entry is a validated copy, the decoded bytes join the
// copy, so that the next such clients are sent them as they are: decoding
// costs more than anything else a hit does.
func (cr *cacheRequest) writeBody(w http.ResponseWriter, rep representation, first, n int64) {
	copies := cr.h.store.copies
	held, keep := heldCopy{}, false
	size := int64(0) // of the copy with its decoded body
	if !rep.coded && rep.e.coding != codingIdentity && rep.e.decoded == nil && copies != nil && cr.copyKey != "" &&
		first == 0 && n == rep.e.identityLen {
		held, keep = copies.get(cr.copyKey)
		// The copy read, not a newer one; and with the decoded body, not
		// too large to be held (an upstream's coded answer may decode to
		// far more than it stores).
		size = entryMemSize(cr.copyKey, rep.e) + n
		keep = keep && held.e == rep.e && copies.fits(size)
	}
	if !keep {
		cr.abortIfCorrupt(rep.write(w, first, n))
		return
	}
	// The first identity client of a held coded entry: the body is kept
	// as it is decoded, and joins the copy once the frame has checked out.
	tee := &teeWriter{w: w, kept: make([]byte, 0, n)}
	err := rep.write(tee, first, n)
	cr.abortIfCorrupt(err)
	if int64(len(tee.kept)) == n {
		e := *rep.e
		e.decoded = tee.kept
		copies.put(cr.copyKey, heldCopy{e: &e, tail: held.tail}, size, time.Time{})
	}
}

// teeWriter keeps a copy of what it writes.
type teeWriter struct {
	w    io.Writer
	kept []byte
}

func (t *teeWriter) Write(p []byte) (int, error) {
	t.kept = append(t.kept, p...)
	return t.w.Write(p)
}

// abortIfCorrupt handles err from representation.write. A stored coded
// body is not decoded before it is served (its checksum held, and its
// writer made or checked the frame), so a frame that fails anyway is found
// only once the status line is out: the URI's entries are purged, and the
// connection is cut so that the client sees a short body, never a
// whole-looking wrong one.
func (cr *cacheRequest) abortIfCorrupt(err error) {
	if err == nil {
		return
	}
	h := cr.h
	h.metrics.countCorrupt()
	h.logger.Error("stored coded body failed to decode while served; purging the URI's entries",
		zap.String("key", cr.key.primary), zap.Error(err))
	h.purgeGens(context.WithoutCancel(cr.r.Context()), "corrupt", false, cr.key.uriGen)
	panic(http.ErrAbortHandler)
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
