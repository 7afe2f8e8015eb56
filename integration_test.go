package rediscache

// End-to-end tests for issue 2: a real Caddy binary built from ./cmd/caddy,
// a real redis-server, and a counting upstream. Every test asserts what a
// user sees: status, headers, body, upstream call counts and the contents of
// the test's own Redis.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

// integSite is a site body with a redis_cache block (settings given without
// the surrounding braces) in front of a reverse_proxy to u. No `route`
// wrapper: the directive must be ordered by itself.
func integSite(u *upstream, cacheBlock string) string {
	return "\tredis_cache {\n" + cacheBlock + "\n\t}\n\treverse_proxy " + u.URL
}

// integRedis is the redis line of the functional tests. Their store timeout
// is generous: the default 100ms is exercised by the Redis failure tests,
// which run alone, while these run in parallel on machines that may be busy
// starting race-enabled Caddy processes, where a 100ms timeout would turn a
// healthy-but-starved Redis into an (intended) SKIP.
func integRedis(r *redisServer) string {
	return "\t\tredis " + r.URL() + "\n\t\ttimeout 2s"
}

// integExpect checks the status and X-Cache of a response, that every
// response through the cache carries a redis_cache Cache-Status, and that
// every stored response served (HIT, STALE, and a MISS that was stored)
// carries Age.
func integExpect(t *testing.T, label string, resp *http.Response, body string, status int, xcache string) {
	t.Helper()
	got := resp.Header.Get("X-Cache")
	if resp.StatusCode != status || got != xcache {
		t.Fatalf("%s: got %d X-Cache=%q (Cache-Status %q), want %d %q; body %q",
			label, resp.StatusCode, got, resp.Header.Values("Cache-Status"), status, xcache, integShort(body))
	}
	cs := strings.Join(resp.Header.Values("Cache-Status"), ", ")
	stored := xcache == "HIT" || xcache == "STALE" || (xcache == "MISS" && strings.Contains(cs, "stored"))
	if stored {
		if resp.Header.Get("Age") == "" {
			t.Fatalf("%s: %s response without Age header (headers %v)", label, xcache, resp.Header)
		}
		if _, err := strconv.Atoi(resp.Header.Get("Age")); err != nil {
			t.Fatalf("%s: Age %q is not an integer", label, resp.Header.Get("Age"))
		}
	}
	if !strings.Contains(cs, "redis_cache; ") {
		t.Fatalf("%s: Cache-Status %q, want a redis_cache entry", label, cs)
	}
}

// integNoCache checks a response that must not have been touched by the cache.
func integNoCache(t *testing.T, label string, resp *http.Response) {
	t.Helper()
	for _, name := range []string{"X-Cache", "Cache-Status", "Age"} {
		if v := resp.Header.Values(name); len(v) > 0 {
			t.Fatalf("%s: pass-through response carries %s: %q", label, name, v)
		}
	}
}

var integHitTTL = regexp.MustCompile(`^redis_cache; hit; ttl=(\d+)(;|$)`)

// integHitTTLOf returns the ttl of a "redis_cache; hit; ttl=N" Cache-Status.
func integHitTTLOf(t *testing.T, label string, resp *http.Response) int {
	t.Helper()
	cs := resp.Header.Get("Cache-Status")
	m := integHitTTL.FindStringSubmatch(cs)
	if m == nil {
		t.Fatalf("%s: Cache-Status %q, want `redis_cache; hit; ttl=N`", label, cs)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func integShort(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

// integBody decodes the default upstream body.
func integBody(t *testing.T, label, body string) upstreamBody {
	t.Helper()
	var b upstreamBody
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		t.Fatalf("%s: body %q is not the upstream's JSON: %v", label, integShort(body), err)
	}
	return b
}

// integSameHeaders compares two responses' headers, ignoring the ones that
// must differ between a MISS and a HIT.
func integSameHeaders(t *testing.T, label string, a, b http.Header) {
	t.Helper()
	skip := map[string]bool{"Age": true, "X-Cache": true, "Cache-Status": true}
	names := map[string]bool{}
	for k := range a {
		names[k] = true
	}
	for k := range b {
		names[k] = true
	}
	for k := range names {
		if skip[k] {
			continue
		}
		if strings.Join(a.Values(k), "\x00") != strings.Join(b.Values(k), "\x00") {
			t.Errorf("%s: header %s differs: %q vs %q", label, k, a.Values(k), b.Values(k))
		}
	}
}

// integEntryKeys lists the entry keys of a route in the test's Redis.
func integEntryKeys(r *redisServer, ns, route string) []string {
	r.t.Helper()
	return r.Keys(ns + ":" + route + ":*")
}

func integDo(t *testing.T, c *caddyProc, method, path string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := c.NewRequest(method, path, nil, headers...)
	if err != nil {
		t.Fatal(err)
	}
	return c.Do(req)
}

// integMissThenHit asserts GET path is a MISS answered by the upstream and an
// immediate repeat a HIT with the same status, body and headers, without a
// second upstream call. It returns the body.
func integMissThenHit(t *testing.T, c *caddyProc, u *upstream, path string, headers ...string) string {
	t.Helper()
	upPath := strings.SplitN(path, "?", 2)[0]
	before := u.Calls("GET", upPath)
	r1, b1 := c.Get(path, headers...)
	integExpect(t, "first GET "+path, r1, b1, 200, "MISS")
	if !strings.Contains(r1.Header.Get("Cache-Status"), "stored") {
		t.Fatalf("first GET %s: Cache-Status %q, want a stored miss", path, r1.Header.Get("Cache-Status"))
	}
	if n := u.Calls("GET", upPath) - before; n != 1 {
		t.Fatalf("first GET %s: upstream called %d times, want 1", path, n)
	}
	r2, b2 := c.Get(path, headers...)
	integExpect(t, "second GET "+path, r2, b2, 200, "HIT")
	if b2 != b1 {
		t.Fatalf("GET %s: HIT body %q differs from MISS body %q", path, b2, b1)
	}
	if n := u.Calls("GET", upPath) - before; n != 1 {
		t.Fatalf("GET %s: upstream called %d times for a MISS and a HIT, want 1", path, n)
	}
	integSameHeaders(t, "GET "+path, r1.Header, r2.Header)
	return b1
}

// integCount counts non-overlapping occurrences of substr in the logs.
func integCount(c *caddyProc, substr string) int { return strings.Count(c.Logs(), substr) }

// ---------------------------------------------------------------------------
// 1. The module is built into Caddy
// ---------------------------------------------------------------------------

func TestIntegrationListModules(t *testing.T) {
	t.Parallel()
	bin := caddyBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy list-modules: %v\n%s", err, out)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		lines[strings.TrimSpace(l)] = true
	}
	for _, id := range []string{"http.handlers.redis_cache", "admin.api.redis_cache", "http.handlers.reverse_proxy"} {
		if !lines[id] {
			t.Errorf("caddy list-modules does not list %s; output:\n%s", id, out)
		}
	}
}

// ---------------------------------------------------------------------------
// 2. Caddyfile and JSON configs; route order; pass-through
// ---------------------------------------------------------------------------

func TestIntegrationConfigFormats(t *testing.T) {
	t.Parallel()

	t.Run("caddyfile", func(t *testing.T) {
		t.Parallel()
		r := startRedis(t)
		u := newUpstream(t)
		c := startCaddy(t, integSite(u, fmt.Sprintf(`%s
		route special /api/special* 5m
		route api /api/* 5m
		route shadowed /api/special/deep* 5m`, integRedis(r))))

		integMissThenHit(t, c, u, "/api/special/x")
		if k := integEntryKeys(r, "rcache", "special"); len(k) != 1 {
			t.Fatalf("after /api/special/x: special entry keys %v, want 1", k)
		}
		if k := integEntryKeys(r, "rcache", "api"); len(k) != 0 {
			t.Fatalf("after /api/special/x: api entry keys %v, want none (first match wins)", k)
		}

		// A later, more specific route never sees requests an earlier one matches.
		integMissThenHit(t, c, u, "/api/special/deep/1")
		if k := integEntryKeys(r, "rcache", "shadowed"); len(k) != 0 {
			t.Fatalf("/api/special/deep/1 stored under the shadowed route: %v", k)
		}
		if k := integEntryKeys(r, "rcache", "special"); len(k) != 2 {
			t.Fatalf("special entry keys %v, want 2", k)
		}

		integMissThenHit(t, c, u, "/api/other")
		if k := integEntryKeys(r, "rcache", "api"); len(k) != 1 {
			t.Fatalf("api entry keys %v, want 1", k)
		}

		// The route identity is what a route purge acts on.
		if code, body := c.Admin("POST", "/redis_cache/purge", `{"route":"special"}`); code != 200 {
			t.Fatalf("purge route special: %d %s", code, body)
		}
		resp, body := c.Get("/api/special/x")
		integExpect(t, "after purge of special", resp, body, 200, "MISS")
		resp, body = c.Get("/api/other")
		integExpect(t, "api route after purge of special", resp, body, 200, "HIT")

		// Paths that match no route pass through untouched.
		for _, p := range []string{"/public/x", "/apiary", "/"} {
			seen := map[string]bool{}
			for i := 0; i < 3; i++ {
				resp, body := c.Get(p)
				if resp.StatusCode != 200 {
					t.Fatalf("unmatched GET %s: status %d", p, resp.StatusCode)
				}
				integNoCache(t, "unmatched GET "+p, resp)
				seen[body] = true
			}
			if n := u.Calls("GET", p); n != 3 {
				t.Fatalf("unmatched GET %s: upstream called %d times, want 3", p, n)
			}
			if len(seen) != 3 {
				t.Fatalf("unmatched GET %s: bodies repeated, a response was reused: %v", p, seen)
			}
		}
		// And so do mutations on them.
		resp, _ = integDo(t, c, "POST", "/public/x")
		integNoCache(t, "unmatched POST", resp)
	})

	t.Run("json", func(t *testing.T) {
		t.Parallel()
		r := startRedis(t)
		u := newUpstream(t)
		upHost := strings.TrimPrefix(u.URL, "http://")
		handlerJSON := fmt.Sprintf(`{
        "handler": "redis_cache",
        "redis": [%q],
        "timeout": "2s",
        "namespace": "jsonns",
        "routes": [
          {"name": "special", "path": "/api/special*", "ttl": "5m"},
          {"name": "dash", "path": "/api/*", "ttl": "5m", "key": "{http.request.header.X-User-Id}"}
        ]
      }`, r.URL())

		// It is the JSON the Caddyfile adapter makes of the same settings.
		adapted, err := caddyAdapt(t, integSite(u, fmt.Sprintf(`%s
		namespace jsonns
		route special /api/special* 5m
		route dash /api/* 5m {
			key {http.request.header.X-User-Id}
		}`, integRedis(r))))
		if err != nil {
			t.Fatalf("caddy adapt: %v", err)
		}
		var doc any
		if err := json.Unmarshal([]byte(adapted), &doc); err != nil {
			t.Fatalf("adapted JSON: %v\n%s", err, adapted)
		}
		fromCaddyfile, _ := json.Marshal(integFindHandler(doc, "redis_cache"))
		var want, got Handler
		if err := json.Unmarshal(fromCaddyfile, &want); err != nil {
			t.Fatalf("adapted handler %s: %v", fromCaddyfile, err)
		}
		if err := json.Unmarshal([]byte(handlerJSON), &got); err != nil {
			t.Fatalf("handwritten handler: %v", err)
		}
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("handwritten JSON handler differs from the adapted Caddyfile:\nadapted:     %s\nhandwritten: %s", fromCaddyfile, handlerJSON)
		}

		cfg := fmt.Sprintf(`{
  "admin": {"listen": "127.0.0.1:{{ADMIN_PORT}}"},
  "apps": {"http": {"servers": {"s": {
    "listen": ["127.0.0.1:{{HTTP_PORT}}"],
    "routes": [{"handle": [
      %s,
      {"handler": "reverse_proxy", "upstreams": [{"dial": %q}]}
    ]}]
  }}}}
}`, handlerJSON, upHost)
		c := startCaddyJSON(t, cfg)

		integMissThenHit(t, c, u, "/api/special/x")
		if k := integEntryKeys(r, "jsonns", "special"); len(k) != 1 {
			t.Fatalf("JSON config: special entry keys %v, want 1", k)
		}
		b := integMissThenHit(t, c, u, "/api/d", "X-User-Id: u1")
		if got := integBody(t, "JSON dash", b).User; got != "u1" {
			t.Fatalf("JSON dash: user %q", got)
		}
		if k := r.Keys("jsonns:dash:u1:*"); len(k) != 1 {
			t.Fatalf("JSON config: dash entry keys for u1 %v, want 1", k)
		}
		if k := r.Keys("rcache:*"); len(k) != 0 {
			t.Fatalf("JSON config: keys outside the namespace: %v", k)
		}
		for i := 0; i < 2; i++ {
			resp, _ := c.Get("/other")
			integNoCache(t, "JSON unmatched", resp)
		}
		if n := u.Calls("GET", "/other"); n != 2 {
			t.Fatalf("JSON unmatched: upstream called %d times, want 2", n)
		}
	})
}

