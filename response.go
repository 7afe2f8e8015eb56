package rediscache

import (
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
