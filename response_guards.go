package rediscache

import (
	"errors"
	"net/http"
	"strings"
)

// Guards of the capture writer against hostile answers and hostile load:
// interim responses, late fields and trailers, and the in-flight budget.

// writeInterim sends a 1xx response with the fields the upstream gave it,
// and then removes them again: the client's header map is also the final
// response's, and the 1xx's fields must not leak into it.
func (cw *captureWriter) writeInterim(code int) {
	dst := cw.w.Header()
	saved := dst.Clone()
	copyHeader(dst, cw.header)
	cw.w.WriteHeader(code)
	clear(dst)
	copyHeader(dst, saved)
}

// growBody makes room for n more bytes of body, within max_entry_size and
// the in-flight budget; it reports false when the budget has no room.
// Room grows by doubling, and the whole new capacity is reserved twice:
// once for the body, once for its encoded copy, which the store write
// makes after the client has it all, when slow clients that started
// together all finish together.
func (cw *captureWriter) growBody(n int) bool {
	need := len(cw.body) + n
	if need <= cap(cw.body) {
		return true
	}
	size := min(max(need, 2*cap(cw.body), 4096), int(max(cw.cr.h.MaxEntrySize, int64(need))))
	if !cw.cr.hold().grow(2 * int64(size-cap(cw.body))) {
		return false
	}
	grown := make([]byte, len(cw.body), size)
	copy(grown, cw.body)
	cw.body = grown
	return true
}

// lateUnstorable names why a response held for the store must not be
// stored after all, because of fields the upstream added after its header:
// trailers (reverse_proxy adds them under http.TrailerPrefix) or fields
// written into the header map late. A Set-Cookie among them would be
// replayed to everyone.
func (cw *captureWriter) lateUnstorable() string {
	for name := range cw.header {
		if strings.EqualFold(strings.TrimPrefix(name, http.TrailerPrefix), "Set-Cookie") {
			return "set-cookie"
		}
	}
	return ""
}

// isEventStream reports whether any Content-Type line announces a stream
// of events, which never ends and so is never stored.
func isEventStream(hdr http.Header) bool {
	for _, ct := range hdr.Values("Content-Type") {
		if strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct)), "text/event-stream") {
			return true
		}
	}
	return false
}

// allowsContentTypes reports whether the response has a Content-Type and
// every line of it is allowed: a client may act on any of them.
func (rt *Route) allowsContentTypes(lines []string) bool {
	for _, ct := range lines {
		if !rt.allowsContentType(ct) {
			return false
		}
	}
	return len(lines) > 0
}

// errResponseFinished answers a write that arrives after the request's
// ServeHTTP returned; nothing may reach that response any more.
var errResponseFinished = errors.New("redis_cache: response already finished")