// ---------------------------------------------------------------------------
// 3. Cached responses: HIT/MISS, headers, keys, SKIP, HEAD, TTL
// ---------------------------------------------------------------------------

func TestIntegrationCaching(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	var custom atomic.Int64
	u.Handle("/api/content/headers", func(w http.ResponseWriter, req *http.Request) {
		n := custom.Add(1)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("ETag", fmt.Sprintf(`"v%d"`, n))
		w.Header().Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
		w.Header().Add("X-Multi", "a")
		w.Header().Add("X-Multi", "b")
		w.Header().Set("X-Custom", "kept")
		w.WriteHeader(200)
		fmt.Fprintf(w, `{"custom":%d}`, n)
	})
	c := startCaddy(t, integSite(u, fmt.Sprintf(`%s
		route dash /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
		}
		route content /api/content* 5m
		route open /api/open* 5m
		route short /api/short* 3s`, integRedis(r))))

	t.Run("miss then hit", func(t *testing.T) {
		body := integMissThenHit(t, c, u, "/api/content/a?x=1")
		if b := integBody(t, "content", body); b.Path != "/api/content/a" || b.Query != "x=1" {
			t.Fatalf("upstream body %q", body)
		}
		resp, _ := c.Get("/api/content/a?x=1")
		if ttl := integHitTTLOf(t, "HIT", resp); ttl < 290 || ttl > 300 {
			t.Fatalf("HIT ttl=%d, want about 300", ttl)
		}
		if age, _ := strconv.Atoi(resp.Header.Get("Age")); age > 10 {
			t.Fatalf("HIT Age=%d, want a few seconds at most", age)
		}
		// A different query is a different entry.
		resp, body = c.Get("/api/content/a?x=2")
		integExpect(t, "other query", resp, body, 200, "MISS")

		// Upstream headers survive the round trip through Redis.
		integMissThenHit(t, c, u, "/api/content/headers")
		resp, body = c.Get("/api/content/headers")
		if body != `{"custom":1}` || resp.Header.Get("ETag") != `"v1"` || resp.Header.Get("X-Custom") != "kept" ||
			strings.Join(resp.Header.Values("X-Multi"), ",") != "a,b" || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" {
			t.Fatalf("HIT lost upstream headers/body: %q %v", body, resp.Header)
		}
		if resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Fatalf("HIT Content-Length %q for a %d-byte body", resp.Header.Get("Content-Length"), len(body))
		}
		// Conditional GET answered from the entry.
		resp, body = c.Get("/api/content/headers", `If-None-Match: "v1"`)
		if resp.StatusCode != 304 || body != "" || resp.Header.Get("X-Cache") != "HIT" {
			t.Fatalf("If-None-Match on a HIT: %d X-Cache=%q body %q", resp.StatusCode, resp.Header.Get("X-Cache"), body)
		}
		if n := u.Calls("GET", "/api/content/headers"); n != 1 {
			t.Fatalf("upstream called %d times, want 1", n)
		}

		// Redis holds the entry, with an expiry no longer than the route's TTL.
		keys := integEntryKeys(r, "rcache", "content")
		if len(keys) != 3 {
			t.Fatalf("content entry keys %v, want 3", keys)
		}
		for _, k := range keys {
			if !regexp.MustCompile(`^rcache:content:_:[0-9a-f]{32}$`).MatchString(k) {
				t.Errorf("entry key %q does not look like rcache:content:_:<hash>", k)
			}
			ttl, err := r.Client().PTTL(context.Background(), k).Result()
			if err != nil || ttl <= 0 {
				t.Errorf("entry %s: PTTL %v (%v), want an expiry", k, ttl, err)
			}
			// Entries without validators cannot be revalidated, so Redis
			// keeps them no longer than the route's TTL.
			raw, err := r.Client().Get(context.Background(), k).Bytes()
			if err != nil {
				t.Fatalf("entry %s: %v", k, err)
			}
			e, err := decodeEntry(raw)
			if err != nil {
				t.Fatalf("entry %s does not decode: %v", k, err)
			}
			if e.header.Get("ETag") == "" && e.header.Get("Last-Modified") == "" && ttl > 5*time.Minute {
				t.Errorf("entry %s without validators: PTTL %v, want at most the route's 5m", k, ttl)
			}
		}
	})

	t.Run("users never share an entry", func(t *testing.T) {
		alice := integMissThenHit(t, c, u, "/api/dashboard", "X-User-Id: alice")
		bob := integMissThenHit(t, c, u, "/api/dashboard", "X-User-Id: bob")
		if integBody(t, "alice", alice).User != "alice" || integBody(t, "bob", bob).User != "bob" {
			t.Fatalf("bodies: alice %q bob %q", alice, bob)
		}
		for i := 0; i < 2; i++ {
			ra, ba := c.Get("/api/dashboard", "X-User-Id: alice")
			rb, bb := c.Get("/api/dashboard", "X-User-Id: bob")
			integExpect(t, "alice again", ra, ba, 200, "HIT")
			integExpect(t, "bob again", rb, bb, 200, "HIT")
			if ba != alice || bb != bob {
				t.Fatalf("users got each other's data: alice %q bob %q", ba, bb)
			}
			if ra.Header.Get("Cache-Control") != "private" {
				t.Fatalf("per-user entry served with Cache-Control %q, want private", ra.Header.Get("Cache-Control"))
			}
		}
		if n := u.Calls("GET", "/api/dashboard"); n != 2 {
			t.Fatalf("upstream called %d times for two users, want 2", n)
		}
		if len(r.Keys("rcache:dash:alice:*")) != 1 || len(r.Keys("rcache:dash:bob:*")) != 1 {
			t.Fatalf("dash entries: %v", integEntryKeys(r, "rcache", "dash"))
		}
		// A user id with glob and separator characters stays inside its own key.
		integMissThenHit(t, c, u, "/api/dashboard", "X-User-Id: a*:b?[c]")
		if k := r.Keys("rcache:dash:a%2A%3Ab%3F%5Bc%5D:*"); len(k) != 1 {
			t.Fatalf("escaped key part not found; dash keys %v", integEntryKeys(r, "rcache", "dash"))
		}
		// An identity with Authorization is fine when the route is keyed.
		integMissThenHit(t, c, u, "/api/dashboard", "X-User-Id: carol", "Authorization: Bearer carol-token")
	})

	t.Run("empty key is skipped", func(t *testing.T) {
		before := len(integEntryKeys(r, "rcache", "dash"))
		calls := u.Calls("GET", "/api/dashboard")
		for i := 0; i < 3; i++ {
			resp, body := c.Get("/api/dashboard")
			integExpect(t, "no user id", resp, body, 200, "SKIP")
			if cs := resp.Header.Get("Cache-Status"); !strings.HasPrefix(cs, "redis_cache; fwd=bypass") || !strings.Contains(cs, "detail=empty-key") {
				t.Fatalf("Cache-Status %q, want redis_cache; fwd=bypass ... detail=empty-key", cs)
			}
			if b := integBody(t, "no user", body); b.User != "" {
				t.Fatalf("request without a user got user %q's data", b.User)
			}
		}
		if n := u.Calls("GET", "/api/dashboard") - calls; n != 3 {
			t.Fatalf("upstream called %d times for 3 skipped requests, want 3", n)
		}
		if k := r.Keys("rcache:dash:_:*"); len(k) != 0 {
			t.Fatalf("empty-key request stored: %v", k)
		}
		if after := len(integEntryKeys(r, "rcache", "dash")); after != before {
			t.Fatalf("dash entry keys went from %d to %d", before, after)
		}
	})

	t.Run("authorization and cookie are not stored on an unkeyed route", func(t *testing.T) {
		for _, h := range []struct {
			header, detail string
			xcache         []string
		}{
			// Issue 2 says SKIP. Issue 3 (RFC 9111 §3.5) lets a request with
			// Authorization go forward as a MISS whose answer is stored only
			// when the origin allows sharing (not the case here); either way
			// the upstream answers every time and nothing is stored.
			{"Authorization: Bearer secret", "authorization", []string{"SKIP", "MISS"}},
			{"Cookie: session=abc", "cookie", []string{"SKIP"}},
		} {
			p := "/api/open/" + h.detail
			stored := integEntryKeys(r, "rcache", "open")
			for i := 0; i < 3; i++ {
				resp, body := c.Get(p, h.header)
				xc := resp.Header.Get("X-Cache")
				if !integContains(h.xcache, xc) {
					t.Fatalf("%s: X-Cache %q (Cache-Status %q), want one of %v", h.header, xc, resp.Header.Get("Cache-Status"), h.xcache)
				}
				integExpect(t, h.header, resp, body, 200, xc)
				if cs := resp.Header.Get("Cache-Status"); !strings.HasPrefix(cs, "redis_cache; fwd=") || !strings.Contains(cs, "detail="+h.detail) || strings.Contains(cs, "stored") {
					t.Fatalf("%s: Cache-Status %q, want a forwarded, unstored response with detail=%s", h.header, cs, h.detail)
				}
				if b := integBody(t, h.header, body); b.N != u.Total() && b.Path != p {
					t.Fatalf("%s: body %q is not a fresh upstream answer", h.header, body)
				}
			}
			if n := u.Calls("GET", p); n != 3 {
				t.Fatalf("%s: upstream called %d times, want 3", h.header, n)
			}
			if k := integEntryKeys(r, "rcache", "open"); len(k) != len(stored) {
				t.Fatalf("%s: request stored: entry keys went from %v to %v", h.header, stored, k)
			}
			// Nothing was stored: an anonymous request is a MISS.
			resp, body := c.Get(p)
			integExpect(t, "anonymous after "+h.detail, resp, body, 200, "MISS")
			if n := u.Calls("GET", p); n != 4 {
				t.Fatalf("%s: upstream called %d times, want 4", h.header, n)
			}
		}
		// A cookie request is not answered from the anonymous entry either.
		resp, body := c.Get("/api/open/cookie", "Cookie: session=abc")
		integExpect(t, "cookie after anonymous", resp, body, 200, "SKIP")
		if n := u.Calls("GET", "/api/open/cookie"); n != 5 {
			t.Fatalf("cookie after anonymous: upstream called %d times, want 5", n)
		}
	})

	t.Run("HEAD is answered from the GET entry", func(t *testing.T) {
		getResp, getBody := c.Get("/api/content/a?x=1")
		integExpect(t, "GET", getResp, getBody, 200, "HIT")
		resp, body := integDo(t, c, "HEAD", "/api/content/a?x=1")
		integExpect(t, "HEAD", resp, body, 200, "HIT")
		if body != "" {
			t.Fatalf("HEAD returned a body: %q", body)
		}
		if resp.Header.Get("Content-Length") != strconv.Itoa(len(getBody)) || resp.Header.Get("Content-Type") != getResp.Header.Get("Content-Type") {
			t.Fatalf("HEAD headers %v, GET headers %v", resp.Header, getResp.Header)
		}
		if n := u.Calls("HEAD", "/api/content/a"); n != 0 {
			t.Fatalf("HEAD reached the upstream %d times", n)
		}

		// A HEAD miss fetches with GET and stores the entry for later GETs.
		resp, body = integDo(t, c, "HEAD", "/api/content/headfirst")
		integExpect(t, "HEAD miss", resp, body, 200, "MISS")
		if body != "" {
			t.Fatalf("HEAD miss returned a body: %q", body)
		}
		if u.Calls("HEAD", "/api/content/headfirst") != 0 || u.Calls("GET", "/api/content/headfirst") != 1 {
			t.Fatalf("HEAD miss: upstream HEAD=%d GET=%d, want 0 and 1",
				u.Calls("HEAD", "/api/content/headfirst"), u.Calls("GET", "/api/content/headfirst"))
		}
		resp, body = c.Get("/api/content/headfirst")
		integExpect(t, "GET after HEAD miss", resp, body, 200, "HIT")
		if integBody(t, "GET after HEAD", body).Path != "/api/content/headfirst" {
			t.Fatalf("GET after HEAD: body %q", body)
		}
		if resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Fatalf("GET after HEAD: Content-Length %q for %d bytes", resp.Header.Get("Content-Length"), len(body))
		}
	})

	// 3s rather than 1s or 2s: the upstream's Date has a one-second
	// resolution, so a response can arrive up to 1s old (RFC 9111 apparent
	// age), and the module does not store entries with under 1s to live.
	t.Run("entries expire after the route TTL", func(t *testing.T) {
		first := integMissThenHit(t, c, u, "/api/short")
		resp, _ := c.Get("/api/short")
		if ttl := integHitTTLOf(t, "short HIT", resp); ttl > 3 {
			t.Fatalf("3s route: HIT ttl=%d", ttl)
		}
		keys := integEntryKeys(r, "rcache", "short")
		if len(keys) != 1 {
			t.Fatalf("short entry keys %v", keys)
		}
		if ttl, err := r.Client().PTTL(context.Background(), keys[0]).Result(); err != nil || ttl <= 0 || ttl > 3*time.Second {
			t.Fatalf("short entry PTTL %v (%v), want (0, 3s]", ttl, err)
		}
		time.Sleep(3200 * time.Millisecond)
		resp, body := c.Get("/api/short")
		integExpect(t, "after TTL", resp, body, 200, "MISS")
		if body == first {
			t.Fatalf("expired entry's body served again: %q", body)
		}
		if n := u.Calls("GET", "/api/short"); n != 2 {
			t.Fatalf("upstream called %d times, want 2", n)
		}
		resp, body = c.Get("/api/short")
		integExpect(t, "after re-store", resp, body, 200, "HIT")
	})
}

