package rediscache

import (
	"net/http"
	"strconv"
)

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

func (d *discardWriter) Header() http.Header { return d.header }

func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

func (d *discardWriter) WriteHeader(int) {}

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
