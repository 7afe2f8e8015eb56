package rediscache

import (
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// captureMode is what a captureWriter does with the upstream's response.
type captureMode int

const (
	modeNone        captureMode = iota // nothing written yet
	modeBuffer                         // storable so far: held for the store
	modePassthrough                    // not storable: streamed to the client
	modeDiscard                        // an error a stale entry will replace
	modeRevalidated                    // a 304 that refreshes the stale entry
)

// captureWriter receives the upstream's response on a miss. Until the
// response proves storable it keeps it; anything not storable, or larger
// than max_entry_size, is streamed to the client as it arrives.
type captureWriter struct {
	w      http.ResponseWriter
	cr     *cacheRequest
	fwd    string
	xcache string // what a response passed straight through is marked as
	start  time.Time
	header http.Header
	status int
	mode   captureMode
	body   []byte // the response held for the store; its capacity is reserved
	plan   storePlan

	// mu guards the mode against streamTimer, which turns a response of
	// unknown length that is still arriving into a stream.
	mu          sync.Mutex
	streamTimer *time.Timer
	// done is set by finish, under mu: from then on nothing may touch the
	// client's ResponseWriter, which may belong to a finished request.
	done bool
}

// streamWindow is how long a response of unknown length may take to
// complete before it is treated as a stream (long polling, a chunked feed
// without end) and sent on to the client as it arrives.
const streamWindow = time.Second

// storePlan is the freshness information of a storable response.
type storePlan struct {
	responseTime time.Time
	initialAge   time.Duration
	freshFor     time.Duration
	swr, sie     time.Duration
	noCache      bool // stored only to be revalidated before each use
	storeTTL     time.Duration
}

// revalidationWindow is how long a response with a validator is kept past
// its freshness, so that it can be revalidated with a conditional request
// instead of fetched again in full.
const revalidationWindow = 10 * time.Minute

func newCaptureWriter(w http.ResponseWriter, cr *cacheRequest, fwd string) *captureWriter {
	cw := &captureWriter{w: w, cr: cr, fwd: fwd, xcache: resultMiss, start: time.Now(), header: make(http.Header)}
	cr.track(cw)
	return cw
}

func (cw *captureWriter) Header() http.Header { return cw.header }

func (cw *captureWriter) WriteHeader(code int) {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	cw.writeHeaderLocked(code)
}

func (cw *captureWriter) writeHeaderLocked(code int) {
	if cw.mode != modeNone || cw.done {
		return
	}
	if code < 200 {
		cw.writeInterim(code)
		return
	}
	cw.status = code
	if code == http.StatusNotModified && cw.cr.stale != nil {
		cw.mode = modeRevalidated
		return
	}
	plan, reason := cw.cr.h.cacheability(cw.cr, code, cw.header, cw.start)
	switch {
	case reason == "":
		cw.plan = plan
		cw.mode = modeBuffer
		n, err := strconv.ParseInt(cw.header.Get("Content-Length"), 10, 64)
		switch {
		case err != nil:
			logger := cw.cr.h.logger
			cw.streamTimer = time.AfterFunc(streamWindow, func() {
				defer recoverAndLog(logger, "stream timer")
				cw.becomeStream()
			})
		case n > 0 && n <= cw.cr.h.MaxEntrySize:
			// One allocation for the body, instead of doubling up to it,
			// if the in-flight budget has room for all of it.
			if !cw.growBody(int(n)) {
				cw.passthrough("budget")
			}
		}
	case cw.cr.stale != nil && isServerError(code) &&
		cw.cr.withinStale(cw.cr.stale, cw.cr.stale.age(time.Now()), cw.cr.stale.sie):
		// Only an error that the stale entry will replace is held back;
		// any other reaches the client as the upstream sent it.
		cw.mode = modeDiscard
	default:
		cw.passthrough(reason)
	}
}

func isServerError(code int) bool {
	switch code {
	case 500, 502, 503, 504:
		return true
	}
	return false
}

// passthrough sends the response on to the client as it arrives.
func (cw *captureWriter) passthrough(reason string) {
	cw.mode = modePassthrough
	cw.forwardHeader(cw.w, cw.fwd, reason)
	cw.w.WriteHeader(cw.status)
}

// forwardHeader gives w the upstream's header fields, marked as cw.xcache:
// a MISS the cache did not store, or a SKIP while the store is down.
func (cw *captureWriter) forwardHeader(w http.ResponseWriter, fwd, reason string) {
	hdr := w.Header()
	copyHeader(hdr, cw.header)
	cw.cr.h.stripInternal(hdr)
	cw.cr.route.protectIdentity(hdr)
	hdr.Set("X-Cache", cw.xcache)
	if cw.xcache == resultSkip {
		reason = storeUnavailable
	}
	hdr.Add("Cache-Status", cacheStatusForwarded(fwd, cw.status, reason))
}

// becomeStream sends a response that is taking too long to complete on to
// the client, with what has arrived so far. It runs on the timer's own
// goroutine, possibly after the request ended: done, set under the same
// lock by finish, keeps it from touching a finished response.
func (cw *captureWriter) becomeStream() {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	if cw.done || cw.mode != modeBuffer {
		return
	}
	_ = cw.spill("streaming")
	_ = http.NewResponseController(cw.w).Flush()
}

// spill switches a buffered response to passthrough, sending the part
// already held.
func (cw *captureWriter) spill(reason string) error {
	cw.passthrough(reason)
	_, err := cw.w.Write(cw.body)
	cw.body = nil
	return err
}

// finish stops the stream timer and reports the final mode. Once it has
// returned, no callback touches the client's ResponseWriter: a timer
// callback that already runs holds mu until it is done, and any later one
// sees done.
func (cw *captureWriter) finish() captureMode {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	if cw.done {
		return cw.mode
	}
	if cw.streamTimer != nil {
		cw.streamTimer.Stop()
	}
	if reason := cw.lateUnstorable(); reason != "" && cw.mode == modeBuffer {
		// Still unsent: it goes to the client as it is, unstored.
		_ = cw.spill(reason)
	}
	cw.done = true
	return cw.mode
}

func (cw *captureWriter) Write(p []byte) (int, error) {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	if cw.done {
		return 0, errResponseFinished
	}
	if cw.mode == modeNone {
		cw.writeHeaderLocked(http.StatusOK)
	}
	switch cw.mode {
	case modeBuffer:
		reason := ""
		switch {
		case int64(len(cw.body)+len(p)) > cw.cr.h.MaxEntrySize:
			reason = "too-large"
		case !cw.growBody(len(p)):
			reason = "budget"
		}
		if reason != "" {
			if err := cw.spill(reason); err != nil {
				return 0, err
			}
			return cw.w.Write(p)
		}
		cw.body = append(cw.body, p...)
		return len(p), nil
	case modeDiscard, modeRevalidated:
		return len(p), nil
	default:
		return cw.w.Write(p)
	}
}

// Flush is honoured only once the response streams through; a response
// being held for the store is sent whole at the end.
func (cw *captureWriter) Flush() {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	if cw.mode == modePassthrough && !cw.done {
		_ = http.NewResponseController(cw.w).Flush()
	}
}

// flushTo sends a discarded error response after all, when no stale entry
// could stand in for it. Its body is gone, so only the status is sent.
func (cw *captureWriter) flushTo(w http.ResponseWriter, fwd string) {
	cw.forwardHeader(w, fwd, "upstream-error")
	w.Header().Del("Content-Length")
	w.WriteHeader(cw.status)
}

// fetched is a complete storable upstream response, shared with coalesced
// waiters and written to the store.
type fetched struct {
	entry      *entry
	storeTTL   time.Duration
	tags       []string
	vary       []string // header names from the upstream's Vary
	varyValues []string // the leader's values of those headers
	plain      *entry   // entry before compression, while it is at hand
}

func (cw *captureWriter) result() *fetched {
	h := cw.cr.h
	hdr := cw.header.Clone()
	res := &fetched{
		storeTTL: cw.plan.storeTTL,
		tags:     h.responseTags(hdr),
		vary:     varyNames(hdr),
	}
	h.cleanForStore(hdr)
	res.varyValues = varyValues(res.vary, cw.cr.r)
	res.entry = &entry{
		kind:       kindResponse,
		status:     cw.status,
		storedAt:   cw.plan.responseTime,
		initialAge: cw.plan.initialAge,
		freshFor:   cw.plan.freshFor,
		swr:        cw.plan.swr,
		sie:        cw.plan.sie,
		noCache:    cw.plan.noCache,
		vary:       res.vary,
		header:     hdr,
		body:       cw.body,
	}
	h.codeForStore(res, cw.cr.r)
	return res
}

// sharableWith reports whether a coalesced waiter's request selects the
// same Vary variant as the leader's.
func (f *fetched) sharableWith(r *http.Request) bool {
	for i, name := range f.vary {
		if headerValue(r, name) != f.varyValues[i] {
			return false
		}
	}
	return true
}

// newFetched wraps an entry for coalesced waiters, recording the leader's
// values of the headers the entry varies on.
func newFetched(e *entry, storeTTL time.Duration, r *http.Request) *fetched {
	return &fetched{entry: e, storeTTL: storeTTL, vary: e.vary, varyValues: varyValues(e.vary, r)}
}

func varyValues(names []string, r *http.Request) []string {
	if len(names) == 0 {
		return nil
	}
	vals := make([]string, len(names))
	for i, name := range names {
		vals[i] = headerValue(r, name)
	}
	return vals
}

// headerValue is a request header's values as one string, the form in
// which keys and Vary matching compare them. Accept-Encoding and
// Accept-Language are normalised (normalizeWeightedList), so that requests
// the origin cannot tell apart share one entry.
func headerValue(r *http.Request, name string) string {
	vals := r.Header.Values(name)
	switch {
	case strings.EqualFold(name, "Accept-Encoding"):
		return normalizeWeightedList(vals, true)
	case strings.EqualFold(name, "Accept-Language"):
		return normalizeWeightedList(vals, false)
	}
	return strings.Join(vals, ", ")
}

// cleanForStore removes what a stored response must not carry: the
// upstream's instructions to the cache, hop-by-hop fields and the fields
// the cache computes anew on every use.
func (h *Handler) cleanForStore(hdr http.Header) {
	h.stripInternal(hdr)
	for _, name := range hopByHop {
		hdr.Del(name)
	}
	for name := range hdr {
		if strings.HasPrefix(name, http.TrailerPrefix) {
			delete(hdr, name) // trailers are never stored as fields
		}
	}
	hdr.Del("Age")
	hdr.Del("X-Cache")
}

var hopByHop = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func isHopByHop(name string) bool {
	for _, h := range hopByHop {
		if h == name {
			return true
		}
	}
	return false
}

// stripInternal removes the headers through which the upstream talks to
// the cache, so clients never see them.
func (h *Handler) stripInternal(hdr http.Header) {
	hdr.Del(h.PurgeHeader)
	h.stripTagHeaders(hdr)
}

func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		dst[k] = vs
	}
}