// ---------------------------------------------------------------------------
// 4. Invalidation on mutation
// ---------------------------------------------------------------------------

func TestIntegrationMutations(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	var failGets atomic.Int64
	u.Handle("/api/fans/fail", func(w http.ResponseWriter, req *http.Request) {
		switch req.Method {
		case "POST":
			http.Error(w, "validation failed", http.StatusUnprocessableEntity)
		case "PUT":
			http.Error(w, "no such fan", http.StatusNotFound)
		case "DELETE":
			http.Error(w, "database down", http.StatusServiceUnavailable)
		case "PATCH":
			http.Error(w, "boom", http.StatusInternalServerError)
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"fail-get":%d}`, failGets.Add(1))
		}
	})
	u.Handle("/api/fans/redirect", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Location", "/api/fans/list")
		w.WriteHeader(http.StatusSeeOther)
	})
	u.Handle("/api/content/redirect", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Location", "/api/content/2")
		w.WriteHeader(http.StatusSeeOther)
	})
	c := startCaddy(t, integSite(u, fmt.Sprintf(`%s
		route dashboard /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
		}
		route analytics /api/analytics* 5m {
			key {http.request.header.X-User-Id}
		}
		route campaigns /api/marketing/campaigns* 5m {
			key {http.request.header.X-User-Id}
			invalidates dashboard analytics
		}
		route fans /api/fans* 5m
		route content /api/content* 5m {
			purge uri
		}`, integRedis(r))))

	alice := "X-User-Id: alice"
	get := func(t *testing.T, label, path, want string, headers ...string) string {
		t.Helper()
		resp, body := c.Get(path, headers...)
		integExpect(t, label+": GET "+path, resp, body, 200, want)
		return body
	}
	mutate := func(t *testing.T, label, method, path string, wantStatus int, headers ...string) string {
		t.Helper()
		upPath, _, _ := strings.Cut(path, "?")
		before := u.Calls(method, upPath)
		resp, body := integDo(t, c, method, path, headers...)
		if resp.StatusCode != wantStatus {
			t.Fatalf("%s: %s %s: status %d, want %d; body %q", label, method, path, resp.StatusCode, wantStatus, body)
		}
		if xc := resp.Header.Get("X-Cache"); xc != "SKIP" {
			t.Fatalf("%s: %s %s: X-Cache %q, want SKIP (mutations are never cached)", label, method, path, xc)
		}
		if n := u.Calls(method, upPath) - before; n != 1 {
			t.Fatalf("%s: %s %s reached the upstream %d times, want 1", label, method, path, n)
		}
		return body
	}
	warm := func(t *testing.T, path string, headers ...string) {
		t.Helper()
		resp, body := c.Get(path, headers...)
		if resp.Header.Get("X-Cache") == "HIT" {
			return
		}
		integExpect(t, "warm "+path, resp, body, 200, "MISS")
		get(t, "warm", path, "HIT", headers...)
	}

	t.Run("route, invalidates list and target URI", func(t *testing.T) {
		for _, p := range []string{"/api/dashboard", "/api/analytics", "/api/marketing/campaigns", "/api/marketing/campaigns/7"} {
			warm(t, p, alice)
		}
		warm(t, "/api/dashboard", "X-User-Id: bob")
		warm(t, "/api/fans/list")
		warm(t, "/api/content/1")
		gensBefore := integGens(t, r)

		mutate(t, "campaign create", "POST", "/api/marketing/campaigns", 200, alice)
		gens := integBumped(gensBefore, integGens(t, r))

		get(t, "route itself", "/api/marketing/campaigns", "MISS", alice)
		get(t, "route itself, other URI", "/api/marketing/campaigns/7", "MISS", alice)
		get(t, "invalidated route", "/api/dashboard", "MISS", alice)
		get(t, "invalidated route, other user", "/api/dashboard", "MISS", "X-User-Id: bob")
		get(t, "invalidated route", "/api/analytics", "MISS", alice)
		get(t, "unrelated route", "/api/fans/list", "HIT")
		get(t, "unrelated route", "/api/content/1", "HIT")

		// One generation counter per purged route plus the target URI.
		for _, want := range []string{"rcache:_g:r:campaigns", "rcache:_g:r:dashboard", "rcache:_g:r:analytics"} {
			if !integContains(gens, want) {
				t.Errorf("generation key %s missing; have %v", want, gens)
			}
		}
		if integContains(gens, "rcache:_g:r:fans") || integContains(gens, "rcache:_g:r:content") {
			t.Errorf("unrelated routes bumped: %v", gens)
		}
		uris := 0
		for _, k := range gens {
			if strings.HasPrefix(k, "rcache:_g:u:") {
				uris++
			}
		}
		if uris != 1 {
			t.Errorf("URI generations bumped: %d, want 1 (the POST target); bumped %v", uris, gens)
		}
		// After the purge, caching works again.
		get(t, "re-cached", "/api/dashboard", "HIT", alice)
	})

	t.Run("PUT PATCH DELETE and 3xx invalidate", func(t *testing.T) {
		for _, method := range []string{"PUT", "PATCH", "DELETE"} {
			warm(t, "/api/fans/list")
			warm(t, "/api/fans/42")
			mutate(t, method, method, "/api/fans/42", 200)
			get(t, method+" target", "/api/fans/42", "MISS")
			get(t, method+" same route", "/api/fans/list", "MISS")
		}
		// A 3xx purges its target URI and its Location (here /api/fans/list),
		// never whole routes: a redirect to a login page must not let anyone
		// purge (purge_status).
		warm(t, "/api/fans/list")
		warm(t, "/api/fans/42")
		mutate(t, "303", "POST", "/api/fans/redirect", 303)
		get(t, "after 303, its Location", "/api/fans/list", "MISS")
		get(t, "after 303, same route", "/api/fans/42", "HIT")
	})

	t.Run("failed mutations invalidate nothing", func(t *testing.T) {
		warm(t, "/api/fans/list")
		warm(t, "/api/fans/fail")
		warm(t, "/api/dashboard", alice)
		gensBefore := integGens(t, r)
		for _, m := range []struct {
			method string
			status int
			body   string
		}{{"POST", 422, "validation failed"}, {"PUT", 404, "no such fan"}, {"DELETE", 503, "database down"}, {"PATCH", 500, "boom"}} {
			body := mutate(t, "failed", m.method, "/api/fans/fail", m.status)
			if body != m.body+"\n" {
				t.Fatalf("%s: body %q, want the upstream's %q", m.method, body, m.body)
			}
			get(t, "after failed "+m.method, "/api/fans/fail", "HIT")
			get(t, "after failed "+m.method, "/api/fans/list", "HIT")
		}
		// A failed mutation on a route with an invalidates list either.
		u.Handle("/api/marketing/campaigns/bad", func(w http.ResponseWriter, req *http.Request) {
			if req.Method == "POST" {
				http.Error(w, "bad campaign", http.StatusBadRequest)
				return
			}
			w.Write([]byte("{}"))
		})
		mutate(t, "failed campaign", "POST", "/api/marketing/campaigns/bad", 400, alice)
		get(t, "after failed campaign", "/api/dashboard", "HIT", alice)
		if gens := integGens(t, r); !reflect.DeepEqual(gens, gensBefore) {
			t.Fatalf("failed mutations touched generations: before %v after %v", gensBefore, gens)
		}
	})

	t.Run("mutations are never cached", func(t *testing.T) {
		b1 := mutate(t, "post 1", "POST", "/api/fans/list", 200)
		b2 := mutate(t, "post 2", "POST", "/api/fans/list", 200)
		if b1 == b2 {
			t.Fatalf("two POSTs got the same body %q", b1)
		}
		got := get(t, "GET after POSTs", "/api/fans/list", "MISS")
		if got == b1 || got == b2 {
			t.Fatalf("GET served a POST's response: %q", got)
		}
		get(t, "GET after POSTs", "/api/fans/list", "HIT")
		for _, k := range integEntryKeys(r, "rcache", "fans") {
			raw, err := r.Client().Get(context.Background(), k).Bytes()
			if err != nil {
				continue // expired meanwhile
			}
			if e, err := decodeEntry(raw); err == nil && e.kind == kindResponse && (string(e.body) == b1 || string(e.body) == b2) {
				t.Fatalf("a POST response was stored at %s", k)
			}
		}
	})

	t.Run("purge uri invalidates only the target URI", func(t *testing.T) {
		warm(t, "/api/content/1")
		warm(t, "/api/content/2")
		warm(t, "/api/content/2?page=3")
		routeGen := integGens(t, r)["rcache:_g:r:content"]
		mutate(t, "uri purge", "POST", "/api/content/1", 200)
		get(t, "target", "/api/content/1", "MISS")
		get(t, "same route, other URI", "/api/content/2", "HIT")
		get(t, "same route, other query", "/api/content/2?page=3", "HIT")
		if v := integGens(t, r)["rcache:_g:r:content"]; v != routeGen {
			t.Fatalf("purge uri route bumped its route generation: %q → %q", routeGen, v)
		}
		mutate(t, "uri purge with query", "PUT", "/api/content/2?page=3", 200)
		get(t, "exact URI with query", "/api/content/2?page=3", "MISS")
		get(t, "same path, no query", "/api/content/2", "HIT")
		// A same-origin Location in a successful answer is invalidated too.
		mutate(t, "uri purge 303", "POST", "/api/content/redirect", 303)
		get(t, "Location target", "/api/content/2", "MISS")
		get(t, "unrelated URI", "/api/content/1", "HIT")
	})
}

// integBumped lists the generation keys a purge changed: a changed value,
// or a new key whose value is not a birth (stores create generations with
// birth values; purges with the store's clock).
func integBumped(before, after map[string]string) []string {
	var out []string
	for k, v := range after {
		if old, ok := before[k]; ok && old != v || !ok && !strings.HasPrefix(v, "b") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// integGens returns every generation key of the rcache namespace with its value.
func integGens(t *testing.T, r *redisServer) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range r.Keys("rcache:_g:*") {
		v, err := r.Client().Get(context.Background(), k).Result()
		if err != nil {
			t.Fatalf("GET %s: %v", k, err)
		}
		out[k] = v
	}
	return out
}

func integContains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// 5. Redis missing, slow, killed, restarted
// ---------------------------------------------------------------------------

// integSample is the outcome of one request under load.
type integSample struct {
	start, end time.Time
	status     int
	xcache     string
	err        error
}

// integLoad runs workers goroutines that GET the given requests in a loop
// until stop is called, which returns every sample.
func integLoad(c *caddyProc, workers int, reqs [][]string) (stop func() []integSample) {
	return harnessLoad(workers, func(w, i int) integSample {
		rq := reqs[(w+i)%len(reqs)]
		s := integSample{start: time.Now()}
		resp, _, err := c.GetE(rq[0], rq[1:]...)
		s.end, s.err = time.Now(), err
		if resp != nil {
			s.status, s.xcache = resp.StatusCode, resp.Header.Get("X-Cache")
		}
		return s
	})
}

// integCheckSamples fails on any transport error, non-200 status, or a
// request slower than limit, and returns X-Cache counts and the slowest.
func integCheckSamples(t *testing.T, label string, samples []integSample, limit time.Duration) (map[string]int, time.Duration) {
	t.Helper()
	counts := map[string]int{}
	var slowest time.Duration
	bad := 0
	for _, s := range samples {
		d := s.end.Sub(s.start)
		slowest = max(slowest, d)
		switch {
		case s.err != nil:
			bad++
			if bad <= 5 {
				t.Errorf("%s: request failed: %v", label, s.err)
			}
		case s.status != 200:
			bad++
			if bad <= 5 {
				t.Errorf("%s: status %d (X-Cache %q)", label, s.status, s.xcache)
			}
		case d > limit:
			bad++
			if bad <= 5 {
				t.Errorf("%s: request took %v (limit %v)", label, d, limit)
			}
		}
		counts[s.xcache]++
	}
	if bad > 0 {
		t.Fatalf("%s: %d of %d requests failed, were not 200 or were too slow", label, bad, len(samples))
	}
	if len(samples) == 0 {
		t.Fatalf("%s: no requests were made", label)
	}
	return counts, slowest
}

// The Redis failure tests measure latency and generate load, so they do not
// run in parallel with other tests.

func TestIntegrationRedisUnreachable(t *testing.T) {
	dead := freePort(t) // nothing listens here
	u := newUpstream(t)
	c := startCaddy(t, integSite(u, fmt.Sprintf(`		redis redis://127.0.0.1:%d
		route content /api/content* 5m
		route dash /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
		}`, dead)))

	// Sequential requests over more than one breaker cooldown (2s), so
	// the breaker's probes fail as well.
	start := time.Now()
	var slowest time.Duration
	n := 0
	for time.Since(start) < 3*time.Second {
		path := fmt.Sprintf("/api/content/%d", n%3)
		t0 := time.Now()
		resp, body := c.Get(path)
		d := time.Since(t0)
		slowest = max(slowest, d)
		integExpect(t, "unreachable redis", resp, body, 200, "SKIP")
		if d > time.Second {
			t.Fatalf("request %d took %v with Redis unreachable", n, d)
		}
		if b := integBody(t, "unreachable", body); b.Path != path || b.N != n+1 {
			t.Fatalf("request %d: body %q is not a fresh upstream answer", n, body)
		}
		n++
		time.Sleep(50 * time.Millisecond)
	}
	if u.Total() != n {
		t.Fatalf("upstream got %d requests, want %d", u.Total(), n)
	}

	// Concurrent load, keyed route included.
	stop := integLoad(c, 8, [][]string{{"/api/content/x"}, {"/api/dashboard", "X-User-Id: u1"}, {"/api/content/y?q=1"}})
	time.Sleep(time.Second)
	counts, slow := integCheckSamples(t, "unreachable under load", stop(), time.Second)
	if counts["SKIP"] != integSum(counts) {
		t.Fatalf("unreachable under load: X-Cache counts %v, want only SKIP", counts)
	}
	slowest = max(slowest, slow)

	// Mutations still reach the upstream.
	resp, _ := integDo(t, c, "POST", "/api/content/1")
	if resp.StatusCode != 200 {
		t.Fatalf("POST with Redis unreachable: %d", resp.StatusCode)
	}

	if code, body := c.Admin("GET", "/redis_cache/health", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, `"healthy":false`) {
		t.Errorf("health with Redis unreachable: %d %s", code, body)
	}
	if got := integCount(c, "cache store unavailable"); got != 1 {
		t.Fatalf("%q logged %d times over %d+ requests, want once", "cache store unavailable", got, n)
	}
	if got := integCount(c, "caching resumed"); got != 0 {
		t.Fatalf("%q logged %d times though Redis never came up", "caching resumed", got)
	}
	t.Logf("%d sequential + %d concurrent requests, slowest %v", n, integSum(counts), slowest)
}

func integSum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func TestIntegrationRedisOutage(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	// INFO: the state changes are warnings; DEBUG would bury them.
	c := startCaddy(t, integSite(u, fmt.Sprintf(`		redis %s
		route content /api/content* 5m
		route dash /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
		}`, r.URL())))
	load := [][]string{
		{"/api/content/a"}, {"/api/content/b"},
		{"/api/dashboard", "X-User-Id: u1"}, {"/api/dashboard", "X-User-Id: u2"},
	}
	for _, rq := range load {
		integMissThenHit(t, c, u, rq[0], rq[1:]...)
	}

	// waitCaching polls until GET path (a path used only here) is served
	// from the cache again, and returns how long that took.
	waitCaching := func(label, path string) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			resp, body := c.Get(path)
			if resp.StatusCode != 200 {
				t.Fatalf("%s: status %d", label, resp.StatusCode)
			}
			if xc := resp.Header.Get("X-Cache"); xc == "MISS" || xc == "HIT" {
				if xc == "MISS" {
					resp, body = c.Get(path)
				}
				integExpect(t, label+": once Redis is back", resp, body, 200, "HIT")
				return time.Since(start)
			}
			if time.Since(start) > 15*time.Second {
				t.Fatalf("%s: caching did not resume within 15s (last X-Cache %q, Cache-Status %q)",
					label, resp.Header.Get("X-Cache"), resp.Header.Get("Cache-Status"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// Phase 1: Redis hangs (CLIENT PAUSE): requests SKIP within the timeout.
	r.Pause(1500 * time.Millisecond)
	stop := integLoad(c, 8, load)
	time.Sleep(time.Second)
	counts, slowest := integCheckSamples(t, "redis paused", stop(), time.Second)
	if counts["HIT"] != 0 || counts["SKIP"] == 0 {
		t.Fatalf("redis paused: X-Cache counts %v, want SKIP only", counts)
	}
	t.Logf("redis paused: %v, slowest %v", counts, slowest)
	took := waitCaching("after pause", "/api/content/after-pause")
	t.Logf("caching resumed %v after the pause phase", took)
	resp, body := c.Get("/api/content/a")
	integExpect(t, "entry kept through a pause", resp, body, 200, "HIT")
	if !c.WaitForLog("caching resumed", 5*time.Second) {
		t.Fatalf("no %q warning after the pause", "caching resumed")
	}
	integCheckStateChanges(t, c, "after pause", 1)

	// Phase 2: Redis killed under load, then restarted under load.
	stop = integLoad(c, 8, load)
	time.Sleep(300 * time.Millisecond)
	killedAt := time.Now()
	r.Kill()
	killed := time.Now()
	time.Sleep(2500 * time.Millisecond)
	restartAt := time.Now()
	r.Restart()
	time.Sleep(3 * time.Second)
	samples := stop()
	counts, slowest = integCheckSamples(t, "redis killed and restarted", samples, time.Second)
	outage := map[string]int{}
	for _, s := range samples {
		if s.start.After(killed) && s.end.Before(restartAt) {
			outage[s.xcache]++
		}
	}
	if outage["SKIP"] == 0 || outage["SKIP"] != integSum(outage) {
		t.Fatalf("during the outage: X-Cache counts %v, want SKIP only", outage)
	}
	t.Logf("kill/restart under load: all %v, during outage %v, slowest %v (kill at +0, restart at +%v)",
		counts, outage, slowest, restartAt.Sub(killedAt).Round(time.Millisecond))

	took = waitCaching("after restart", "/api/content/after-restart")
	t.Logf("caching resumed %v after the restart phase", took)
	// The restarted Redis is empty; entries are stored in it again.
	integMissThenHit(t, c, u, "/api/dashboard", "X-User-Id: u3")
	if k := r.Keys("rcache:dash:u3:*"); len(k) != 1 {
		t.Fatalf("after restart: dash entries for u3 %v", k)
	}
	if code, body := c.Admin("GET", "/redis_cache/health", ""); code != 200 || !strings.Contains(body, `"healthy":true`) {
		t.Errorf("health after restart: %d %s", code, body)
	}
	// One warning per state change: two outages, two recoveries.
	if !c.WaitForLog("caching resumed", 5*time.Second) {
		t.Fatal("no caching resumed warning")
	}
	time.Sleep(200 * time.Millisecond)
	integCheckStateChanges(t, c, fmt.Sprintf("after two outages (%d requests)", len(samples)), 2)
	for _, line := range strings.Split(c.Logs(), "\n") {
		if strings.Contains(line, "cache store unavailable") || strings.Contains(line, "caching resumed") {
			if !strings.Contains(line, `"level":"warn"`) {
				t.Errorf("state change not logged as a warning: %s", line)
			}
		}
	}
}

// integCheckStateChanges checks the breaker's warnings after outages
// outages: what an operator reading the log sees. Each outage is reported
// at least once and followed by a recovery, the last word is a recovery,
// and the log is not flooded: on a starved machine a recovering Redis may
// time out once more and flap, so up to twice as many pairs are allowed.
// On failure it prints the lines it counted.
func integCheckStateChanges(t *testing.T, c *caddyProc, label string, outages int) {
	t.Helper()
	var lines []string
	var down, up int
	var last string
	count := func() bool {
		lines, down, up, last = nil, 0, 0, ""
		for _, line := range strings.Split(c.Logs(), "\n") {
			switch {
			case strings.Contains(line, "cache store unavailable"):
				down++
				last = "down"
			case strings.Contains(line, "caching resumed"):
				up++
				last = "up"
			default:
				continue
			}
			lines = append(lines, line)
		}
		return down >= outages && down <= 2*outages && up == down && last == "up"
	}
	// The last warning may still be on its way through the log pipe.
	if !harnessWaitUntil(5*time.Second, count) {
		t.Fatalf("%s: %d unavailable / %d resumed warnings (last %q), want %d to %d of each, ending resumed; counted lines:\n%s",
			label, down, up, last, outages, 2*outages, strings.Join(lines, "\n"))
	}
	t.Logf("%s: %d unavailable / %d resumed warnings", label, down, up)
}

// ---------------------------------------------------------------------------
// 6. Embedded in-memory store; Caddyfile.example
// ---------------------------------------------------------------------------

func TestIntegrationMemoryStore(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	big := strings.Repeat("x", 3000)
	for i := 1; i <= 8; i++ {
		u.Handle(fmt.Sprintf("/api/big/%d", i), func(w http.ResponseWriter, req *http.Request) {
			// Not a compressible type: the entries keep their size in
			// the store, which this test's eviction arithmetic relies on.
			w.Header().Set("Content-Type", "application/octet-stream")
			fmt.Fprintf(w, "%s-%d", big, time.Now().UnixNano())
		})
	}
	c := startCaddy(t, integSite(u, `		memory_limit 16KiB
		route dash /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
		}
		route campaigns /api/marketing/campaigns* 2m {
			key {http.request.header.X-User-Id}
			invalidates dash
		}
		route content /api/content* 5m
		route big /api/big* 5m`))

	alice := integMissThenHit(t, c, u, "/api/dashboard", "X-User-Id: alice")
	bob := integMissThenHit(t, c, u, "/api/dashboard", "X-User-Id: bob")
	if alice == bob || integBody(t, "alice", alice).User != "alice" {
		t.Fatalf("per-user entries: alice %q bob %q", alice, bob)
	}
	integMissThenHit(t, c, u, "/api/content/1")
	integMissThenHit(t, c, u, "/api/marketing/campaigns", "X-User-Id: alice")

	// Purge on mutation.
	resp, body := integDo(t, c, "POST", "/api/marketing/campaigns", "X-User-Id: alice")
	integExpect(t, "POST", resp, body, 200, "SKIP")
	for _, who := range []string{"alice", "bob"} {
		resp, body = c.Get("/api/dashboard", "X-User-Id: "+who)
		integExpect(t, "dashboard after campaign POST ("+who+")", resp, body, 200, "MISS")
	}
	resp, body = c.Get("/api/marketing/campaigns", "X-User-Id: alice")
	integExpect(t, "campaigns after POST", resp, body, 200, "MISS")
	resp, body = c.Get("/api/content/1")
	integExpect(t, "unrelated route after POST", resp, body, 200, "HIT")
	resp, body = integDo(t, c, "DELETE", "/api/content/1")
	if resp.StatusCode != 200 {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	resp, body = c.Get("/api/content/1")
	integExpect(t, "after DELETE", resp, body, 200, "MISS")

	// Admin purge works on the embedded store too.
	if code, body := c.Admin("POST", "/redis_cache/purge", `{"route":"content"}`); code != 200 {
		t.Fatalf("admin purge: %d %s", code, body)
	}
	resp, body = c.Get("/api/content/1")
	integExpect(t, "after admin purge", resp, body, 200, "MISS")

	code, health := c.Admin("GET", "/redis_cache/health", "")
	if code != 200 || !strings.Contains(health, `"kind":"memory"`) {
		t.Fatalf("health: %d %s", code, health)
	}

	// The store is bounded by bytes: 8 entries of ~3 KB do not fit in 16 KiB.
	for i := 1; i <= 8; i++ {
		integMissThenHit(t, c, u, fmt.Sprintf("/api/big/%d", i))
	}
	resp, body = c.Get("/api/big/8")
	integExpect(t, "newest big entry", resp, body, 200, "HIT")
	resp, body = c.Get("/api/big/1")
	integExpect(t, "oldest big entry (evicted)", resp, body, 200, "MISS")
	code, stats := c.Admin("GET", "/redis_cache/stats", "")
	var st struct {
		Stores []struct {
			Info struct {
				Kind       string `json:"kind"`
				UsedMemory int64  `json:"used_memory"`
				MaxMemory  int64  `json:"maxmemory"`
			} `json:"info"`
		} `json:"stores"`
	}
	if code != 200 || json.Unmarshal([]byte(stats), &st) != nil || len(st.Stores) != 1 {
		t.Fatalf("stats: %d %s", code, stats)
	}
	if info := st.Stores[0].Info; info.Kind != "memory" || info.MaxMemory != 16384 || info.UsedMemory <= 0 || info.UsedMemory > 16384 {
		t.Fatalf("memory store info %+v, want used_memory within (0, 16384]", info)
	}
}

func TestIntegrationCaddyfileExample(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join(harnessModuleRoot(), "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	for _, want := range []string{":8080", ":8081", "localhost:2019"} {
		if !strings.Contains(text, want) {
			t.Fatalf("Caddyfile.example no longer contains %q; update this test", want)
		}
	}
	demo := freePort(t)
	text = strings.NewReplacer(
		"localhost:2019", "127.0.0.1:{{ADMIN_PORT}}",
		":8080", ":{{HTTP_PORT}}",
		":8081", ":"+strconv.Itoa(demo),
	).Replace(text)
	c := startCaddyFile(t, text)
	if !harnessWaitUntil(10*time.Second, func() bool { return harnessPortOpen(demo) }) {
		t.Fatalf("demo upstream on port %d never came up", demo)
	}

	// The two curls of the example's header comment.
	r1, b1 := c.Get("/api/dashboard", "X-User-Id: user-123")
	integExpect(t, "first curl", r1, b1, 200, "MISS")
	if !strings.Contains(b1, `"user":"user-123"`) || !strings.Contains(b1, `"route":"dashboard"`) {
		t.Fatalf("first curl body %q", b1)
	}
	time.Sleep(5 * time.Millisecond) // the demo body embeds the time in ms
	r2, b2 := c.Get("/api/dashboard", "X-User-Id: user-123")
	integExpect(t, "second curl", r2, b2, 200, "HIT")
	if b2 != b1 {
		t.Fatalf("HIT body %q differs from MISS body %q", b2, b1)
	}
	r3, b3 := c.Get("/api/dashboard", "X-User-Id: user-456")
	integExpect(t, "other user", r3, b3, 200, "MISS")
	if !strings.Contains(b3, `"user":"user-456"`) {
		t.Fatalf("other user body %q", b3)
	}

	// messages is keyed by user and platform.
	resp, body := c.Get("/api/messages")
	integExpect(t, "messages without user and platform", resp, body, 200, "SKIP")
	resp, body = c.Get("/api/messages?platform=onlyfans", "X-User-Id: user-123")
	integExpect(t, "messages", resp, body, 200, "MISS")
	resp, body = c.Get("/api/messages?platform=onlyfans", "X-User-Id: user-123")
	integExpect(t, "messages", resp, body, 200, "HIT")
	resp, body = c.Get("/api/messages?platform=fansly", "X-User-Id: user-123")
	integExpect(t, "messages on another platform", resp, body, 200, "MISS")

	// campaigns invalidates the writer's dashboard and analytics only.
	resp, body = integDo(t, c, "POST", "/api/marketing/campaigns", "X-User-Id: user-123")
	integExpect(t, "campaign POST", resp, body, 200, "SKIP")
	resp, body = c.Get("/api/dashboard", "X-User-Id: user-123")
	integExpect(t, "dashboard after campaign POST", resp, body, 200, "MISS")
	resp, body = c.Get("/api/dashboard", "X-User-Id: user-456")
	integExpect(t, "another user's dashboard after campaign POST", resp, body, 200, "HIT")

	// The loaded config carries the seed's route table.
	code, cfg := c.Admin("GET", "/config/", "")
	if code != 200 {
		t.Fatalf("GET /config/: %d", code)
	}
	var doc any
	if err := json.Unmarshal([]byte(cfg), &doc); err != nil {
		t.Fatal(err)
	}
	handler := integFindHandler(doc, "redis_cache")
	if handler == nil {
		t.Fatalf("no redis_cache handler in the loaded config:\n%s", cfg)
	}
	if _, ok := handler["redis"]; ok {
		t.Errorf("example config sets redis: %v", handler["redis"])
	}
	type routeWant struct {
		name        string
		ttl         time.Duration
		invalidates string
		keyHas      string
	}
	wants := []routeWant{
		{"dashboard", 5 * time.Minute, "", "X-User-Id"},
		{"analytics", 10 * time.Minute, "", "X-User-Id"},
		{"campaigns", 2 * time.Minute, "tag:user:{http.request.header.X-User-Id}", "X-User-Id"},
		{"messages", 30 * time.Second, "", "query.platform}"}, // {query.platform}, expanded by the adapter
		{"content", 5 * time.Minute, "", ""},
		{"fans", 5 * time.Minute, "", ""},
		{"ppv", 2 * time.Minute, "", ""},
	}
	routes, _ := handler["routes"].([]any)
	if len(routes) != len(wants) {
		t.Fatalf("example has %d routes, want %d: %v", len(routes), len(wants), routes)
	}
	for i, w := range wants {
		rt, _ := routes[i].(map[string]any)
		ttl, _ := rt["ttl"].(float64)
		var inv []string
		for _, v := range integSlice(rt["invalidates"]) {
			inv = append(inv, fmt.Sprint(v))
		}
		sort.Strings(inv)
		key, _ := rt["key"].(string)
		if rt["name"] != w.name || time.Duration(ttl) != w.ttl || strings.Join(inv, ",") != w.invalidates || !strings.Contains(key, w.keyHas) {
			t.Errorf("route %d = %v, want %s ttl %v invalidates [%s] key containing %q", i, rt, w.name, w.ttl, w.invalidates, w.keyHas)
		}
	}
}

func integSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// integFindHandler returns the first object with "handler": name in a JSON document.
func integFindHandler(v any, name string) map[string]any {
	switch x := v.(type) {
	case map[string]any:
		if x["handler"] == name {
			return x
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if h := integFindHandler(x[k], name); h != nil {
				return h
			}
		}
	case []any:
		for _, e := range x {
			if h := integFindHandler(e, name); h != nil {
				return h
			}
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// 7. Bad configuration is rejected with a message naming the problem
// ---------------------------------------------------------------------------

func TestIntegrationBadConfig(t *testing.T) {
	t.Parallel()
	const up = "\treverse_proxy 127.0.0.1:9"
	cases := []struct {
		name  string
		block string
		want  []string
	}{
		{"unknown subdirective", "\t\tfrobnicate yes\n\t\troute a /a 5m", []string{"redis_cache", `unknown subdirective "frobnicate"`}},
		{"unknown route subdirective", "\t\troute a /a 5m {\n\t\t\tfrobnicate yes\n\t\t}", []string{"redis_cache", `route "a"`, `unknown subdirective "frobnicate"`}},
		{"bad ttl argument", "\t\troute a /a 5x", []string{"redis_cache", `route "a"`, `"5x"`, "duration"}},
		{"bad ttl subdirective", "\t\troute a /a {\n\t\t\tttl soon\n\t\t}", []string{"redis_cache", `ttl "soon"`, "not a valid duration"}},
		{"bad timeout", "\t\ttimeout fast\n\t\troute a /a 5m", []string{"redis_cache", `timeout "fast"`, "not a valid duration"}},
		{"bad stale_if_error", "\t\troute a /a 5m {\n\t\t\tstale_if_error 1fortnight\n\t\t}", []string{"redis_cache", `stale_if_error "1fortnight"`, "not a valid duration"}},
		{"duplicate route name", "\t\troute a /a 5m\n\t\troute b /b 5m\n\t\troute a /c 5m", []string{"redis_cache", `route "a"`, "duplicate route name"}},
		{"invalidates unknown route", "\t\troute a /a 5m {\n\t\t\tinvalidates b ghost\n\t\t}\n\t\troute b /b 5m", []string{"redis_cache", `route "a"`, `invalidates unknown route "ghost"`}},
	}
	// Each subtest runs race-built Caddy processes; a few at a time.
	sem := make(chan struct{}, 3)
	limit := func(t *testing.T) {
		t.Parallel()
		sem <- struct{}{}
		t.Cleanup(func() { <-sem })
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			limit(t)
			site := "\tredis_cache {\n" + tc.block + "\n\t}\n" + up
			out, err := caddyValidate(t, site)
			if err == nil {
				t.Fatalf("caddy validate accepted:\n%s\noutput:\n%s", site, out)
			}
			_, aerr := caddyAdapt(t, site)
			if aerr == nil {
				t.Fatalf("caddy adapt accepted:\n%s", site)
			}
			vmsg, amsg := integUnescape(err.Error()), integUnescape(aerr.Error())
			for _, w := range tc.want {
				if !strings.Contains(vmsg, w) {
					t.Errorf("caddy validate error does not name %q:\n%s", w, vmsg)
				}
				if !strings.Contains(amsg, w) {
					t.Errorf("caddy adapt error does not name %q:\n%s", w, amsg)
				}
			}
		})
	}

	t.Run("valid control", func(t *testing.T) {
		limit(t)
		site := "\tredis_cache {\n\t\tredis redis://127.0.0.1:1\n\t\ttimeout 50ms\n\t\troute a /a 5m {\n\t\t\tinvalidates b\n\t\t\tkey {http.request.header.X-User-Id}\n\t\t}\n\t\troute b /b* {\n\t\t\tttl 30s\n\t\t\tpurge uri\n\t\t}\n\t}\n" + up
		if out, err := caddyValidate(t, site); err != nil || !strings.Contains(out, "Valid configuration") {
			t.Fatalf("valid config rejected: %v\n%s", err, out)
		}
	})

	// The same mistakes in a JSON config fail `caddy validate` too.
	jsonCases := []struct {
		name   string
		routes string
		want   []string
	}{
		{"json duplicate route name", `[{"name":"a","path":"/a","ttl":"5m"},{"name":"a","path":"/b","ttl":"5m"}]`, []string{"redis_cache", `route "a"`, "duplicate route name"}},
		{"json invalidates unknown route", `[{"name":"a","path":"/a","ttl":"5m","invalidates":["ghost"]}]`, []string{"redis_cache", `route "a"`, `invalidates unknown route "ghost"`}},
		{"json bad duration", `[{"name":"a","path":"/a","ttl":"5x"}]`, []string{"redis_cache", `"5x"`}},
		{"json unknown field", `[{"name":"a","path":"/a","ttl":"5m","frobnicate":true}]`, []string{"redis_cache", "frobnicate"}},
	}
	for _, tc := range jsonCases {
		t.Run(tc.name, func(t *testing.T) {
			limit(t)
			cfg := fmt.Sprintf(`{"admin":{"disabled":true},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:%d"],
"routes":[{"handle":[{"handler":"redis_cache","routes":%s},{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:9"}]}]}]}}}}}`, freePort(t), tc.routes)
			dir := t.TempDir()
			file := filepath.Join(dir, "caddy.json")
			if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, caddyBinary(t), "validate", "--config", file)
			cmd.Dir = dir
			cmd.Env = harnessCaddyEnv(dir, nil)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("caddy validate accepted %s:\n%s", cfg, out)
			}
			msg := integUnescape(string(out))
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("caddy validate output does not name %q:\n%s", w, msg)
				}
			}
		})
	}
}

