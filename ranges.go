package rediscache

import (
	"net/http"
	"strconv"
	"strings"
)

// Range requests are answered from stored complete 200 responses (RFC 9110
// §14, RFC 9111 §3.4). On a miss the upstream is asked for the whole
// response (upstreamRequest drops Range and If-Range), which is stored and
// then answered as a range here, so one fill serves every range.

// isBytesRange reports whether a Range header is in the bytes unit, the
// only one the cache answers; a Range in another unit skips the cache.
func isBytesRange(v string) bool {
	unit, _, ok := strings.Cut(v, "=")
	return ok && strings.EqualFold(strings.TrimSpace(unit), "bytes")
}

// serveRange answers a GET with Range from a stored 200: 206 with one
// part, or 416 when no range is satisfiable. It reports false, leaving
// the response untouched, when the whole representation is the answer: no
// Range, If-Range not matching, several ranges, or another status.
//
// Ranges apply to the representation sent (see selectRepresentation): the
// coded bytes for a client that takes the stored coding, the decoded ones
// for any other.
func (cr *cacheRequest) serveRange(w http.ResponseWriter, rep representation) bool {
	r := cr.r
	spec := r.Header.Get("Range")
	if spec == "" || r.Method != http.MethodGet || rep.e.status != http.StatusOK {
		return false
	}
	hdr := w.Header()
	if ir := r.Header.Get("If-Range"); ir != "" && !ifRangeMatches(ir, hdr) {
		return false
	}
	size := rep.size
	br, outcome := selectRange(spec, size)
	switch outcome {
	case rangeSatisfiable:
		hdr.Set("Content-Range", "bytes "+strconv.FormatInt(br.first, 10)+"-"+strconv.FormatInt(br.last, 10)+"/"+strconv.FormatInt(size, 10))
		hdr.Set("Content-Length", strconv.FormatInt(br.last-br.first+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		cr.writeBody(w, rep, br.first, br.last-br.first+1)
	case rangeUnsatisfiable:
		hdr.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		hdr.Set("Content-Length", "0")
		hdr.Del("Content-Type")
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
	default:
		return false
	}
	return true
}