func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				out = append(out, item)
			}
		}
	}
	return out
}

func varyNames(hdr http.Header) []string {
	var out []string
	for _, name := range splitList(hdr.Values("Vary")) {
		out = append(out, http.CanonicalHeaderKey(name))
	}
	return out
}

// cacheability decides whether a response may be stored and for how long,
// naming the reason (a Cache-Status detail) when it may not.
func (h *Handler) cacheability(cr *cacheRequest, status int, hdr http.Header, requestTime time.Time) (storePlan, string) {
	rt := cr.route
	if isEventStream(hdr) || hasHeader(hdr, "Incremental") {
		return storePlan{}, "streaming"
	}
	if cr.reqCC.noStore {
		return storePlan{}, "request-no-store"
	}
	if cl := hdr.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n > h.MaxEntrySize {
			return storePlan{}, "too-large"
		}
	}
	now := time.Now()
	if isErrorStatus(status) && cr.stale != nil && cr.withinStale(cr.stale, cr.stale.age(now), cr.stale.sie) {
		// stale-if-error: the stale entry stands in for the error, which
		// is not stored over it even when the origin made it fresh.
		return storePlan{}, "upstream-error"
	}
	cc, targeted := responseDirectives(hdr, h.TargetedCacheControl)
	freshFor, reason := h.freshness(rt, status, cc, targeted, hdr, now)
	if reason != "" {
		return storePlan{}, reason
	}
	mustUnderstand := cc.has("must-understand") // status understood, checked above
	switch {
	case cc.has("no-store") && !mustUnderstand:
		// §5.2.2.3: a cache that understands the status ignores no-store
		// when must-understand is present.
		return storePlan{}, "no-store"
	case cc.has("private"):
		return storePlan{}, "private"
	case hasHeader(hdr, "Set-Cookie"):
		return storePlan{}, "set-cookie"
	case cr.authenticated() && !cc.has("public") && !cc.has("s-maxage") && !cc.has("must-revalidate"):
		// RFC 9111 §3.5: a shared cache stores answers to requests with
		// Authorization only when the origin explicitly allows it.
		return storePlan{}, "authorization"
	}
	for _, name := range varyNames(hdr) {
		if name == "*" {
			return storePlan{}, "vary-star"
		}
	}
	if len(rt.ContentTypes) > 0 && !rt.allowsContentTypes(hdr.Values("Content-Type")) {
		return storePlan{}, "content-type"
	}
	plan := storePlan{responseTime: now, freshFor: freshFor}
	plan.initialAge = initialAge(hdr, requestTime, now)
	plan.swr = max(time.Duration(rt.StaleWhileRevalidate), cc.seconds("stale-while-revalidate"))
	plan.sie = max(time.Duration(rt.StaleIfError), cc.seconds("stale-if-error"))
	if cc.has("must-revalidate") || cc.has("proxy-revalidate") || (cc.has("s-maxage") && !rt.ForceTTL) || isErrorStatus(status) {
		// s-maxage implies proxy-revalidate for a shared cache
		// (§5.2.2.10); a stale error is never worth serving.
		plan.swr, plan.sie = 0, 0
	}
	plan.noCache = cc.has("no-cache") && !rt.ForceTTL
	keepFor := max(plan.swr, plan.sie)
	switch {
	case hdr.Get("ETag") != "" || hdr.Get("Last-Modified") != "":
		// Kept past its freshness, to be revalidated rather than refetched.
		keepFor = max(keepFor, revalidationWindow)
	case plan.noCache:
		return storePlan{}, "no-cache"
	case plan.freshFor-plan.initialAge <= 0:
		return storePlan{}, "not-fresh"
	}
	plan.storeTTL = max(plan.freshFor-plan.initialAge, 0) + keepFor
	plan.storeTTL = min(plan.storeTTL, time.Duration(h.MaxTTL))
	// Store whatever is still fresh for at least Redis's expiry resolution:
	// Date's one-second granularity makes a ttl of 1s or max-age=1 arrive
	// with less than a second left.
	if plan.storeTTL < time.Millisecond {
		return storePlan{}, "stale-on-arrival"
	}
	return plan, ""
}