// integUnescape undoes the JSON escaping of quotes in Caddy's log lines.
func integUnescape(s string) string { return strings.ReplaceAll(s, `\"`, `"`) }

// ---------------------------------------------------------------------------
// 8. A corrupt value in Redis is a miss that gets overwritten
// ---------------------------------------------------------------------------

func TestIntegrationCorruptEntry(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, integSite(u, fmt.Sprintf(`%s
		route content /api/content* 5m`, integRedis(r))))
	ctx := context.Background()
	rc := r.Client()

	withCRC := func(b []byte) []byte {
		return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
	}
	cases := []struct {
		name    string
		corrupt func(valid []byte) []byte
	}{
		{"garbage", func([]byte) []byte { return []byte("this is not a cache entry") }},
		{"empty", func([]byte) []byte { return []byte{} }},
		{"json", func([]byte) []byte { return []byte(`{"status":200,"body":"evil"}`) }},
		{"truncated", func(v []byte) []byte { return append([]byte(nil), v[:len(v)/2]...) }},
		// In the entry's last 12 bytes, which a Caddy holding a validated
		// copy reads on every hit; a flip elsewhere in a value it holds a
		// copy of goes unnoticed, as the copy is the value that was stored
		// (TestEntryCorruptionIsDetected covers the checksum everywhere).
		{"bit flip", func(v []byte) []byte {
			b := append([]byte(nil), v...)
			b[len(b)-6] ^= 0x40
			return b
		}},
		{"future version", func(v []byte) []byte {
			b := append([]byte(nil), v[:len(v)-4]...)
			b[2] = 99
			return withCRC(b)
		}},
		{"valid checksum, huge lengths", func([]byte) []byte {
			b := []byte{'R', 'C', 1, 1}
			b = binary.AppendUvarint(b, 200)
			for i := 0; i < 5; i++ {
				b = binary.AppendVarint(b, 1)
			}
			b = append(b, 0)
			b = binary.AppendUvarint(b, 1<<40) // gens count
			return withCRC(b)
		}},
		{"valid checksum, bad status", func(v []byte) []byte {
			e, err := decodeEntry(v)
			if err != nil {
				panic(err)
			}
			e.status = 9999
			return e.encode()
		}},
	}
	for i, tc := range cases {
		path := fmt.Sprintf("/api/content/%d", i)
		before := integEntryKeys(r, "rcache", "content")
		first := integMissThenHit(t, c, u, path)
		var key string
		for _, k := range integEntryKeys(r, "rcache", "content") {
			if !integContains(before, k) {
				key = k
			}
		}
		if key == "" {
			t.Fatalf("%s: no new entry key in Redis after GET %s", tc.name, path)
		}
		valid, err := rc.Get(ctx, key).Bytes()
		if err != nil {
			t.Fatalf("%s: GET %s: %v", tc.name, key, err)
		}
		if err := rc.Set(ctx, key, tc.corrupt(valid), 5*time.Minute).Err(); err != nil {
			t.Fatal(err)
		}

		resp, body := c.Get(path)
		integExpect(t, tc.name+": corrupt entry", resp, body, 200, "MISS")
		if body == first {
			t.Fatalf("%s: corrupt entry still served the old body", tc.name)
		}
		if b := integBody(t, tc.name, body); b.Path != path {
			t.Fatalf("%s: body %q", tc.name, body)
		}
		if n := u.Calls("GET", path); n != 2 {
			t.Fatalf("%s: upstream called %d times, want 2", tc.name, n)
		}
		if !strings.Contains(resp.Header.Get("Cache-Status"), "stored") {
			t.Fatalf("%s: Cache-Status %q, want a stored miss", tc.name, resp.Header.Get("Cache-Status"))
		}
		// Overwritten with a valid entry holding the new body.
		raw, err := rc.Get(ctx, key).Bytes()
		if err != nil {
			t.Fatalf("%s: entry gone after the miss: %v", tc.name, err)
		}
		e, err := decodeEntry(raw)
		if err != nil || e.kind != kindResponse || string(e.body) != body || e.status != 200 {
			t.Fatalf("%s: entry not overwritten with a valid one (err %v)", tc.name, err)
		}
		resp2, body2 := c.Get(path)
		integExpect(t, tc.name+": after overwrite", resp2, body2, 200, "HIT")
		if body2 != body {
			t.Fatalf("%s: HIT body %q, want %q", tc.name, body2, body)
		}
	}

	// A value of another Redis type at an entry's key is foreign too.
	path := "/api/content/wrongtype"
	integMissThenHit(t, c, u, path)
	var key string
	for _, k := range integEntryKeys(r, "rcache", "content") {
		if e, err := rc.Get(ctx, k).Bytes(); err == nil {
			if d, err := decodeEntry(e); err == nil && strings.Contains(string(d.body), "wrongtype") {
				key = k
			}
		}
	}
	if key == "" {
		t.Fatal("wrongtype: entry key not found")
	}
	rc.Del(ctx, key)
	if err := rc.HSet(ctx, key, "field", "value").Err(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ { // more than the breaker threshold
		resp, body := c.Get(path)
		if resp.StatusCode != 200 || integBody(t, "wrongtype", body).Path != path {
			t.Fatalf("wrongtype: %d %q", resp.StatusCode, body)
		}
		if xc := resp.Header.Get("X-Cache"); xc != "MISS" && xc != "HIT" {
			t.Fatalf("wrongtype request %d: X-Cache %q (Cache-Status %q), want a miss that overwrites the value",
				i, xc, resp.Header.Get("Cache-Status"))
		}
	}
	if typ := rc.Type(ctx, key).Val(); typ != "string" {
		t.Fatalf("wrongtype: key is still a %s", typ)
	}
	resp, body := c.Get("/api/content/0")
	integExpect(t, "other entries unaffected", resp, body, 200, "HIT")

	if strings.Contains(c.Logs(), "panic") {
		t.Fatalf("caddy logged a panic")
	}
	if c.Exited() {
		t.Fatal("caddy exited")
	}
}

