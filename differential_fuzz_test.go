package rediscache

import (
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"sort"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// FuzzSameKeySameOrigin is a differential test of the request sanitation
// and the key: two requests that map to the same cache key must reach the
// origin (after reverse_proxy's own changes) with the same method, host,
// path, query, body and every field the origin may read without naming it
// in Vary: the key's and the route's Vary fields, the forwarding and
// override family, and whether credentials are present.
//
// CI runs the seeds; fuzz longer with
//
//	go test -run '^$' -fuzz FuzzSameKeySameOrigin -fuzztime 10m .
func FuzzSameKeySameOrigin(f *testing.F) {
	f.Add(true, "app.test", "app.test", "/p", "", "X-User-Id: victim", "Connection: close, X-User-Id", "")
	f.Add(false, "app.test", "app.test", "/p", "", "Accept-Language: fr", "Connection: Accept-Language", "")
	f.Add(false, "app.test", "app.test", "/p", "", "Authorization: junk", "Connection: Authorization", "")
	f.Add(false, "app.test", "app.test", "/p", "", "", "", "attacker body")
	f.Add(true, "app.test", "app.test", "/p", "platform=web", "Cookie: a=1", "X-User-Id: ", "")
	f.Add(true, "app.test", "app.test", "/p", "", "X-User-Id: a:b\nX-Platform: c", "X-User-Id: a\nX-Platform: b:c", "")
	f.Add(false, "app.test", "app.test", "/p", "", "", "Forwarded: host=evil\nX-Forwarded-Prefix: /evil\nX-Original-Host: evil", "")
	f.Add(false, "app.test", "APP.test.", "/p", "", "", "", "")
	f.Add(false, "app.test", "app.test", "/p", "", "", "Cookie: \nCookie: session=alice", "")
	f.Add(false, "app.test", "app.test", "/p", "", "", "Authorization: \nAuthorization: Bearer alice", "")
	f.Add(false, "app.test", "app.test", "/p", "b=2&a=1", "Te: trailers", "Connection: te\nKeep-Alive: 1", "")
	keyed := &Route{Name: "keyed", Path: "/*", Key: "{http.request.header.X-User-Id}:{http.request.header.X-Platform}:{query.platform}",
		KeyOptional: []string{"query.platform", "http.request.header.X-Platform"}, Vary: []string{"Accept-Language"}}
	open := &Route{Name: "open", Path: "/*", Vary: []string{"Accept-Language"}}
	h := testHandler(keyed, open)
	f.Fuzz(func(t *testing.T, useKeyed bool, hostA, hostB, path, query, linesA, linesB, bodyB string) {
		rt := open
		if useKeyed {
			rt = keyed
		}
		a := fuzzRequest(hostA, path, query, linesA, "")
		b := fuzzRequest(hostB, path, query, linesA+"\n"+linesB, bodyB)
		if a == nil || b == nil {
			return
		}
		keyA, viewA, okA := fuzzCacheView(h, rt, a)
		keyB, viewB, okB := fuzzCacheView(h, rt, b)
		if okA && okB && keyA == keyB && viewA != viewB {
			t.Fatalf("one key %s, two origin requests:\n%s\n---\n%s", keyA, viewA, viewB)
		}
	})
}

// fuzzRequest builds a GET as Go's server would hand it to Caddy, or nil
// when the server would reject it.
func fuzzRequest(host, path, query, lines, body string) *http.Request {
	if host == "" || strings.ContainsAny(host, " /\\?#@\r\n\t\x00%") || !strings.HasPrefix(path, "/") || strings.ContainsAny(path+query, " \r\n\t\x00#") {
		return nil
	}
	r, err := http.NewRequest(http.MethodGet, "http://"+host+path+"?"+query, nil)
	if err != nil {
		return nil
	}
	r.Host = host
	r.RequestURI = r.URL.RequestURI()
	for _, line := range strings.Split(lines, "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if name == "" || strings.ContainsAny(name, " \t\r\n\x00:()<>@,;\"/[]?={}") || strings.ContainsAny(value, "\r\n\x00") {
			continue
		}
		name = textproto.CanonicalMIMEHeaderKey(name)
		if name == "Host" || name == "Content-Length" || name == "Transfer-Encoding" {
			continue // the server consumes these itself
		}
		r.Header[name] = append(r.Header[name], value)
	}
	if body != "" {
		r.Body = io.NopCloser(strings.NewReader(body))
		r.ContentLength = -1 // HTTP/2 and HTTP/3 need no length
	}
	return r
}

// fuzzCacheView runs a request through the handler's sanitation and key,
// then reverse_proxy's own changes, and renders what the origin receives.
// ok is false when the request would skip the cache.
func fuzzCacheView(h *Handler, rt *Route, r *http.Request) (key, view string, ok bool) {
	normPath, canonical := normalizedPath(r)
	if hasHeader(r.Header, "Upgrade") {
		return "", "", false
	}
	repl := caddyhttp.NewTestReplacer(r)
	sanitizeRequest(r)
	if h.uncacheableRequest(r, rt, canonical) != "" {
		return "", "", false
	}
	ek := evaluatedKey{}
	if rt.keyRepl {
		if ek = rt.evaluateKey(repl, r.Header); ek.missing || ek.ambiguous {
			return "", "", false
		}
	}
	h.stripUnkeyed(r, rt)
	key = h.buildKeyFrom(r, rt, normPath, ek).primary
	return key, fuzzOriginView(r, rt), true
}

// fuzzOriginView applies what reverse_proxy does to a request (written
// here from its documentation, not from request.go) and renders the parts
// an origin may read.
func fuzzOriginView(r *http.Request, rt *Route) string {
	hdr := r.Header.Clone()
	for _, line := range hdr["Connection"] {
		for _, name := range strings.Split(line, ",") {
			if name = textproto.TrimString(name); name != "" {
				hdr.Del(name)
			}
		}
	}
	for _, name := range []string{"Alt-Svc", "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		// Replaced by reverse_proxy for clients that are not trusted proxies.
		"X-Forwarded-For", "X-Forwarded-Proto"} {
		delete(hdr, name)
	}
	body := ""
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		body = string(b)
	}
	var v strings.Builder
	fmt.Fprintf(&v, "GET %s %s?%s body=%q\n", r.Host, r.URL.Path, sortedQuery(r.URL.RawQuery), body)
	// A list field named in Vary is read as one list, whatever its lines.
	fmt.Fprintf(&v, "Accept-Language=%q\n", strings.Join(hdr.Values("Accept-Language"), ", "))
	read := []string{"Forwarded", "X-Forwarded-Host", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Uri",
		"X-Forwarded-Path", "X-Original-Host", "X-Forwarded-Server", "X-Forwarded-Scheme", "X-Host",
		"X-Original-Url", "X-Rewrite-Url", "X-Override-Url", "X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}
	if rt.keyRepl {
		// Fields the key reads; an unkeyed route leaves them to Vary.
		read = append(read, "X-User-Id", "X-Platform")
	}
	sort.Strings(read)
	for _, name := range read {
		fmt.Fprintf(&v, "%s=%q\n", name, hdr.Values(name))
	}
	if !rt.trustsCredentials() {
		// Unkeyed, credentials only choose a bucket.
		fmt.Fprintf(&v, "credentials=%v,%v\n", len(hdr.Values("Authorization")) > 0, len(hdr.Values("Cookie")) > 0)
	}
	return v.String()
}
