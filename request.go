package rediscache

import (
	"net"
	"net/http"
	"net/textproto"
	"strings"
)

// The request the cache keys must be the request the origin reads. Before
// any key, variant or credential decision, a cacheable request is put in
// the form in which the upstream will receive it: without the fields that
// reverse_proxy drops as hop-by-hop, with a normalised Host, and without
// the fields through which a client could make the origin answer something
// the key does not describe.

// hopByHopRequest are the request fields reverse_proxy removes before
// sending a request upstream (besides those named in Connection).
var hopByHopRequest = canonicalHeaderNames(
	"Alt-Svc", "Connection", "Proxy-Connection", "Keep-Alive",
	"Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade",
)

// defaultStrippedHeaders let a client make the upstream answer something
// other than what the key describes: URL and method overrides, and the
// forwarding family from which frameworks (Spring, Symfony, Rails, Django,
// Express) build links and redirects. They are removed from cacheable
// requests unless the route keys on them. reverse_proxy itself replaces
// X-Forwarded-For, -Proto and -Host unless the client is a trusted proxy,
// but a handler before it (or another proxy module) may not, so -Host is
// listed too. Kept in canonical form, so removing them costs no allocation.
var defaultStrippedHeaders = canonicalHeaderNames(
	"X-Original-URL", "X-Rewrite-URL", "X-Override-URL",
	"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
	"X-Forwarded-Host", "X-Forwarded-Server", "X-Host", "X-Forwarded-Scheme",
	"Forwarded", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Uri",
	"X-Forwarded-Path", "X-Original-Host",
)

func canonicalHeaderNames(names ...string) []string {
	for i, name := range names {
		names[i] = http.CanonicalHeaderKey(name)
	}
	return names
}

// sanitizeRequest puts a GET or HEAD in the form the upstream will
// receive, before anything is derived from it: what it removes,
// reverse_proxy would remove anyway, and hosts compare without case.
func sanitizeRequest(r *http.Request) {
	removeConnectionHeaders(r.Header)
	for _, name := range hopByHopRequest {
		if name == "Te" && headerHasToken(r.Header["Te"], "trailers") {
			// reverse_proxy keeps this one value (golang/go#21096).
			r.Header["Te"] = []string{"trailers"}
			continue
		}
		delete(r.Header, name)
	}
	r.Host = normalizeHost(r.Host)
}

// stripUnkeyed removes from a request that will use the cache the fields
// through which a client could change the answer without changing the key.
// Requests that skip the cache keep them: their answers reach no one else.
func (h *Handler) stripUnkeyed(r *http.Request, rt *Route) {
	for _, name := range h.strippedHeaders {
		if !rt.keysOn(name) {
			delete(r.Header, name)
		}
	}
}

// removeConnectionHeaders deletes every field named in any Connection line,
// as reverse_proxy does.
func removeConnectionHeaders(hdr http.Header) {
	for _, line := range hdr["Connection"] {
		for name := range strings.SplitSeq(line, ",") {
			if name = textproto.TrimString(name); name != "" {
				hdr.Del(name)
			}
		}
	}
}

func headerHasToken(lines []string, token string) bool {
	for _, line := range lines {
		for item := range strings.SplitSeq(line, ",") {
			if strings.EqualFold(textproto.TrimString(item), token) {
				return true
			}
		}
	}
	return false
}

// normalizeHost lower-cases a Host and removes the trailing dot of a fully
// qualified name, keeping any port, so that APP.test, app.test. and
// app.test reach the origin (and the key) as one host.
func normalizeHost(host string) string {
	if isNormalHost(host) {
		return host // the common case costs no allocation
	}
	name, port, err := net.SplitHostPort(host)
	if err != nil {
		return strings.ToLower(strings.TrimSuffix(host, "."))
	}
	return net.JoinHostPort(strings.ToLower(strings.TrimSuffix(name, ".")), port)
}

func isNormalHost(host string) bool {
	for i := 0; i < len(host); i++ {
		if c := host[i]; c >= 'A' && c <= 'Z' {
			return false
		}
	}
	return !strings.HasSuffix(host, ".") && !strings.Contains(host, ".:")
}

// hasHeader reports whether any line of the field is present, even an empty
// one: policy checks must see every line, not only the first.
func hasHeader(hdr http.Header, name string) bool {
	return len(hdr.Values(name)) > 0
}

// hasRequestBody reports whether a request carries a body, whatever the
// protocol: HTTP/2 and HTTP/3 requests with a body need no Content-Length
// (ContentLength is then -1).
func hasRequestBody(r *http.Request) bool {
	return r.ContentLength != 0 || len(r.TransferEncoding) > 0
}

// keysOn reports whether the route's key or Vary list reads the request
// field name, so that stripping it would lose what the key describes.
func (rt *Route) keysOn(name string) bool {
	for _, v := range rt.Vary {
		if strings.EqualFold(v, name) {
			return true
		}
	}
	for _, p := range rt.keyParts {
		if p.header != "" && strings.EqualFold(p.header, name) {
			return true
		}
	}
	return false
}

// track registers a capture writer, so that close finishes it.
func (cr *cacheRequest) track(cw *captureWriter) {
	cr.writers = append(cr.writers, cw)
}

// close runs when ServeHTTP returns: after it, no timer of the request may
// touch the response, and the bodies it held leave the in-flight budget.
func (cr *cacheRequest) close() {
	for _, cw := range cr.writers {
		cw.finish()
	}
	cr.hold().releaseAll()
}

// hold is the request's share of the in-flight budget.
func (cr *cacheRequest) hold() *budgetHold {
	if cr.budget == nil {
		cr.budget = &budgetHold{} // no budget: every reservation fits
	}
	return cr.budget
}