// The same on a Redis Cluster, whose lookups take another path through the
// store (pipelined GETs instead of one MGET).
func TestIntegrationCorruptEntryCluster(t *testing.T) {
	t.Parallel()
	rc := startCluster(t)
	u := newUpstream(t)
	c := startCaddy(t, integSite(u, fmt.Sprintf(`		redis %s
		timeout 2s
		route content /api/content* 5m`, strings.Join(rc.URLs(), " "))))
	ctx := context.Background()
	cl := rc.Client()

	for i, corrupt := range []struct {
		name  string
		write func(key string) error
	}{
		{"garbage", func(key string) error { return cl.Set(ctx, key, "not a cache entry", time.Minute).Err() }},
		{"another type", func(key string) error {
			if err := cl.Del(ctx, key).Err(); err != nil {
				return err
			}
			return cl.HSet(ctx, key, "field", "value").Err()
		}},
	} {
		path := fmt.Sprintf("/api/content/cluster-%d", i)
		before := rc.Keys("rcache:content:*")
		first := integMissThenHit(t, c, u, path)
		var key string
		for _, k := range rc.Keys("rcache:content:*") {
			if !integContains(before, k) {
				key = k
			}
		}
		if key == "" {
			t.Fatalf("%s: no new entry key in the cluster after GET %s", corrupt.name, path)
		}
		if err := corrupt.write(key); err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 5; j++ { // more than the breaker threshold
			resp, body := c.Get(path)
			want := "HIT"
			if j == 0 {
				want = "MISS"
			}
			integExpect(t, fmt.Sprintf("%s: request %d", corrupt.name, j), resp, body, 200, want)
			if body == first {
				t.Fatalf("%s: the corrupted entry's old body was served", corrupt.name)
			}
		}
		if n := u.Calls("GET", path); n != 2 {
			t.Fatalf("%s: upstream called %d times, want 2", corrupt.name, n)
		}
		raw, err := cl.Get(ctx, key).Bytes()
		if err != nil {
			t.Fatalf("%s: entry not overwritten: %v", corrupt.name, err)
		}
		if _, err := decodeEntry(raw); err != nil {
			t.Fatalf("%s: entry overwritten with an undecodable value: %v", corrupt.name, err)
		}
	}
	if code, body := c.Admin("GET", "/redis_cache/health", ""); code != 200 {
		t.Fatalf("health after corrupt entries: %d %s", code, body)
	}
}