// freshness is a response's freshness lifetime in this cache, or why its
// status keeps it out. The origin's explicit freshness makes any final
// status storable (RFC 9111 §3; with must-understand, only one the cache
// understands), an unlisted 4xx or 5xx only
// when it is s-maxage or a targeted field; the configured status list
// only says which statuses get the route's ttl or a heuristic lifetime
// (§4.2.2) when the origin gives none. A route's ttl never applies to an
// error, even when forced.
func (h *Handler) freshness(rt *Route, status int, cc cacheControl, targeted bool, hdr http.Header, now time.Time) (time.Duration, string) {
	listed := h.cacheable[status] // an operator's list extends what is understood
	switch {
	case !listed && !storableStatus(status):
		return 0, "status"
	case cc.has("must-understand") && !listed && !understoodStatus(status):
		return 0, "must-understand"
	}
	date, ok := parseHTTPDate(hdr.Get("Date"))
	if !ok {
		date = now
	}
	expires := hdr.Values("Expires")
	if targeted {
		expires = nil // RFC 9213 §2.2
	}
	lifetime, explicit := explicitFreshness(cc, expires, date)
	switch {
	case rt.ForceTTL && !isErrorStatus(status) && listed:
		return time.Duration(rt.TTL), ""
	case explicit && !listed && status >= 400 && !cc.has("s-maxage") && !targeted:
		// An unlisted error needs freshness meant for shared caches: a
		// framework's blanket max-age on an error that an odd, unkeyed
		// request header provoked must not poison the entry (CPDoS).
		return 0, "status"
	case explicit:
		return lifetime, ""
	case !listed:
		return 0, "status"
	case rt.TTL > 0 && !isErrorStatus(status):
		return time.Duration(rt.TTL), ""
	}
	if lm, ok := parseHTTPDate(hdr.Get("Last-Modified")); ok && heuristicallyCacheable(status) && rt.heuristicPercent > 0 {
		return heuristicFreshness(lm, date, rt.heuristicPercent, heuristicLimit), ""
	}
	return 0, ""
}

func (rt *Route) allowsContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	for _, allowed := range rt.ContentTypes {
		if strings.EqualFold(mt, allowed) {
			return true
		}
	}
	return false
}

// stampWriter marks a response that went to the upstream without the cache
// (X-Cache: SKIP), and lets a hook see the status before the client does.
type stampWriter struct {
	http.ResponseWriter
	h        *Handler
	xcache   string
	fwd      string
	detail   string
	wrote    bool
	onHeader func(code int, hdr http.Header)
}

func (sw *stampWriter) WriteHeader(code int) {
	if code < 200 || sw.wrote {
		sw.ResponseWriter.WriteHeader(code)
		return
	}
	sw.wrote = true
	hdr := sw.Header()
	if sw.onHeader != nil {
		sw.onHeader(code, hdr)
	}
	sw.h.stripInternal(hdr)
	hdr.Set("X-Cache", sw.xcache)
	hdr.Add("Cache-Status", cacheStatusForwarded(sw.fwd, code, sw.detail))
	sw.ResponseWriter.WriteHeader(code)
}

func (sw *stampWriter) Write(p []byte) (int, error) {
	if !sw.wrote {
		sw.WriteHeader(http.StatusOK)
	}
	return sw.ResponseWriter.Write(p)
}

func (sw *stampWriter) Flush() {
	if !sw.wrote {
		sw.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(sw.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection, for
// hijacking (WebSocket) and deadlines.
func (sw *stampWriter) Unwrap() http.ResponseWriter { return sw.ResponseWriter }

// discardWriter absorbs the response of a background refresh.
type discardWriter struct{ header http.Header }

func newDiscardWriter() *discardWriter { return &discardWriter{header: make(http.Header)} }

func (d *discardWriter) Header() http.Header         { return d.header }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

// cacheStatusForwarded is the Cache-Status member of a response the cache
// forwarded without storing (RFC 9211).
func cacheStatusForwarded(fwd string, status int, detail string) string {
	s := cacheStatusName + "; fwd=" + fwd
	if status > 0 {
		s += "; fwd-status=" + strconv.Itoa(status)
	}
	if detail != "" {
		s += "; detail=" + detail
	}
	return s
}

// requestDirectives is what the client's Cache-Control asks of the cache.
// Unless the handler honours request directives, only only-if-cached is
// obeyed, so clients cannot force traffic onto the origin.
type requestDirectives struct {
	forceMiss    bool          // no-cache, or max-age=0: go to the origin
	maxAge       time.Duration // -1: none
	minFresh     time.Duration
	maxStale     time.Duration // -1: none; serve stale up to this long
	onlyIfCached bool
	noStore      bool // the answer must not be stored (§5.2.1.5)
}

func (cr *cacheRequest) requestDirectives() requestDirectives {
	d := requestDirectives{maxAge: -1, maxStale: -1}
	values := cr.r.Header.Values("Cache-Control")
	if len(values) == 0 {
		return d
	}
	cc := parseCacheControl(values)
	d.onlyIfCached = cc.has("only-if-cached")
	if !cr.h.honorRequestCC {
		return d
	}
	if v, ok := cc.get("max-age"); ok {
		d.maxAge = parseSeconds(v)
	}
	d.forceMiss = cc.has("no-cache") || d.maxAge == 0
	d.noStore = cc.has("no-store")
	d.minFresh = cc.seconds("min-fresh")
	if v, ok := cc.get("max-stale"); ok {
		if v == "" {
			d.maxStale = time.Duration(1<<31-1) * time.Second
		} else {
			d.maxStale = parseSeconds(v)
		}
	}
	return d
}

// acceptsFresh reports whether e may be served as a hit.
func (d requestDirectives) acceptsFresh(e *entry, now time.Time) bool {
	age := e.age(now)
	if e.noCache || age >= e.freshFor {
		return false
	}
	if d.maxAge >= 0 && age > d.maxAge {
		return false
	}
	return d.minFresh <= 0 || e.freshFor-age >= d.minFresh
}

// acceptsStale reports whether the client's max-stale lets a stale e be
// served without revalidation.
func (d requestDirectives) acceptsStale(e *entry, now time.Time) bool {
	if d.maxStale < 0 || e.noCache || e.mustRevalidate() || isErrorStatus(e.status) {
		return false
	}
	return e.age(now)-e.freshFor <= d.maxStale
}

// staleWindow is how long past its freshness the stale entry may stand in
// for a failed upstream: its stale-if-error or, when the origin could not
// be reached at all (err is set), up to stale_if_unreachable (RFC 9111
// §4.2.4), unless the origin forbade serving it stale or it is an error.
func (cr *cacheRequest) staleWindow(err error) time.Duration {
	e := cr.stale
	if err == nil || e.noCache || e.mustRevalidate() || isErrorStatus(e.status) {
		return e.sie
	}
	return max(e.sie, time.Duration(cr.h.StaleIfUnreachable))
}
