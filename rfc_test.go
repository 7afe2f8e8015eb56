package rediscache

// Integration tests for issue 3: shared-cache correctness and safety
// (RFC 9111 caching, RFC 9211 Cache-Status, RFC 5861 stale-*), and the
// defences against hostile requests (key poisoning, cache deception, CPDoS,
// cross-user leaks). Every test runs a real Caddy built from ./cmd/caddy in
// front of a counting origin, with a real redis-server, and asserts what a
// user sees: statuses, headers, bodies, upstream calls (and the headers the
// upstream received) and the contents of the test's own Redis.
//
// Every response that went through the cache is also checked for the
// Cache-Status rules that hold everywhere: exactly one redis_cache member,
// last in the field, carrying either `hit` or `fwd=...`, never both.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

// rfcSeq numbers every body the rfc origins produce, so that two upstream
// answers never have the same body and a HIT is told from a MISS by its body.
var rfcSeq atomic.Int64

// rfcEnv is one Redis, one origin and one Caddy.
type rfcEnv struct {
	r *redisServer
	u *upstream
	c *caddyProc
}

func rfcHost(u *upstream) string { return strings.TrimPrefix(u.URL, "http://") }

// rfcCacheBlock renders a redis_cache block with the test's Redis, a
// generous store timeout (the machine may be busy; Redis failures are tested
// elsewhere), the namespace ns and the given settings and routes.
func rfcCacheBlock(r *redisServer, ns, settings string) string {
	return "redis_cache {\n\t\tredis " + r.URL() + "\n\t\ttimeout 2s\n\t\tnamespace " + ns + "\n" + settings + "\n\t}"
}

// rfcStart starts Redis, the origin and Caddy with one redis_cache block
// (namespace ns) in front of a reverse_proxy to the origin.
func rfcStart(t *testing.T, ns, settings string) *rfcEnv {
	t.Helper()
	return rfcStartSite(t, func(r *redisServer, u *upstream) string {
		return "\t" + rfcCacheBlock(r, ns, settings) + "\n\treverse_proxy " + rfcHost(u)
	})
}

func rfcStartSite(t *testing.T, site func(r *redisServer, u *upstream) string) *rfcEnv {
	t.Helper()
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, site(r, u))
	return &rfcEnv{r: r, u: u, c: c}
}

// do sends a request (headers as "Name: value") and checks the Cache-Status
// invariants of the answer. Safe in subtests: failures go to t.
func (e *rfcEnv) do(t *testing.T, method, path string, body io.Reader, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := e.c.NewRequest(method, path, body, headers...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	resp, b, err := e.c.DoE(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if msg := rfcCacheStatusProblem(resp); msg != "" {
		t.Fatalf("%s %s: %s", method, path, msg)
	}
	return resp, b
}

func (e *rfcEnv) get(t *testing.T, path string, headers ...string) (*http.Response, string) {
	t.Helper()
	return e.do(t, http.MethodGet, path, nil, headers...)
}

// rfcMembers splits the Cache-Status field into its members, in order.
func rfcMembers(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Cache-Status") {
		for _, m := range strings.Split(v, ",") {
			if m = strings.TrimSpace(m); m != "" {
				out = append(out, m)
			}
		}
	}
	return out
}

// rfcParams returns the parameters of a Cache-Status member ("hit",
// "ttl=42", "fwd=uri-miss", ...), without the cache name.
func rfcParams(member string) []string {
	parts := strings.Split(member, ";")
	out := make([]string, 0, len(parts))
	for _, p := range parts[1:] {
		out = append(out, strings.TrimSpace(p))
	}
	return out
}

// rfcOurs returns this cache's Cache-Status member (the last one), or "".
func rfcOurs(h http.Header) string {
	ms := rfcMembers(h)
	if len(ms) == 0 {
		return ""
	}
	last := ms[len(ms)-1]
	if strings.TrimSpace(strings.Split(last, ";")[0]) != cacheStatusName {
		return ""
	}
	return last
}

// rfcCacheStatusProblem checks the invariants of RFC 9211 on a response
// that went through the cache (it carries X-Cache): exactly one member of
// ours, appended last, with exactly one of `hit` and `fwd`.
func rfcCacheStatusProblem(resp *http.Response) string {
	if resp.Header.Get("X-Cache") == "" {
		return ""
	}
	ms := rfcMembers(resp.Header)
	ours := 0
	for i, m := range ms {
		if strings.TrimSpace(strings.Split(m, ";")[0]) != cacheStatusName {
			continue
		}
		ours++
		if i != len(ms)-1 {
			return fmt.Sprintf("Cache-Status %q: our member is not the last one", ms)
		}
		hit, fwd := false, false
		for _, p := range rfcParams(m) {
			if p == "hit" {
				hit = true
			}
			if strings.HasPrefix(p, "fwd=") {
				fwd = true
			}
		}
		if hit == fwd {
			return fmt.Sprintf("Cache-Status member %q: want exactly one of hit and fwd", m)
		}
	}
	if ours != 1 {
		return fmt.Sprintf("Cache-Status %q: want exactly one %s member", ms, cacheStatusName)
	}
	return ""
}

// rfcHas reports whether our Cache-Status member has exactly this parameter.
func rfcHas(resp *http.Response, param string) bool {
	for _, p := range rfcParams(rfcOurs(resp.Header)) {
		if p == param {
			return true
		}
	}
	return false
}

// rfcWant checks status, X-Cache and that our Cache-Status member carries
// each of params ("stored", "fwd=uri-miss", "detail=no-store", ...). A
// param starting with '!' must be absent.
func rfcWant(t *testing.T, label string, resp *http.Response, body string, status int, xcache string, params ...string) {
	t.Helper()
	if resp.StatusCode != status || resp.Header.Get("X-Cache") != xcache {
		t.Fatalf("%s: got %d X-Cache=%q Cache-Status=%q, want %d %q; body %q",
			label, resp.StatusCode, resp.Header.Get("X-Cache"), resp.Header.Values("Cache-Status"), status, xcache, rfcShort(body))
	}
	for _, p := range params {
		if neg, ok := strings.CutPrefix(p, "!"); ok {
			if rfcHas(resp, neg) {
				t.Fatalf("%s: Cache-Status %q has %q", label, resp.Header.Values("Cache-Status"), neg)
			}
			continue
		}
		if !rfcHas(resp, p) {
			t.Fatalf("%s: Cache-Status %q lacks %q", label, resp.Header.Values("Cache-Status"), p)
		}
	}
	if xcache == "HIT" || xcache == "STALE" || (xcache == "MISS" && rfcHas(resp, "stored")) {
		if _, err := strconv.Atoi(resp.Header.Get("Age")); err != nil {
			t.Fatalf("%s: a stored response served without a valid Age (%q)", label, resp.Header.Get("Age"))
		}
	}
}

var rfcTTLParam = regexp.MustCompile(`^ttl=(-?\d+)$`)

// rfcTTL returns the ttl parameter of our Cache-Status member.
func rfcTTL(t *testing.T, label string, resp *http.Response) int {
	t.Helper()
	for _, p := range rfcParams(rfcOurs(resp.Header)) {
		if m := rfcTTLParam.FindStringSubmatch(p); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	t.Fatalf("%s: Cache-Status %q has no ttl", label, resp.Header.Values("Cache-Status"))
	return 0
}

// rfcAge returns the Age header as an integer.
func rfcAge(t *testing.T, label string, resp *http.Response) int {
	t.Helper()
	n, err := strconv.Atoi(resp.Header.Get("Age"))
	if err != nil {
		t.Fatalf("%s: Age %q is not an integer", label, resp.Header.Get("Age"))
	}
	return n
}

func rfcCalls(t *testing.T, label string, u *upstream, method, path string, want int) {
	t.Helper()
	if n := u.Calls(method, path); n != want {
		t.Fatalf("%s: upstream saw %d %s %s, want %d", label, n, method, path, want)
	}
}

func rfcShort(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// rfcTimeValue expands "@now", "@now+200" and "@now-100" into HTTP dates.
func rfcTimeValue(v string, now time.Time) string {
	rest, ok := strings.CutPrefix(v, "@now")
	if !ok {
		return v
	}
	off := 0
	if rest != "" {
		off, _ = strconv.Atoi(rest)
	}
	return now.Add(time.Duration(off) * time.Second).UTC().Format(http.TimeFormat)
}

// rfcRespond is an origin handler answering status with the given headers
// ("Name: value", where "@now+N" values become HTTP dates) and a body naming
// the request and a fresh sequence number.
func rfcRespond(status int, headers ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		for _, h := range headers {
			name, value, _ := strings.Cut(h, ":")
			w.Header().Add(strings.TrimSpace(name), rfcTimeValue(strings.TrimSpace(value), now))
		}
		rfcWriteBody(w, r, status)
	}
}

// rfcWriteBody writes status and, where the status allows one, a unique
// text body that echoes the identity headers the origin received.
func rfcWriteBody(w http.ResponseWriter, r *http.Request, status int) {
	n := rfcSeq.Add(1)
	if status == http.StatusNoContent || status == http.StatusNotModified {
		w.WriteHeader(status)
		return
	}
	body := fmt.Sprintf("%s %s #%d auth=%q user=%q ae=%q", r.Method, r.URL.RequestURI(), n,
		r.Header.Get("Authorization"), r.Header.Get("X-User-Id"), r.Header.Get("Accept-Encoding"))
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// rfcPurge calls the admin purge API and returns the number of removed keys.
func rfcPurge(t *testing.T, c *caddyProc, body string) int64 {
	t.Helper()
	code, out := c.Admin(http.MethodPost, "/redis_cache/purge", body)
	if code != http.StatusOK {
		t.Fatalf("purge %s: %d %s", body, code, out)
	}
	var res struct {
		Removed int64 `json:"removed"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("purge %s: answer %q: %v", body, out, err)
	}
	return res.Removed
}

// rfcPrime asserts a MISS that is stored, then a HIT with the same body.
func rfcPrime(t *testing.T, e *rfcEnv, path string, headers ...string) string {
	t.Helper()
	r1, b1 := e.get(t, path, headers...)
	rfcWant(t, "prime "+path, r1, b1, 200, "MISS", "stored")
	r2, b2 := e.get(t, path, headers...)
	rfcWant(t, "prime "+path+" again", r2, b2, 200, "HIT", "hit")
	if b2 != b1 {
		t.Fatalf("prime %s: HIT body %q, want the stored %q", path, b2, b1)
	}
	return b1
}

// ---------------------------------------------------------------------------
// Freshness and what is stored
// ---------------------------------------------------------------------------

// TestRFCFreshnessAndStorage covers RFC 9111 §3 and §4.2.1: s-maxage beats
// max-age beats Expires beats the route ttl; a route without ttl stores only
// what the origin marks fresh; force_ttl ignores the origin's freshness but
// never stores no-store or private; an invalid Expires is stale; no-store,
// private, Vary: *, Set-Cookie and non-default statuses are never stored,
// the default statuses are; a GET with a body is neither served from the
// cache nor stored; a HEAD miss stores the GET entry.
func TestRFCFreshnessAndStorage(t *testing.T) {
	e := rfcStart(t, "rfcf", `
		route fresh /fresh/* 300s
		route origin /origin/*
		route forced /forced/* 1h {
			force_ttl
		}`)

	type storeCase struct {
		path     string
		status   int
		headers  []string
		detail   string // "" when the response must be stored
		ttl      int    // stored: the freshness lifetime the HIT must show
		tolerate int    // stored: how far below ttl the HIT's ttl may be
	}
	cases := []storeCase{
		// Freshness order (§4.2.1).
		{path: "/fresh/s-maxage", headers: []string{"Cache-Control: max-age=100, s-maxage=50", "Expires: @now+200", "Date: @now"}, ttl: 50},
		{path: "/fresh/max-age", headers: []string{"Cache-Control: max-age=100", "Expires: @now+200", "Date: @now"}, ttl: 100},
		{path: "/fresh/expires", headers: []string{"Expires: @now+200", "Date: @now"}, ttl: 200},
		{path: "/fresh/route-ttl", ttl: 300},
		{path: "/fresh/max-age-quoted", headers: []string{`Cache-Control: max-age="120"`}, ttl: 120},
		{path: "/fresh/max-age-beats-invalid-expires", headers: []string{"Cache-Control: max-age=100", "Expires: 0"}, ttl: 100},
		// An invalid or past Expires means stale, not the route ttl.
		{path: "/fresh/expires-zero", headers: []string{"Expires: 0"}, detail: "not-fresh"},
		{path: "/fresh/expires-garbage", headers: []string{"Expires: next tuesday"}, detail: "not-fresh"},
		{path: "/fresh/expires-past", headers: []string{"Expires: @now-100", "Date: @now"}, detail: "not-fresh"},
		{path: "/fresh/max-age-0", headers: []string{"Cache-Control: max-age=0"}, detail: "not-fresh"},
		// A route without ttl: the origin's freshness only.
		{path: "/origin/nothing", detail: "not-fresh"},
		{path: "/origin/max-age", headers: []string{"Cache-Control: max-age=60"}, ttl: 60},
		{path: "/origin/expires", headers: []string{"Expires: @now+120", "Date: @now"}, ttl: 120},
		{path: "/origin/s-maxage", headers: []string{"Cache-Control: s-maxage=90, max-age=10"}, ttl: 90},
		// force_ttl: the route ttl wins, but no-store and private are never stored.
		{path: "/forced/max-age-1", headers: []string{"Cache-Control: max-age=1"}, ttl: 3600},
		{path: "/forced/s-maxage-1", headers: []string{"Cache-Control: s-maxage=1"}, ttl: 3600},
		{path: "/forced/expires-past", headers: []string{"Expires: @now-100", "Date: @now"}, ttl: 3600},
		{path: "/forced/no-store", headers: []string{"Cache-Control: no-store"}, detail: "no-store"},
		{path: "/forced/private", headers: []string{"Cache-Control: private, max-age=600"}, detail: "private"},
		// Never stored.
		{path: "/fresh/no-store", headers: []string{"Cache-Control: max-age=600, no-store"}, detail: "no-store"},
		{path: "/fresh/private", headers: []string{"Cache-Control: private"}, detail: "private"},
		{path: "/fresh/vary-star", headers: []string{"Cache-Control: max-age=600", "Vary: *"}, detail: "vary-star"},
		{path: "/fresh/vary-star-listed", headers: []string{"Vary: Accept-Encoding, *"}, detail: "vary-star"},
		{path: "/fresh/set-cookie", headers: []string{"Cache-Control: max-age=600", "Set-Cookie: sid=secret"}, detail: "set-cookie"},
		// Unlisted statuses: the route ttl never applies (RFC 9111 §3
		// lets explicit freshness store them; see TestRFCStorableStatuses).
		{path: "/fresh/500", status: 500, detail: "status"},
		{path: "/fresh/302", status: 302, headers: []string{"Location: /elsewhere"}, detail: "status"},
		{path: "/fresh/201", status: 201, detail: "status"},
		{path: "/fresh/400", status: 400, detail: "status"},
		{path: "/fresh/403", status: 403, detail: "status"},
		// The default storable statuses.
		{path: "/fresh/203", status: 203, ttl: 300},
		{path: "/fresh/204", status: 204, ttl: 300},
		{path: "/fresh/300", status: 300, ttl: 300},
		{path: "/fresh/301", status: 301, headers: []string{"Location: /moved"}, ttl: 300},
		{path: "/fresh/404", status: 404, ttl: 300},
		{path: "/fresh/410", status: 410, headers: []string{"Cache-Control: max-age=30"}, ttl: 30},
	}
	stored := map[string]int{}
	for _, tc := range cases {
		if tc.status == 0 {
			tc.status = 200
		}
		e.u.Handle(tc.path, rfcRespond(tc.status, tc.headers...))
		if tc.detail == "" {
			stored[strings.Split(tc.path, "/")[1]]++
		}
	}
	for _, tc := range cases {
		tc := tc
		if tc.status == 0 {
			tc.status = 200
		}
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			fwdStatus := "fwd-status=" + strconv.Itoa(tc.status)
			r1, b1 := e.get(t, tc.path)
			if tc.detail == "" {
				rfcWant(t, "first", r1, b1, tc.status, "MISS", "fwd=uri-miss", fwdStatus, "stored")
				r2, b2 := e.get(t, tc.path)
				rfcWant(t, "second", r2, b2, tc.status, "HIT", "hit")
				if b2 != b1 {
					t.Fatalf("HIT body %q, want the stored %q", b2, b1)
				}
				tol := tc.tolerate
				if tol == 0 {
					tol = 10
				}
				if ttl := rfcTTL(t, "second", r2); ttl > tc.ttl || ttl < tc.ttl-tol {
					t.Fatalf("HIT ttl=%d, want %d (freshness from %v)", ttl, tc.ttl, tc.headers)
				}
				for _, h := range tc.headers {
					name, _, _ := strings.Cut(h, ":")
					if name == "Location" && r2.Header.Get(name) == "" {
						t.Fatalf("HIT lost the %s header", name)
					}
				}
				rfcCalls(t, "MISS then HIT", e.u, "GET", tc.path, 1)
				return
			}
			rfcWant(t, "first", r1, b1, tc.status, "MISS", "fwd=uri-miss", fwdStatus, "detail="+tc.detail, "!stored")
			r2, b2 := e.get(t, tc.path)
			rfcWant(t, "second", r2, b2, tc.status, "MISS", "fwd=uri-miss", "detail="+tc.detail, "!stored")
			if b2 == b1 && b1 != "" {
				t.Fatalf("second answer %q repeats the first: served from a store", b2)
			}
			rfcCalls(t, "not stored", e.u, "GET", tc.path, 2)
		})
	}
	t.Run("redis holds exactly the stored entries", func(t *testing.T) {
		for route, n := range stored {
			if keys := e.r.Keys("rfcf:" + route + ":*"); len(keys) != n {
				t.Fatalf("route %s: %d entry keys %q, want %d", route, len(keys), keys, n)
			}
		}
	})

	t.Run("GET with a body is neither served from the cache nor stored", func(t *testing.T) {
		stored := rfcPrime(t, e, "/fresh/with-body")
		for i := 0; i < 2; i++ {
			r, b := e.do(t, http.MethodGet, "/fresh/with-body", strings.NewReader("payload"))
			rfcWant(t, "GET with body", r, b, 200, "SKIP", "fwd=bypass", "detail=request-body")
			if b == stored {
				t.Fatalf("GET with a body got the stored entry %q", b)
			}
		}
		rfcCalls(t, "GET with body", e.u, "GET", "/fresh/with-body", 3)
		// A GET with a body on a cold URI stores nothing.
		r, b := e.do(t, http.MethodGet, "/fresh/body-first", strings.NewReader("payload"))
		rfcWant(t, "cold GET with body", r, b, 200, "SKIP", "fwd=bypass", "detail=request-body")
		r, b = e.get(t, "/fresh/body-first")
		rfcWant(t, "plain GET after a GET with body", r, b, 200, "MISS", "fwd=uri-miss", "stored")
	})

	t.Run("HEAD miss stores the GET entry", func(t *testing.T) {
		const p = "/fresh/head-first"
		e.u.Handle(p, rfcRespond(200))
		r, b := e.do(t, http.MethodHead, p, nil)
		rfcWant(t, "HEAD miss", r, b, 200, "MISS", "fwd=uri-miss", "stored")
		if b != "" {
			t.Fatalf("HEAD answered with a body %q", b)
		}
		rfcCalls(t, "HEAD miss goes upstream as GET", e.u, "GET", p, 1)
		rfcCalls(t, "HEAD miss goes upstream as GET", e.u, "HEAD", p, 0)
		r, body := e.get(t, p)
		rfcWant(t, "GET after HEAD", r, body, 200, "HIT", "hit")
		if !strings.HasPrefix(body, "GET "+p+" #") {
			t.Fatalf("GET after HEAD: body %q, want the full GET body", body)
		}
		if r.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Fatalf("GET after HEAD: Content-Length %q for %d bytes", r.Header.Get("Content-Length"), len(body))
		}
		r, b = e.do(t, http.MethodHead, p, nil)
		rfcWant(t, "HEAD hit", r, b, 200, "HIT", "hit")
		if b != "" || r.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Fatalf("HEAD hit: body %q, Content-Length %q, want none and %d", b, r.Header.Get("Content-Length"), len(body))
		}
		rfcCalls(t, "HEAD/GET", e.u, "GET", p, 1)
	})
}

// ---------------------------------------------------------------------------
// Age and Cache-Status
// ---------------------------------------------------------------------------

// TestRFCAgeAndCacheStatus covers RFC 9111 §4.2.3 (Age, including an
// upstream Age) and RFC 9211: the ttl goes negative when stale, the fwd
// reasons, stored / detail, and an upstream's member kept before ours.
func TestRFCAgeAndCacheStatus(t *testing.T) {
	e := rfcStart(t, "rfca", `
		route swr /swr/* 300s {
			stale_while_revalidate 30s
		}
		route plain /p/* 300s`)

	t.Run("upstream Age counts against max-age", func(t *testing.T) {
		const p = "/swr/age-100-max-age-101"
		e.u.Handle(p, rfcRespond(200, "Cache-Control: max-age=101", "Age: 100"))
		r1, b1 := e.get(t, p)
		rfcWant(t, "first", r1, b1, 200, "MISS", "fwd=uri-miss", "stored")
		a1 := rfcAge(t, "first", r1)
		if a1 < 100 || a1 > 110 {
			t.Fatalf("first: Age %d, want the upstream's 100 plus transit", a1)
		}
		time.Sleep(2 * time.Second)
		r2, b2 := e.get(t, p)
		rfcWant(t, "2s later", r2, b2, 200, "STALE", "fwd=stale", "detail=stale-while-revalidate")
		if b2 != b1 {
			t.Fatalf("stale-while-revalidate served %q, want the stored %q", b2, b1)
		}
		if ttl := rfcTTL(t, "2s later", r2); ttl > -1 {
			t.Fatalf("stale entry served with ttl=%d, want a negative ttl", ttl)
		}
		if a2 := rfcAge(t, "2s later", r2); a2 < a1+1 || a2 < 102 {
			t.Fatalf("stale entry Age %d, want at least %d", a2, max(a1+1, 102))
		}
		// The stale answer started one background refresh.
		if !harnessWaitUntil(15*time.Second, func() bool { return e.u.Calls("GET", p) == 2 }) {
			t.Fatalf("background refresh: upstream saw %d GETs, want 2", e.u.Calls("GET", p))
		}
	})

	t.Run("a second of freshness left is still stored", func(t *testing.T) {
		const p = "/p/age-100-max-age-101"
		e.u.Handle(p, rfcRespond(200, "Cache-Control: max-age=101", "Age: 100"))
		r, b := e.get(t, p)
		rfcWant(t, "first", r, b, 200, "MISS", "fwd=uri-miss", "stored")
		if a := rfcAge(t, "first", r); a < 100 || a > 110 {
			t.Fatalf("first: Age %d, want the upstream's 100 plus transit", a)
		}
		time.Sleep(2 * time.Second)
		r, b = e.get(t, p)
		rfcWant(t, "2s later", r, b, 200, "MISS", "stored")
		rfcCalls(t, "expired", e.u, "GET", p, 2)
	})

	t.Run("Age grows on hits and ttl shrinks", func(t *testing.T) {
		const p = "/p/aged"
		e.u.Handle(p, rfcRespond(200, "Cache-Control: max-age=600", "Age: 100"))
		r1, b1 := e.get(t, p)
		rfcWant(t, "first", r1, b1, 200, "MISS", "stored")
		r2, b2 := e.get(t, p)
		rfcWant(t, "hit", r2, b2, 200, "HIT", "hit")
		a2, t2 := rfcAge(t, "hit", r2), rfcTTL(t, "hit", r2)
		if a2 < 100 || a2 > 110 || a2+t2 < 599 || a2+t2 > 600 {
			t.Fatalf("hit: Age %d ttl %d, want Age ~100 and Age+ttl = max-age 600", a2, t2)
		}
		time.Sleep(2100 * time.Millisecond)
		r3, b3 := e.get(t, p)
		rfcWant(t, "later hit", r3, b3, 200, "HIT", "hit")
		a3, t3 := rfcAge(t, "later hit", r3), rfcTTL(t, "later hit", r3)
		if a3 < a2+2 || t3 > t2-2 || a3+t3 < 599 || a3+t3 > 600 {
			t.Fatalf("2.1s later: Age %d ttl %d (were %d, %d), want Age +2 and ttl -2", a3, t3, a2, t2)
		}
		rfcCalls(t, "aged", e.u, "GET", p, 1)
	})

	t.Run("fwd=bypass for a Cookie on a route without key", func(t *testing.T) {
		const p = "/p/cookie"
		stored := rfcPrime(t, e, p)
		r, b := e.get(t, p, "Cookie: session=abc")
		rfcWant(t, "cookie", r, b, 200, "SKIP", "fwd=bypass", "fwd-status=200", "detail=cookie")
		if b == stored {
			t.Fatalf("a request with Cookie got the shared entry")
		}
		rfcCalls(t, "cookie", e.u, "GET", p, 2)
	})

	t.Run("fwd=method for methods the cache does not serve", func(t *testing.T) {
		const p = "/p/methods"
		stored := rfcPrime(t, e, p)
		r, b := e.do(t, http.MethodOptions, p, nil)
		rfcWant(t, "OPTIONS", r, b, 200, "SKIP", "fwd=method", "fwd-status=200")
		r, b = e.do(t, http.MethodPost, p, strings.NewReader("x"))
		rfcWant(t, "POST", r, b, 200, "SKIP", "fwd=method", "fwd-status=200")
		if b == stored {
			t.Fatalf("POST got the stored GET entry")
		}
	})

	t.Run("fwd=miss after a purge, fwd=uri-miss when nothing is stored", func(t *testing.T) {
		const p = "/p/purged"
		rfcPrime(t, e, p)
		rfcPurge(t, e.c, `{"route":"plain"}`)
		r, b := e.get(t, p)
		rfcWant(t, "after purge", r, b, 200, "MISS", "fwd=miss", "fwd-status=200", "stored")
		r, b = e.get(t, p)
		rfcWant(t, "after purge, again", r, b, 200, "HIT", "hit")
	})

	t.Run("an upstream Cache-Status is kept first, ours appended", func(t *testing.T) {
		const theirs = "origin-cache; hit; ttl=5"
		e.u.Handle("/p/upstream-cs", rfcRespond(200, "Cache-Control: max-age=60", "Cache-Status: "+theirs))
		e.u.Handle("/p/upstream-cs-nostore", rfcRespond(200, "Cache-Control: no-store", "Cache-Status: "+theirs))
		check := func(label string, r *http.Response) {
			t.Helper()
			ms := rfcMembers(r.Header)
			if len(ms) != 2 || ms[0] != theirs || !strings.HasPrefix(ms[1], cacheStatusName+";") {
				t.Fatalf("%s: Cache-Status %q, want %q then ours", label, ms, theirs)
			}
		}
		r, b := e.get(t, "/p/upstream-cs")
		rfcWant(t, "miss", r, b, 200, "MISS", "stored")
		check("miss", r)
		r, b = e.get(t, "/p/upstream-cs")
		rfcWant(t, "hit", r, b, 200, "HIT", "hit")
		check("hit", r)
		r, b = e.get(t, "/p/upstream-cs-nostore")
		rfcWant(t, "not stored", r, b, 200, "MISS", "detail=no-store")
		check("not stored", r)
	})
}

// ---------------------------------------------------------------------------
// Authorization (RFC 9111 §3.5)
// ---------------------------------------------------------------------------

// TestRFCAuthorization: without a route key, an answer to a request with
// Authorization is stored only when the origin allows it (public, s-maxage,
// must-revalidate), and never served to an anonymous request; with a route
// key that carries the identity it is stored per identity.
func TestRFCAuthorization(t *testing.T) {
	e := rfcStart(t, "rfcz", `
		route auth /auth/* 300s
		route authkey /authkey/* 300s {
			key {http.request.header.Authorization}
		}`)
	const alice, bob = "Authorization: Bearer alice", "Authorization: Bearer bob"

	cases := []struct {
		path   string
		cc     string
		shared bool
	}{
		{"/auth/max-age", "max-age=60", false},
		{"/auth/no-freshness", "", false},
		{"/auth/no-cache-etag", "", false},
		{"/auth/public", "public, max-age=60", true},
		{"/auth/public-route-ttl", "public", true},
		{"/auth/s-maxage", "s-maxage=60", true},
		{"/auth/must-revalidate", "must-revalidate, max-age=60", true},
	}
	for _, tc := range cases {
		tc := tc
		var hdrs []string
		if tc.cc != "" {
			hdrs = append(hdrs, "Cache-Control: "+tc.cc)
		}
		e.u.Handle(tc.path, rfcRespond(200, hdrs...))
		t.Run(strings.TrimPrefix(tc.path, "/auth/"), func(t *testing.T) {
			r1, b1 := e.get(t, tc.path, alice)
			if !strings.Contains(b1, `auth="Bearer alice"`) {
				t.Fatalf("upstream did not get alice's Authorization: %q", b1)
			}
			r2, b2 := e.get(t, tc.path, bob)
			if tc.shared {
				rfcWant(t, "alice", r1, b1, 200, "MISS", "stored")
				rfcWant(t, "bob", r2, b2, 200, "HIT", "hit")
				if b2 != b1 {
					t.Fatalf("bob got %q, want the shared (public) entry %q", b2, b1)
				}
			} else {
				rfcWant(t, "alice", r1, b1, 200, "MISS", "detail=authorization", "!stored")
				rfcWant(t, "bob", r2, b2, 200, "MISS", "detail=authorization", "!stored")
				if !strings.Contains(b2, `auth="Bearer bob"`) {
					t.Fatalf("bob got %q, want his own answer", b2)
				}
			}
			// An anonymous request never gets an answer made for credentials.
			for i := 0; i < 2; i++ {
				r, b := e.get(t, tc.path)
				if !strings.Contains(b, `auth=""`) {
					t.Fatalf("anonymous request %d got %q (made for an Authorization)", i, b)
				}
				want := []string{"MISS", "HIT"}[i]
				rfcWant(t, "anonymous", r, b, 200, want)
			}
			// And credentials do not get the anonymous entry.
			r, b := e.get(t, tc.path, bob)
			if strings.Contains(b, `auth=""`) {
				t.Fatalf("bob got the anonymous entry %q (X-Cache %s)", b, r.Header.Get("X-Cache"))
			}
		})
	}

	t.Run("route key carrying the identity stores per identity", func(t *testing.T) {
		const p = "/authkey/me"
		e.u.Handle(p, rfcRespond(200, "Cache-Control: max-age=60"))
		ra, ba := e.get(t, p, alice)
		rfcWant(t, "alice", ra, ba, 200, "MISS", "stored")
		rb, bb := e.get(t, p, bob)
		rfcWant(t, "bob", rb, bb, 200, "MISS", "stored")
		for i := 0; i < 2; i++ {
			r, b := e.get(t, p, alice)
			rfcWant(t, "alice again", r, b, 200, "HIT", "hit")
			if b != ba {
				t.Fatalf("alice got %q, want her own %q", b, ba)
			}
			if cc := r.Header.Get("Cache-Control"); cc != "private" {
				t.Fatalf("keyed HIT Cache-Control %q, want private", cc)
			}
			r, b = e.get(t, p, bob)
			rfcWant(t, "bob again", r, b, 200, "HIT", "hit")
			if b != bb {
				t.Fatalf("bob got %q, want his own %q", b, bb)
			}
		}
		r, b := e.get(t, p)
		rfcWant(t, "anonymous on keyed route", r, b, 200, "SKIP", "fwd=bypass", "detail=empty-key")
		if !strings.Contains(b, `auth=""`) {
			t.Fatalf("anonymous got %q", b)
		}
		rfcCalls(t, "keyed", e.u, "GET", p, 3)
		if keys := e.r.Keys("rfcz:authkey:*"); len(keys) != 2 {
			t.Fatalf("keyed route entries %q, want one per identity", keys)
		}
	})
}

// ---------------------------------------------------------------------------
// Validation: no-cache, stale entries, 304s
// ---------------------------------------------------------------------------

// TestRFCRevalidation: no-cache responses with a validator are stored but
// revalidated before every use; a stale entry is revalidated with
// If-None-Match / If-Modified-Since; a 304 serves the stored body and
// updates the stored headers and freshness (RFC 9111 §4.3, §3.2).
func TestRFCRevalidation(t *testing.T) {
	e := rfcStart(t, "rfcr", `
		route reval /reval/* 300s`)
	lastModified := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)

	e.u.Handle("/reval/no-cache", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Cache-Control", "no-cache")
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		rfcWriteBody(w, r, 200)
	})
	e.u.Handle("/reval/no-cache-no-validator", rfcRespond(200, "Cache-Control: no-cache"))
	e.u.Handle("/reval/last-modified", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", lastModified)
		w.Header().Set("Cache-Control", "max-age=1")
		if ims := r.Header.Get("If-Modified-Since"); ims != "" {
			if since, err := http.ParseTime(ims); err == nil {
				if lm, _ := http.ParseTime(lastModified); !lm.After(since) {
					w.WriteHeader(http.StatusNotModified)
					return
				}
			}
		}
		rfcWriteBody(w, r, 200)
	})
	e.u.Handle("/reval/update", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"e1"`)
		if r.Header.Get("If-None-Match") == `"e1"` {
			w.Header().Set("Cache-Control", "max-age=60")
			w.Header().Set("X-Version", "2")
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Cache-Control", "max-age=1")
		w.Header().Set("X-Version", "1")
		rfcWriteBody(w, r, 200)
	})
	var changed atomic.Int64
	e.u.Handle("/reval/changed", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", fmt.Sprintf(`"c%d"`, changed.Add(1)))
		w.Header().Set("Cache-Control", "max-age=1")
		rfcWriteBody(w, r, 200)
	})

	t.Run("no-cache with ETag is stored and always revalidated", func(t *testing.T) {
		const p = "/reval/no-cache"
		r1, b1 := e.get(t, p)
		rfcWant(t, "first", r1, b1, 200, "MISS", "fwd=uri-miss", "stored")
		if h := e.u.LastHeaders("GET", p).Get("If-None-Match"); h != "" {
			t.Fatalf("first request carried If-None-Match %q upstream", h)
		}
		for i := 2; i <= 3; i++ {
			r, b := e.get(t, p)
			rfcWant(t, "revalidated", r, b, 200, "HIT", "fwd=stale", "fwd-status=304")
			if b != b1 {
				t.Fatalf("revalidated answer %q, want the stored body %q", b, b1)
			}
			if h := e.u.LastHeaders("GET", p).Get("If-None-Match"); h != `"v1"` {
				t.Fatalf("revalidation sent If-None-Match %q, want \"v1\"", h)
			}
			rfcCalls(t, "no-cache", e.u, "GET", p, i)
		}
		if keys := e.r.Keys("rfcr:reval:*"); len(keys) != 1 {
			t.Fatalf("no-cache entry keys %q, want 1", keys)
		}
	})

	t.Run("no-cache without a validator is not stored", func(t *testing.T) {
		const p = "/reval/no-cache-no-validator"
		for i := 1; i <= 2; i++ {
			r, b := e.get(t, p)
			rfcWant(t, "no-cache", r, b, 200, "MISS", "detail=no-cache", "!stored")
		}
		rfcCalls(t, "no-cache without validator", e.u, "GET", p, 2)
	})

	// The three stale cases share one wait.
	rLM, bLM := e.get(t, "/reval/last-modified")
	rfcWant(t, "last-modified first", rLM, bLM, 200, "MISS", "stored")
	rUp, bUp := e.get(t, "/reval/update")
	rfcWant(t, "update first", rUp, bUp, 200, "MISS", "stored")
	if v := rUp.Header.Get("X-Version"); v != "1" {
		t.Fatalf("update first: X-Version %q", v)
	}
	rCh, bCh := e.get(t, "/reval/changed")
	rfcWant(t, "changed first", rCh, bCh, 200, "MISS", "stored")
	time.Sleep(2100 * time.Millisecond)

	t.Run("stale entry with Last-Modified revalidates with If-Modified-Since", func(t *testing.T) {
		const p = "/reval/last-modified"
		r, b := e.get(t, p)
		rfcWant(t, "stale", r, b, 200, "HIT", "fwd=stale", "fwd-status=304")
		if b != bLM {
			t.Fatalf("revalidated body %q, want the stored %q", b, bLM)
		}
		hdr := e.u.LastHeaders("GET", p)
		if hdr.Get("If-Modified-Since") != lastModified || hdr.Get("If-None-Match") != "" {
			t.Fatalf("revalidation sent If-Modified-Since %q If-None-Match %q, want %q and none",
				hdr.Get("If-Modified-Since"), hdr.Get("If-None-Match"), lastModified)
		}
		rfcCalls(t, "last-modified", e.u, "GET", p, 2)
	})

	t.Run("a 304 updates the stored headers and freshness", func(t *testing.T) {
		const p = "/reval/update"
		r, b := e.get(t, p)
		rfcWant(t, "revalidated", r, b, 200, "HIT", "fwd=stale", "fwd-status=304", "stored")
		if b != bUp || r.Header.Get("X-Version") != "2" {
			t.Fatalf("revalidated: body %q X-Version %q, want the stored body and X-Version 2", b, r.Header.Get("X-Version"))
		}
		if h := e.u.LastHeaders("GET", p).Get("If-None-Match"); h != `"e1"` {
			t.Fatalf("revalidation sent If-None-Match %q", h)
		}
		r, b = e.get(t, p)
		rfcWant(t, "next", r, b, 200, "HIT", "hit")
		if b != bUp || r.Header.Get("X-Version") != "2" {
			t.Fatalf("next hit: body %q X-Version %q, want the stored body and the 304's X-Version 2", b, r.Header.Get("X-Version"))
		}
		if ttl := rfcTTL(t, "next", r); ttl < 50 || ttl > 60 {
			t.Fatalf("next hit ttl=%d, want the 304's max-age=60", ttl)
		}
		if cc := r.Header.Get("Cache-Control"); cc != "max-age=60" {
			t.Fatalf("next hit Cache-Control %q, want the 304's", cc)
		}
		rfcCalls(t, "update", e.u, "GET", p, 2)
	})

	t.Run("a changed resource replaces the stale entry", func(t *testing.T) {
		const p = "/reval/changed"
		r, b := e.get(t, p)
		rfcWant(t, "stale, changed", r, b, 200, "MISS", "fwd=stale", "fwd-status=200", "stored")
		if b == bCh {
			t.Fatalf("changed resource: got the old body")
		}
		if h := e.u.LastHeaders("GET", p).Get("If-None-Match"); h != rCh.Header.Get("ETag") {
			t.Fatalf("revalidation sent If-None-Match %q, want %q", h, rCh.Header.Get("ETag"))
		}
		r2, b2 := e.get(t, p)
		if b2 != b || r2.Header.Get("ETag") != r.Header.Get("ETag") {
			t.Fatalf("after the change: %s %q, want the new body %q", r2.Header.Get("X-Cache"), b2, b)
		}
	})
}

// ---------------------------------------------------------------------------
// Vary
// ---------------------------------------------------------------------------

// TestRFCVary: every Vary variant is stored and matched separately, and the
// newest response wins when the origin's Vary changes (RFC 9111 §4.1).
func TestRFCVary(t *testing.T) {
	e := rfcStart(t, "rfcv", `
		route vary /vary/* 300s
		route tenant /tenant/* 300s {
			vary X-Tenant
		}`)

	t.Run("Accept-Encoding variants", func(t *testing.T) {
		const p = "/vary/ae"
		e.u.Handle(p, rfcRespond(200, "Vary: Accept-Encoding", "Cache-Control: max-age=300"))
		rg, bg := e.get(t, p, "Accept-Encoding: gzip")
		rfcWant(t, "gzip", rg, bg, 200, "MISS", "fwd=uri-miss", "stored")
		ri, bi := e.get(t, p)
		rfcWant(t, "identity", ri, bi, 200, "MISS", "fwd=vary-miss", "stored")
		// (Caddy's proxy transport asks the origin for gzip by itself when
		// the client does not, so the origin's view cannot tell the two
		// apart; the bodies' sequence numbers do.)
		if !strings.Contains(bg, `ae="gzip"`) || bi == bg {
			t.Fatalf("bodies %q / %q: want two answers, the first for gzip", bg, bi)
		}
		rfcCalls(t, "two variants", e.u, "GET", p, 2)
		for i := 0; i < 2; i++ {
			r, b := e.get(t, p, "Accept-Encoding: gzip")
			rfcWant(t, "gzip again", r, b, 200, "HIT", "hit")
			if b != bg {
				t.Fatalf("gzip request got %q, want %q", b, bg)
			}
			r, b = e.get(t, p)
			rfcWant(t, "identity again", r, b, 200, "HIT", "hit")
			if b != bi {
				t.Fatalf("identity request got %q, want %q", b, bi)
			}
		}
		r, b := e.get(t, p, "Accept-Encoding: br")
		rfcWant(t, "br", r, b, 200, "MISS", "fwd=vary-miss", "stored")
		rfcCalls(t, "three variants", e.u, "GET", p, 3)
	})

	t.Run("newest response wins when Vary changes", func(t *testing.T) {
		const p = "/vary/newest"
		var phase atomic.Int32
		e.u.Handle(p, func(w http.ResponseWriter, r *http.Request) {
			if phase.Load() == 0 {
				w.Header().Set("Vary", "Accept-Encoding")
				w.Header().Set("Cache-Control", "max-age=1")
				w.Header().Set("ETag", `"old"`) // kept past max-age=1 for revalidation
			} else {
				w.Header().Set("Vary", "Accept-Language")
				w.Header().Set("Cache-Control", "max-age=300")
				w.Header().Set("X-Phase", "new")
			}
			rfcWriteBody(w, r, 200)
		})
		r, b := e.get(t, p, "Accept-Encoding: gzip")
		rfcWant(t, "old gzip", r, b, 200, "MISS", "stored")
		r, oldIdentity := e.get(t, p)
		rfcWant(t, "old identity", r, oldIdentity, 200, "MISS", "stored")
		time.Sleep(2100 * time.Millisecond)
		phase.Store(1)
		r, newest := e.get(t, p, "Accept-Encoding: gzip")
		rfcWant(t, "stale gzip", r, newest, 200, "MISS", "fwd=stale", "stored")
		// Both old variants are superseded: a request that matched the old
		// identity variant now gets the newest response (Accept-Language is
		// absent in both).
		for _, hdrs := range [][]string{nil, {"Accept-Encoding: gzip"}} {
			r, b := e.get(t, p, hdrs...)
			rfcWant(t, fmt.Sprintf("after change %v", hdrs), r, b, 200, "HIT", "hit")
			if b != newest || r.Header.Get("X-Phase") != "new" {
				t.Fatalf("after change %v: got %q, want the newest %q", hdrs, b, newest)
			}
		}
		r, b = e.get(t, p, "Accept-Language: fr")
		rfcWant(t, "new variant", r, b, 200, "MISS", "fwd=vary-miss", "stored")
		rfcCalls(t, "newest", e.u, "GET", p, 4)
	})

	t.Run("route vary header is part of the key", func(t *testing.T) {
		const p = "/tenant/home"
		ba := rfcPrime(t, e, p, "X-Tenant: a")
		bb := rfcPrime(t, e, p, "X-Tenant: b")
		if ba == bb {
			t.Fatalf("tenants a and b share an entry")
		}
		rfcPrime(t, e, p)
		rfcCalls(t, "tenants", e.u, "GET", p, 3)
	})
}

// ---------------------------------------------------------------------------
// Conditional requests from clients
// ---------------------------------------------------------------------------

// TestRFCConditionalRequests: If-None-Match and If-Modified-Since are
// answered with 304 from the stored entry, without the upstream; the
// upstream never sees the client's validators on a miss.
func TestRFCConditionalRequests(t *testing.T) {
	e := rfcStart(t, "rfcc", `
		route cond /cond/* 300s`)
	lm := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	date := func(d time.Duration) string { return lm.Add(d).Format(http.TimeFormat) }
	// The origin ignores conditionals: every 304 below comes from the cache.
	origin := rfcRespond(200, `ETag: "abc"`, "Last-Modified: "+date(0), "Cache-Control: max-age=300")
	e.u.Handle("/cond/doc", origin)
	e.u.Handle("/cond/first", origin)

	stored := rfcPrime(t, e, "/cond/doc")
	cases := []struct {
		name    string
		headers []string
		status  int
	}{
		{"If-None-Match matches", []string{`If-None-Match: "abc"`}, 304},
		{"If-None-Match weak matches", []string{`If-None-Match: W/"abc"`}, 304},
		{"If-None-Match list matches", []string{`If-None-Match: "zzz", "abc"`}, 304},
		{"If-None-Match star", []string{`If-None-Match: *`}, 304},
		{"If-None-Match differs", []string{`If-None-Match: "zzz"`}, 200},
		{"If-Modified-Since equal", []string{"If-Modified-Since: " + date(0)}, 304},
		{"If-Modified-Since later", []string{"If-Modified-Since: " + date(time.Hour)}, 304},
		{"If-Modified-Since earlier", []string{"If-Modified-Since: " + date(-time.Hour)}, 200},
		{"If-Modified-Since invalid", []string{"If-Modified-Since: yesterday"}, 200},
		{"If-None-Match wins over If-Modified-Since", []string{`If-None-Match: "zzz"`, "If-Modified-Since: " + date(time.Hour)}, 200},
	}
	for _, tc := range cases {
		tc := tc
		t.Run(tc.name, func(t *testing.T) {
			r, b := e.get(t, "/cond/doc", tc.headers...)
			rfcWant(t, tc.name, r, b, tc.status, "HIT", "hit")
			if tc.status == 304 {
				if b != "" || r.Header.Get("ETag") != `"abc"` {
					t.Fatalf("304: body %q ETag %q, want no body and the stored ETag", b, r.Header.Get("ETag"))
				}
			} else if b != stored {
				t.Fatalf("200: body %q, want the stored %q", b, stored)
			}
			rfcCalls(t, tc.name, e.u, "GET", "/cond/doc", 1)
		})
	}

	t.Run("conditional miss: an origin 200 is stored, 304 to the client", func(t *testing.T) {
		r, b := e.get(t, "/cond/first", `If-None-Match: "abc"`)
		rfcWant(t, "conditional miss", r, b, 304, "MISS", "fwd=uri-miss", "stored")
		// With nothing stored, the client's validators go upstream (RFC
		// 9111 §4.3.1); this origin ignores them.
		if h := e.u.LastHeaders("GET", "/cond/first"); h.Get("If-None-Match") != `"abc"` {
			t.Fatalf("the client's If-None-Match did not reach the upstream: %v", h)
		}
		r, b = e.get(t, "/cond/first")
		rfcWant(t, "plain after conditional miss", r, b, 200, "HIT", "hit")
		if !strings.HasPrefix(b, "GET /cond/first #") {
			t.Fatalf("plain after conditional miss: body %q", b)
		}
		rfcCalls(t, "conditional miss", e.u, "GET", "/cond/first", 1)
	})

	t.Run("conditional miss: the origin's 304 passes through unstored", func(t *testing.T) {
		const p = "/cond/origin-304"
		e.u.Handle(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"v9"`)
			w.Header().Set("Cache-Control", "max-age=300")
			if r.Header.Get("If-None-Match") == `"v9"` {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			rfcWriteBody(w, r, 200)
		})
		r, b := e.get(t, p, `If-None-Match: "v9"`)
		rfcWant(t, "origin 304", r, b, 304, "MISS", "fwd=uri-miss", "fwd-status=304", "!stored")
		r, b = e.get(t, p)
		rfcWant(t, "plain after an origin 304", r, b, 200, "MISS", "fwd=uri-miss", "stored")
		r, b = e.get(t, p, `If-None-Match: "v9"`)
		rfcWant(t, "conditional hit", r, b, 304, "HIT", "hit")
		rfcCalls(t, "origin 304", e.u, "GET", p, 2)
	})

	t.Run("If-Modified-Since without Last-Modified compares with Date", func(t *testing.T) {
		const p = "/cond/date-only"
		date := time.Now().Add(-time.Minute).UTC().Truncate(time.Second)
		e.u.Handle(p, rfcRespond(200, "Cache-Control: max-age=300", "Date: "+date.Format(http.TimeFormat)))
		rfcPrime(t, e, p)
		r, b := e.get(t, p, "If-Modified-Since: "+date.Format(http.TimeFormat))
		rfcWant(t, "IMS = Date", r, b, 304, "HIT", "hit")
		r, b = e.get(t, p, "If-Modified-Since: "+date.Add(-time.Hour).Format(http.TimeFormat))
		rfcWant(t, "IMS before Date", r, b, 200, "HIT", "hit")
	})

	t.Run("unquoted and lower-case weak tags never match", func(t *testing.T) {
		for _, inm := range []string{`abc`, `w/"abc"`} {
			r, b := e.get(t, "/cond/doc", "If-None-Match: "+inm)
			rfcWant(t, inm, r, b, 200, "HIT", "hit")
		}
	})
}

// ---------------------------------------------------------------------------
// Request Cache-Control
// ---------------------------------------------------------------------------

// TestRFCRequestCacheControl: by default (ignore) clients cannot force
// misses; with `request_cache_control honor` no-cache, max-age, min-fresh,
// max-stale and no-store follow RFC 9111 §5.2.1; only-if-cached is obeyed
// in both modes.
func TestRFCRequestCacheControl(t *testing.T) {
	e := rfcStartSite(t, func(r *redisServer, u *upstream) string {
		return "\thandle /h/* {\n\t\t" + rfcCacheBlock(r, "rfch", `
		request_cache_control honor
		route honor /h/* 300s`) + "\n\t\treverse_proxy " + rfcHost(u) + "\n\t}\n\thandle {\n\t\t" +
			rfcCacheBlock(r, "rfci", `
		route ignore /i/* 300s`) + "\n\t\treverse_proxy " + rfcHost(u) + "\n\t}"
	})
	aged := rfcRespond(200, "Cache-Control: max-age=600", "Age: 30")
	staleOnArrival := rfcRespond(200, "Cache-Control: max-age=600", "Age: 700", `ETag: "s1"`)
	for _, p := range []string{"/h/aged", "/i/aged"} {
		e.u.Handle(p, aged)
	}
	for _, p := range []string{"/h/stale", "/i/stale"} {
		e.u.Handle(p, staleOnArrival)
	}
	e.u.Handle("/h/must-revalidate", rfcRespond(200, "Cache-Control: max-age=600, must-revalidate", "Age: 700", `ETag: "m1"`))

	t.Run("ignore: client directives cannot force a miss", func(t *testing.T) {
		const p = "/i/a"
		stored := rfcPrime(t, e, p)
		for _, h := range []string{"Cache-Control: no-cache", "Cache-Control: max-age=0", "Pragma: no-cache",
			"Cache-Control: no-store", "Cache-Control: min-fresh=100000", "Cache-Control: max-age=0, must-revalidate"} {
			r, b := e.get(t, p, h)
			rfcWant(t, h, r, b, 200, "HIT", "hit")
			if b != stored {
				t.Fatalf("%s: body %q, want the stored %q", h, b, stored)
			}
		}
		rfcCalls(t, "ignore", e.u, "GET", p, 1)
		// max-stale is not honoured either: a stale entry is still validated.
		r, b := e.get(t, "/i/stale")
		rfcWant(t, "stale on arrival", r, b, 200, "MISS", "stored")
		r, b = e.get(t, "/i/stale", "Cache-Control: max-stale=1000")
		rfcWant(t, "max-stale ignored", r, b, 200, "MISS", "fwd=stale")
		rfcCalls(t, "max-stale ignored", e.u, "GET", "/i/stale", 2)
	})

	t.Run("only-if-cached without an entry is a 504 in both modes", func(t *testing.T) {
		for _, p := range []string{"/i/none", "/h/none"} {
			r, b := e.get(t, p, "Cache-Control: only-if-cached")
			rfcWant(t, p, r, b, 504, "MISS", "detail=only-if-cached")
			rfcCalls(t, p, e.u, "GET", p, 0)
		}
		for _, p := range []string{"/i/oic", "/h/oic"} {
			stored := rfcPrime(t, e, p)
			r, b := e.get(t, p, "Cache-Control: only-if-cached")
			rfcWant(t, p+" stored", r, b, 200, "HIT", "hit")
			if b != stored {
				t.Fatalf("%s: only-if-cached got %q, want %q", p, b, stored)
			}
		}
	})

	t.Run("honor: no-cache and max-age=0 go to the origin", func(t *testing.T) {
		const p = "/h/a"
		rfcPrime(t, e, p)
		r, refreshed := e.get(t, p, "Cache-Control: no-cache")
		rfcWant(t, "no-cache", r, refreshed, 200, "MISS", "fwd=request", "fwd-status=200", "stored")
		rfcCalls(t, "no-cache", e.u, "GET", p, 2)
		r, b := e.get(t, p)
		rfcWant(t, "plain after no-cache", r, b, 200, "HIT", "hit")
		if b != refreshed {
			t.Fatalf("plain after no-cache: %q, want the refreshed %q", b, refreshed)
		}
		r, b = e.get(t, p, "Cache-Control: max-age=0")
		rfcWant(t, "max-age=0", r, b, 200, "MISS", "fwd=request")
		rfcCalls(t, "max-age=0", e.u, "GET", p, 3)
	})

	t.Run("honor: max-age and min-fresh", func(t *testing.T) {
		const p = "/h/aged" // stored with Age 30 of max-age 600
		rfcPrime(t, e, p)
		steps := []struct {
			header string
			hit    bool
		}{
			{"Cache-Control: max-age=100", true},
			{"Cache-Control: max-age=10", false},
			{"Cache-Control: min-fresh=100", true},
			{"Cache-Control: min-fresh=1000", false},
		}
		calls := 1
		for _, s := range steps {
			r, b := e.get(t, p, s.header)
			if s.hit {
				rfcWant(t, s.header, r, b, 200, "HIT", "hit")
			} else {
				calls++
				// The stored response is fresh; the request's directives
				// did not allow its use (RFC 9211 §2.2 fwd=request).
				rfcWant(t, s.header, r, b, 200, "MISS", "fwd=request", "stored")
			}
			rfcCalls(t, s.header, e.u, "GET", p, calls)
		}
	})

	t.Run("honor: max-stale", func(t *testing.T) {
		const p = "/h/stale" // stored 100s stale, with a validator
		r, b := e.get(t, p)
		rfcWant(t, "stale on arrival", r, b, 200, "MISS", "stored")
		stored := b
		r, b = e.get(t, p, "Cache-Control: max-stale=300")
		rfcWant(t, "max-stale=300", r, b, 200, "STALE", "hit", "detail=max-stale")
		if b != stored {
			t.Fatalf("max-stale=300: %q, want the stored %q", b, stored)
		}
		if ttl := rfcTTL(t, "max-stale=300", r); ttl > -100 || ttl < -110 {
			t.Fatalf("max-stale=300: ttl=%d, want about -100", ttl)
		}
		r, b = e.get(t, p, "Cache-Control: max-stale")
		rfcWant(t, "max-stale", r, b, 200, "STALE", "hit", "detail=max-stale")
		rfcCalls(t, "max-stale served from cache", e.u, "GET", p, 1)
		r, b = e.get(t, p, "Cache-Control: max-stale=50")
		rfcWant(t, "max-stale=50", r, b, 200, "MISS", "fwd=stale", "stored")
		if h := e.u.LastHeaders("GET", p).Get("If-None-Match"); h != `"s1"` {
			t.Fatalf("max-stale=50: revalidation sent If-None-Match %q", h)
		}
		rfcCalls(t, "max-stale=50", e.u, "GET", p, 2)
		// must-revalidate forbids serving stale whatever the client says.
		const mr = "/h/must-revalidate"
		r, b = e.get(t, mr)
		rfcWant(t, "must-revalidate", r, b, 200, "MISS", "stored")
		r, b = e.get(t, mr, "Cache-Control: max-stale=1000")
		rfcWant(t, "must-revalidate + max-stale", r, b, 200, "MISS", "fwd=stale")
		rfcCalls(t, "must-revalidate", e.u, "GET", mr, 2)
		// only-if-cached with only a stale entry: 504.
		r, b = e.get(t, p, "Cache-Control: only-if-cached")
		rfcWant(t, "only-if-cached, stale", r, b, 504, "MISS", "detail=only-if-cached")
		rfcCalls(t, "only-if-cached, stale", e.u, "GET", p, 2)
	})

	t.Run("honor: no-store request is not stored", func(t *testing.T) {
		const p = "/h/no-store"
		r, b := e.get(t, p, "Cache-Control: no-store")
		rfcWant(t, "no-store", r, b, 200, "MISS", "detail=request-no-store", "!stored")
		r, b = e.get(t, p)
		rfcWant(t, "after no-store", r, b, 200, "MISS", "fwd=uri-miss", "stored")
		rfcCalls(t, "no-store", e.u, "GET", p, 2)
	})
}

// ---------------------------------------------------------------------------
// Invalidation (RFC 9111 §4.4)
// ---------------------------------------------------------------------------

// TestRFCInvalidation: every unsafe method, unknown ones included,
// invalidates the target URI and same-origin Location / Content-Location;
// cross-origin references are left alone; `purge uri` limits a mutation to
// those, while the default also purges the whole route; safe methods and
// failed mutations invalidate nothing.
func TestRFCInvalidation(t *testing.T) {
	e := rfcStart(t, "rfci", `
		route byuri /pu/* 300s {
			purge uri
		}
		route byroute /pr/* 300s`)

	for _, m := range []string{"POST", "PUT", "DELETE", "PATCH", "M-SEARCH", "PURGEX"} {
		m := m
		t.Run(m+" invalidates the target URI", func(t *testing.T) {
			target, sibling := "/pu/t-"+m, "/pu/s-"+m
			old := rfcPrime(t, e, target)
			rfcPrime(t, e, sibling)
			r, b := e.do(t, m, target, strings.NewReader("change"))
			rfcWant(t, m, r, b, 200, "SKIP", "fwd=method", "fwd-status=200")
			rfcCalls(t, m+" reached the upstream", e.u, m, target, 1)
			r, b = e.get(t, target)
			rfcWant(t, "target after "+m, r, b, 200, "MISS", "fwd=miss", "stored")
			if b == old {
				t.Fatalf("target after %s: got the old entry", m)
			}
			r, b = e.get(t, sibling)
			rfcWant(t, "sibling after "+m+" (purge uri)", r, b, 200, "HIT", "hit")
		})
	}

	t.Run("safe methods and failed mutations invalidate nothing", func(t *testing.T) {
		const p = "/pu/safe"
		e.u.Handle(p, func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				rfcWriteBody(w, r, http.StatusConflict)
				return
			}
			rfcWriteBody(w, r, 200)
		})
		stored := rfcPrime(t, e, p)
		r, b := e.do(t, http.MethodOptions, p, nil)
		rfcWant(t, "OPTIONS", r, b, 200, "SKIP", "fwd=method")
		r, b = e.do(t, http.MethodPost, p, strings.NewReader("x"))
		rfcWant(t, "failed POST", r, b, 409, "SKIP", "fwd=method", "fwd-status=409")
		r, b = e.get(t, p)
		rfcWant(t, "after OPTIONS and a failed POST", r, b, 200, "HIT", "hit")
		if b != stored {
			t.Fatalf("entry changed: %q, want %q", b, stored)
		}
	})

	t.Run("Location and Content-Location", func(t *testing.T) {
		origin := strings.TrimPrefix(e.c.BaseURL, "http://")
		refs := map[string][]string{ // POST path -> response headers
			"/pu/create":       {"Location: /pu/loc1", "Content-Location: /pu/cloc?b=2&a=1"},
			"/pu/create-rel":   {"Location: loc5"},
			"/pu/create-abs":   {"Location: " + e.c.BaseURL + "/pu/loc3"},
			"/pu/create-cross": {"Location: http://evil.example/pu/loc2", "Content-Location: http://evil.example/pu/cloc2"},
			"/pu/create-https": {"Location: https://" + origin + "/pu/loc4"},
		}
		for p, hdrs := range refs {
			e.u.Handle(p, rfcRespond(http.StatusCreated, hdrs...))
		}
		targets := map[string]bool{ // GET path -> invalidated
			"/pu/loc1": true, "/pu/cloc?a=1&b=2": true, "/pu/loc5": true, "/pu/loc3": true,
			"/pu/loc2": false, "/pu/cloc2": false, "/pu/loc4": false,
		}
		bodies := map[string]string{}
		for p := range targets {
			bodies[p] = rfcPrime(t, e, p)
		}
		for p := range refs {
			r, b := e.do(t, http.MethodPost, p, strings.NewReader("new"))
			rfcWant(t, "POST "+p, r, b, 201, "SKIP", "fwd=method")
		}
		for p, invalidated := range targets {
			r, b := e.get(t, p)
			if invalidated {
				rfcWant(t, p+" (same-origin reference)", r, b, 200, "MISS", "fwd=miss", "stored")
			} else {
				rfcWant(t, p+" (cross-origin reference)", r, b, 200, "HIT", "hit")
				if b != bodies[p] {
					t.Fatalf("%s: %q, want %q", p, b, bodies[p])
				}
			}
		}
	})

	t.Run("default purge invalidates the whole route", func(t *testing.T) {
		rfcPrime(t, e, "/pr/a")
		rfcPrime(t, e, "/pr/b")
		r, b := e.do(t, http.MethodPut, "/pr/a", strings.NewReader("x"))
		rfcWant(t, "PUT", r, b, 200, "SKIP", "fwd=method")
		for _, p := range []string{"/pr/a", "/pr/b"} {
			r, b := e.get(t, p)
			rfcWant(t, p+" after PUT /pr/a", r, b, 200, "MISS", "fwd=miss", "stored")
		}
	})
}

// ---------------------------------------------------------------------------
// Client Cache-Control
// ---------------------------------------------------------------------------

// TestRFCClientCacheControl: a route's cache_control is what clients get; a
// keyed route sends private by default, also on answers it did not store;
// otherwise the origin's value is passed on.
func TestRFCClientCacheControl(t *testing.T) {
	e := rfcStart(t, "rfcl", `
		route pub /pub/* 300s {
			cache_control "public, max-age=60"
		}
		route keyed /keyed/* 300s {
			key {http.request.header.X-User-Id}
		}
		route origin /origin/* 300s`)
	e.u.Handle("/pub/x", rfcRespond(200, "Cache-Control: s-maxage=300"))
	e.u.Handle("/keyed/x", rfcRespond(200, "Cache-Control: public, max-age=300"))
	e.u.Handle("/keyed/login", rfcRespond(200, "Cache-Control: public, max-age=300", "Set-Cookie: sid=u1-secret"))
	e.u.Handle("/origin/x", rfcRespond(200, "Cache-Control: max-age=300"))

	cases := []struct {
		path    string
		headers []string
		want    string
		stored  bool
	}{
		{"/pub/x", nil, "public, max-age=60", true},
		{"/keyed/x", []string{"X-User-Id: u1"}, "private", true},
		{"/keyed/login", []string{"X-User-Id: u1"}, "private", false},
		{"/origin/x", nil, "max-age=300", true},
	}
	e.u.Handle("/keyed/secret", rfcRespond(200, "Cache-Control: no-store"))
	for _, tc := range cases {
		tc := tc
		t.Run(tc.path, func(t *testing.T) {
			for i, want := range []string{"MISS", "HIT"} {
				if !tc.stored {
					want = "MISS"
				}
				r, b := e.get(t, tc.path, tc.headers...)
				rfcWant(t, fmt.Sprintf("request %d", i+1), r, b, 200, want)
				if cc := strings.Join(r.Header.Values("Cache-Control"), ", "); cc != tc.want {
					t.Fatalf("request %d (%s): Cache-Control %q, want %q", i+1, want, cc, tc.want)
				}
			}
		})
	}

	t.Run("keyed route answers that skip the cache", func(t *testing.T) {
		// A user's answer that bypasses the cache is still private...
		r, b := e.do(t, http.MethodGet, "/keyed/x", strings.NewReader("body"), "X-User-Id: u1")
		rfcWant(t, "GET with body", r, b, 200, "SKIP", "detail=request-body")
		if cc := r.Header.Get("Cache-Control"); cc != "private" {
			t.Fatalf("user's SKIP answer: Cache-Control %q, want private", cc)
		}
		// ...an origin's no-store is not weakened...
		r, b = e.get(t, "/keyed/secret", "X-User-Id: u1")
		rfcWant(t, "no-store", r, b, 200, "MISS", "detail=no-store")
		if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
			t.Fatalf("origin no-store on a keyed route: Cache-Control %q, want no-store", cc)
		}
		// ...and an anonymous answer (no identity in the key) keeps the origin's.
		r, b = e.get(t, "/keyed/x")
		rfcWant(t, "anonymous", r, b, 200, "SKIP", "detail=empty-key")
		if cc := r.Header.Get("Cache-Control"); cc != "public, max-age=300" {
			t.Fatalf("anonymous SKIP answer: Cache-Control %q, want the origin's", cc)
		}
	})
}

// ---------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------

// TestRFCHostileInput: the key is built from the normalised request; odd
// paths are neither served from nor stored in the cache; unkeyed headers
// never reach the upstream of a cacheable request; glob characters in key
// parts cannot widen a pattern purge; key length is bounded; cacheability
// does not come from the extension (cache deception); error answers to odd
// requests are not stored (CPDoS).
func TestRFCHostileInput(t *testing.T) {
	e := rfcStart(t, "rfcx", `
		route hk /hk/* 300s
		route user /user/* 300s {
			key {http.request.header.X-User-Id}
		}
		route api /api/* 300s {
			content_type application/json
		}
		route plain /plain/*
		route cpdos /cpdos/* 300s`)

	t.Run("sorted query", func(t *testing.T) {
		stored := rfcPrime(t, e, "/hk/q?a=1&b=2")
		r, b := e.get(t, "/hk/q?b=2&a=1")
		rfcWant(t, "reordered query", r, b, 200, "HIT", "hit")
		if b != stored {
			t.Fatalf("reordered query got %q, want %q", b, stored)
		}
		for _, q := range []string{"/hk/q?a=1&b=3", "/hk/q?a=1", "/hk/q"} {
			r, b := e.get(t, q)
			rfcWant(t, q, r, b, 200, "MISS", "fwd=uri-miss")
		}
		rfcPrime(t, e, "/hk/r?a=1&a=2")
		r, b = e.get(t, "/hk/r?a=2&a=1")
		rfcWant(t, "repeated name, other order", r, b, 200, "MISS", "fwd=uri-miss")
	})

	t.Run("non-canonical paths are neither served nor stored", func(t *testing.T) {
		stored := rfcPrime(t, e, "/api/x")
		before := len(e.r.Keys("rfcx:api:*"))
		for _, p := range []string{"/api//x", "/api/./x", "/api/y/../x", "/api/%2e/x", "/api/%78"} {
			for i := 0; i < 2; i++ {
				r, b := e.get(t, p)
				rfcWant(t, p, r, b, 200, "SKIP", "fwd=bypass", "detail=non-canonical-path")
				if b == stored {
					t.Fatalf("%s was served /api/x's entry", p)
				}
			}
		}
		if after := len(e.r.Keys("rfcx:api:*")); after != before {
			t.Fatalf("odd paths stored entries: %d keys, want %d", after, before)
		}
		r, b := e.get(t, "/api/x")
		rfcWant(t, "/api/x after odd paths", r, b, 200, "HIT", "hit")
		if b != stored {
			t.Fatalf("/api/x entry changed to %q", b)
		}
	})

	t.Run("unkeyed override headers never reach the upstream", func(t *testing.T) {
		const p = "/hk/reflect"
		e.u.Handle(p, func(w http.ResponseWriter, r *http.Request) {
			// A naive app that trusts these headers.
			w.Header().Set("Cache-Control", "max-age=300")
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintf(w, "host=%s url=%s rewrite=%s method=%s x-host=%s scheme=%s #%d",
				r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Original-URL"), r.Header.Get("X-Rewrite-URL"),
				r.Header.Get("X-HTTP-Method-Override"), r.Header.Get("X-Host"), r.Header.Get("X-Forwarded-Scheme"), rfcSeq.Add(1))
		})
		evil := []string{"X-Forwarded-Host: evil.com", "X-Original-URL: /admin", "X-Rewrite-URL: /admin",
			"X-HTTP-Method-Override: DELETE", "X-HTTP-Method: DELETE", "X-Method-Override: DELETE",
			"X-Host: evil.com", "X-Forwarded-Server: evil.com", "X-Forwarded-Scheme: nothttps"}
		r, poisoned := e.get(t, p, evil...)
		rfcWant(t, "hostile MISS", r, poisoned, 200, "MISS", "stored")
		got := e.u.LastHeaders("GET", p)
		for _, h := range evil {
			name, value, _ := strings.Cut(h, ":")
			value = strings.TrimSpace(value)
			for _, v := range got.Values(name) {
				if strings.Contains(v, value) {
					t.Fatalf("upstream received %s: %q", name, got.Values(name))
				}
			}
		}
		for _, bad := range []string{"evil", "/admin", "DELETE", "nothttps"} {
			if strings.Contains(poisoned, bad) {
				t.Fatalf("stored body reflects a hostile header: %q", poisoned)
			}
		}
		r, b := e.get(t, p)
		rfcWant(t, "plain request", r, b, 200, "HIT", "hit")
		if b != poisoned {
			t.Fatalf("plain request got %q, want %q", b, poisoned)
		}
	})

	t.Run("glob characters in key parts cannot widen a pattern purge", func(t *testing.T) {
		const p = "/user/profile"
		users := []string{"*", "user-1", "user-10", "a?b", "[x]", "user-1:*"}
		bodies := map[string]string{}
		for _, u := range users {
			bodies[u] = rfcPrime(t, e, p, "X-User-Id: "+u)
		}
		keys := e.r.Keys("rfcx:user:*")
		if len(keys) != len(users) {
			t.Fatalf("user entries %q, want %d", keys, len(users))
		}
		for _, k := range keys {
			readable := strings.TrimPrefix(k, "rfcx:user:")
			if strings.ContainsAny(readable, "*?[]\\") || strings.Count(readable, ":") != 1 {
				t.Fatalf("key %q: user-controlled part not escaped", k)
			}
		}
		check := func(label string, gone ...string) {
			t.Helper()
			isGone := map[string]bool{}
			for _, g := range gone {
				isGone[g] = true
			}
			for _, u := range users {
				r, b := e.get(t, p, "X-User-Id: "+u)
				if isGone[u] {
					rfcWant(t, label+" user "+u, r, b, 200, "MISS")
					bodies[u] = b
					continue
				}
				rfcWant(t, label+" user "+u, r, b, 200, "HIT", "hit")
				if b != bodies[u] {
					t.Fatalf("%s: user %q got %q, want %q", label, u, b, bodies[u])
				}
			}
		}
		if n := rfcPurge(t, e.c, `{"pattern":"*:user-1:*"}`); n != 1 {
			t.Fatalf("pattern *:user-1:* removed %d keys, want 1", n)
		}
		check("after *:user-1:*", "user-1")
		if n := rfcPurge(t, e.c, `{"pattern":"*:`+escapeKeyPart("*")+`:*"}`); n != 1 {
			t.Fatalf("escaped pattern for user * removed %d keys, want 1", n)
		}
		check("after the escaped pattern of user *", "*")
	})

	t.Run("huge key values are bounded", func(t *testing.T) {
		const p = "/user/huge"
		huge := strings.Repeat("u", 10<<10)
		other := huge[:len(huge)-1] + "v"
		bh := rfcPrime(t, e, p, "X-User-Id: "+huge)
		bo := rfcPrime(t, e, p, "X-User-Id: "+other)
		if bh == bo {
			t.Fatalf("two users differing in the last byte share an entry")
		}
		for _, k := range e.r.Keys("rfcx:user:*") {
			if len(k) > 200 {
				t.Fatalf("key of %d bytes: %q", len(k), rfcShort(k))
			}
		}
	})

	t.Run("cache deception: content_type guard, no extension rules", func(t *testing.T) {
		e.u.Handle("/api/me.css", rfcRespond(200, "Content-Type: text/html; charset=utf-8", "Cache-Control: max-age=300"))
		for i := 0; i < 2; i++ {
			r, b := e.get(t, "/api/me.css")
			rfcWant(t, "HTML for /api/me.css", r, b, 200, "MISS", "detail=content-type", "!stored")
		}
		rfcCalls(t, "/api/me.css", e.u, "GET", "/api/me.css", 2)
		rfcPrime(t, e, "/api/me.json") // the default origin answers JSON

		// Without content_type, only the headers decide.
		notFresh := []string{"/plain/me.css", "/plain/logo.png", "/plain/app.js", "/plain/me"}
		fresh := []string{"/plain/style.css", "/plain/page.html", "/plain/data"}
		for _, p := range notFresh {
			e.u.Handle(p, rfcRespond(200, "Content-Type: text/css"))
			for i := 0; i < 2; i++ {
				r, b := e.get(t, p)
				rfcWant(t, p, r, b, 200, "MISS", "detail=not-fresh", "!stored")
			}
		}
		for _, p := range fresh {
			e.u.Handle(p, rfcRespond(200, "Content-Type: text/html", "Cache-Control: max-age=300"))
			rfcPrime(t, e, p)
		}
	})

	t.Run("CPDoS: error answers to odd requests are not stored", func(t *testing.T) {
		odd := []struct {
			path   string
			header string
			status int
		}{
			{"/cpdos/431", "X-Oversized: " + strings.Repeat("x", 6<<10), 431},
			{"/cpdos/400", "X-Metachar: \\n", 400},
			{"/cpdos/413", "X-Too-Large: 1", 413},
			{"/cpdos/500", "X-Crash: 1", 500},
		}
		for _, tc := range odd {
			e.u.Handle(tc.path, func(w http.ResponseWriter, r *http.Request) {
				status := 200
				switch {
				case len(r.Header.Get("X-Oversized")) > 4096:
					status = 431
				case r.Header.Get("X-Metachar") != "":
					status = 400
				case r.Header.Get("X-Too-Large") != "":
					status = 413
				case r.Header.Get("X-Crash") != "":
					status = 500
				}
				w.Header().Set("Cache-Control", "max-age=300")
				rfcWriteBody(w, r, status)
			})
		}
		for _, tc := range odd {
			r, b := e.get(t, tc.path, tc.header)
			rfcWant(t, tc.path+" odd request", r, b, tc.status, "MISS", "detail=status", "!stored")
			r, b = e.get(t, tc.path)
			rfcWant(t, tc.path+" normal request", r, b, 200, "MISS", "fwd=uri-miss", "stored")
			r, b = e.get(t, tc.path)
			rfcWant(t, tc.path+" normal request again", r, b, 200, "HIT", "hit")
		}
	})
}

// ---------------------------------------------------------------------------
// Concurrency: no cross-user leak
// ---------------------------------------------------------------------------

// TestRFCConcurrentUsers: two users and an anonymous client hammer a keyed
// route at once, while purges of every kind and mutations run; each only
// ever receives its own body, and the anonymous client is never served from
// the cache.
func TestRFCConcurrentUsers(t *testing.T) {
	e := rfcStart(t, "rfcu", `
		route k /k/* 300s {
			key {http.request.header.X-User-Id}
			tags user:{http.request.header.X-User-Id}
		}`)
	paths := []string{"/k/a", "/k/b?x=1", "/k/c"}
	// Warm both users so hits happen from the start.
	for _, u := range []string{"u1", "u2"} {
		for _, p := range paths {
			e.get(t, p, "X-User-Id: "+u)
		}
	}

	type tally struct {
		mu         sync.Mutex
		n, hits    int
		violations []string
	}
	clients := map[string]*tally{"u1": {}, "u2": {}, "": {}}
	deadline := time.Now().Add(2500 * time.Millisecond)
	var wg sync.WaitGroup
	for who, tl := range clients {
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(who string, tl *tally, g int) {
				defer wg.Done()
				for i := 0; time.Now().Before(deadline); i++ {
					p := paths[(g+i)%len(paths)]
					var hdrs []string
					if who != "" {
						hdrs = append(hdrs, "X-User-Id: "+who)
					}
					resp, body, err := e.c.GetE(p, hdrs...)
					problem := ""
					hit := false
					if err != nil {
						problem = err.Error()
					} else {
						var ub upstreamBody
						xc := resp.Header.Get("X-Cache")
						hit = xc == "HIT"
						path, query, _ := strings.Cut(p, "?")
						switch {
						case resp.StatusCode != 200:
							problem = fmt.Sprintf("status %d", resp.StatusCode)
						case json.Unmarshal([]byte(body), &ub) != nil:
							problem = "body " + rfcShort(body)
						case ub.User != who:
							problem = fmt.Sprintf("got user %q's body (X-Cache %s)", ub.User, xc)
						case ub.Path != path || ub.Query != query:
							problem = fmt.Sprintf("got the body of %s?%s", ub.Path, ub.Query)
						case who == "" && xc != "SKIP":
							problem = "anonymous request X-Cache " + xc
						case who != "" && xc != "HIT" && xc != "MISS" && xc != "SKIP":
							problem = "X-Cache " + xc
						case who != "" && xc != "SKIP" && resp.Header.Get("Cache-Control") != "private":
							problem = "Cache-Control " + resp.Header.Get("Cache-Control")
						default:
							problem = rfcCacheStatusProblem(resp)
						}
					}
					tl.mu.Lock()
					tl.n++
					if hit {
						tl.hits++
					}
					if problem != "" && len(tl.violations) < 10 {
						tl.violations = append(tl.violations, fmt.Sprintf("user %q GET %s: %s", who, p, problem))
					}
					tl.mu.Unlock()
				}
			}(who, tl, g)
		}
	}
	purges := []string{`{"route":"k"}`, `{"tag":"user:u1"}`, `{"pattern":"*:u2:*"}`, `{"all":true}`}
	var purgeErrs []string
	for i := 0; time.Now().Before(deadline); i++ {
		time.Sleep(200 * time.Millisecond)
		if i%5 == 4 {
			req, _ := e.c.NewRequest(http.MethodPost, "/k/a", strings.NewReader("x"), "X-User-Id: u1")
			if resp, _, err := e.c.DoE(req); err != nil || resp.StatusCode != 200 {
				purgeErrs = append(purgeErrs, fmt.Sprintf("POST /k/a: %v", err))
			}
			continue
		}
		if code, out, err := e.c.admin(http.MethodPost, "/redis_cache/purge", purges[i%len(purges)]); err != nil || code != 200 {
			purgeErrs = append(purgeErrs, fmt.Sprintf("purge %s: %d %s %v", purges[i%len(purges)], code, out, err))
		}
	}
	wg.Wait()
	if len(purgeErrs) > 0 {
		t.Errorf("purges failed: %q", purgeErrs)
	}
	for who, tl := range clients {
		t.Logf("client %q: %d requests, %d hits", who, tl.n, tl.hits)
		if len(tl.violations) > 0 {
			t.Errorf("client %q: %q", who, tl.violations)
		}
		if tl.n == 0 {
			t.Errorf("client %q made no request", who)
		}
		if who != "" && tl.hits == 0 {
			t.Errorf("client %q never got a HIT: the test did not exercise the cache", who)
		}
		if who == "" && tl.hits != 0 {
			t.Errorf("anonymous client got %d HITs", tl.hits)
		}
	}
}

// ---------------------------------------------------------------------------
// Issue 13: targeted fields, Age and Expires parsing
// ---------------------------------------------------------------------------

// rfcStorageCase is one origin answer and whether the cache stores it.
type rfcStorageCase struct {
	path    string
	status  int
	headers []string
	stored  bool
	maxTTL  int // stored: the HIT's ttl may not exceed this (0: no check)
	minTTL  int // stored: nor fall below this
}

// rfcCheckStorage asks for each case's path twice: a stored answer is a
// MISS then a HIT with the same body and one upstream call; any other is
// two MISSes that are not stored.
func rfcCheckStorage(t *testing.T, e *rfcEnv, cases []rfcStorageCase) {
	t.Helper()
	for _, tc := range cases {
		if tc.status == 0 {
			tc.status = 200
		}
		e.u.Handle(tc.path, rfcRespond(tc.status, tc.headers...))
	}
	for _, tc := range cases {
		tc := tc
		if tc.status == 0 {
			tc.status = 200
		}
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			r1, b1 := e.get(t, tc.path)
			if !tc.stored {
				rfcWant(t, "first", r1, b1, tc.status, "MISS", "!stored")
				r2, b2 := e.get(t, tc.path)
				rfcWant(t, "second", r2, b2, tc.status, "MISS", "!stored")
				rfcCalls(t, "not stored", e.u, "GET", tc.path, 2)
				return
			}
			rfcWant(t, "first", r1, b1, tc.status, "MISS", "stored")
			r2, b2 := e.get(t, tc.path)
			rfcWant(t, "second", r2, b2, tc.status, "HIT", "hit")
			if b2 != b1 {
				t.Fatalf("HIT body %q, want the stored %q", b2, b1)
			}
			if ttl := rfcTTL(t, "second", r2); (tc.maxTTL > 0 && ttl > tc.maxTTL) || ttl < tc.minTTL {
				t.Fatalf("HIT ttl=%d, want between %d and %d (headers %v)", ttl, tc.minTTL, tc.maxTTL, tc.headers)
			}
			rfcCalls(t, "MISS then HIT", e.u, "GET", tc.path, 1)
		})
	}
}

// TestRFCTargetedCacheControl covers RFC 9213: CDN-Cache-Control, when
// valid, replaces Cache-Control and Expires for this cache in both
// directions; an invalid field (not a Structured Field Dictionary) is
// ignored as a whole; the field is passed on downstream.
func TestRFCTargetedCacheControl(t *testing.T) {
	e := rfcStart(t, "rfctc", `
		route origin /o/*`)
	rfcCheckStorage(t, e, []rfcStorageCase{
		{path: "/o/cdn-private", headers: []string{"CDN-Cache-Control: private", "Cache-Control: max-age=10000", "Expires: @now+10000", "Date: @now"}},
		{path: "/o/cdn-no-cache", headers: []string{"CDN-Cache-Control: no-cache", "Cache-Control: max-age=10000", "Expires: @now+10000", "Date: @now"}},
		{path: "/o/cdn-no-store", headers: []string{"CDN-Cache-Control: no-store", "Cache-Control: max-age=10000", "Expires: @now+10000", "Date: @now"}},
		{path: "/o/cdn-max-age-0", headers: []string{"CDN-Cache-Control: max-age=0", "Expires: @now+10000", "Date: @now"}},
		{path: "/o/cdn-short-beats-cc", headers: []string{"CDN-Cache-Control: max-age=20", "Cache-Control: max-age=3600"}, stored: true, maxTTL: 20},
		{path: "/o/cdn-fresh-cc-no-store", headers: []string{"CDN-Cache-Control: max-age=10000", "Cache-Control: no-store"}, stored: true, maxTTL: 10000, minTTL: 9990},
		{path: "/o/cdn-fresh-past-expires", headers: []string{"CDN-Cache-Control: max-age=3600", "Expires: @now-10000", "Date: @now"}, stored: true, minTTL: 3590},
		{path: "/o/cdn-fresh-invalid-expires", headers: []string{"CDN-Cache-Control: max-age=3600", "Expires: 0", "Date: @now"}, stored: true, minTTL: 3590},
		{path: "/o/cdn-extension", headers: []string{"CDN-Cache-Control: foobar, max-age=3600"}, stored: true, minTTL: 3590},
		// Not a Structured Field Dictionary: the field is ignored and
		// Cache-Control decides.
		{path: "/o/cdn-invalid-sf", headers: []string{"CDN-Cache-Control: max-age=10000, &&&&&", "Cache-Control: no-store"}},
		{path: "/o/cdn-wrong-type", headers: []string{`CDN-Cache-Control: max-age="10000"`, "Cache-Control: no-store"}},
		{path: "/o/cdn-space-before-equals", headers: []string{"CDN-Cache-Control: max-age =10000", "Cache-Control: max-age=30"}, stored: true, maxTTL: 30},
		{path: "/o/cdn-space-after-equals", headers: []string{"CDN-Cache-Control: max-age= 10000", "Cache-Control: max-age=30"}, stored: true, maxTTL: 30},
	})
	t.Run("the field is passed on downstream", func(t *testing.T) {
		const p = "/o/cdn-forwarded"
		e.u.Handle(p, rfcRespond(200, "CDN-Cache-Control: max-age=600"))
		for _, want := range []string{"MISS", "HIT"} {
			r, b := e.get(t, p)
			rfcWant(t, want, r, b, 200, want)
			if got := r.Header.Get("CDN-Cache-Control"); got != "max-age=600" {
				t.Fatalf("%s: CDN-Cache-Control %q, want the origin's max-age=600", want, got)
			}
		}
	})
}

// TestRFCAgeAndExpiresParsing covers RFC 9111 §5.1 (a list-valued Age: the
// first member counts; an invalid one is ignored) and §5.3 (an invalid
// Expires, or several Expires lines, means already expired; dates follow
// RFC 9110 §5.6.7 strictly, except that a lower-case "gmt" is accepted).
func TestRFCAgeAndExpiresParsing(t *testing.T) {
	e := rfcStart(t, "rfcae", `
		route origin /o/*`)
	rfcCheckStorage(t, e, []rfcStorageCase{
		{path: "/o/age-list-old-first", headers: []string{"Cache-Control: max-age=3600", "Date: @now", "Age: 7200, 0"}},
		{path: "/o/age-list-old-first-nospace", headers: []string{"Cache-Control: max-age=3600", "Date: @now", "Age: 7200,0"}},
		{path: "/o/age-two-lines-old-first", headers: []string{"Cache-Control: max-age=3600", "Date: @now", "Age: 7200", "Age: 0"}},
		{path: "/o/age-list-young-first", headers: []string{"Cache-Control: max-age=3600", "Date: @now", "Age: 0, 7200"}, stored: true, minTTL: 3590},
		{path: "/o/age-invalid-first", headers: []string{"Cache-Control: max-age=3600", "Date: @now", "Age: old, 0"}},
		{path: "/o/age-suffix", headers: []string{"Cache-Control: max-age=3600", "Date: @now", "Age: 7200a"}},
		{path: "/o/expires-one-digit-hour", headers: []string{"Expires: Thu, 18 Aug 2050 2:01:18 GMT", "Date: @now"}},
		{path: "/o/expires-double-spaces", headers: []string{"Expires: Thu, 18  Aug  2050 02:01:18 GMT", "Date: @now"}},
		{path: "/o/expires-two-lines", headers: []string{"Expires: @now+3600", "Expires: @now+7200", "Date: @now"}},
		{path: "/o/expires-utc", headers: []string{"Expires: Thu, 18 Aug 2050 02:01:18 UTC", "Date: @now"}},
		{path: "/o/expires-lower-gmt", headers: []string{"Expires: Thu, 18 Aug 2050 02:01:18 gmt", "Date: @now"}, stored: true, minTTL: 3600},
		{path: "/o/expires-rfc850", headers: []string{"Expires: Thursday, 18-Aug-50 02:01:18 GMT", "Date: @now"}, stored: true, minTTL: 3600},
		{path: "/o/expires-asctime", headers: []string{"Expires: Thu Aug 18 02:01:18 2050", "Date: @now"}, stored: true, minTTL: 3600},
	})
}

// TestRFCRangeFromCache covers RFC 9110 §14 and RFC 9111 §3.4: a stored
// complete 200 answers byte ranges with 206 (single, suffix, open-ended),
// 416 when nothing is satisfiable, the whole 200 for several ranges or a
// failed If-Range; a Range miss fetches the whole response without Range,
// stores it and answers the range.
func TestRFCRangeFromCache(t *testing.T) {
	e := rfcStart(t, "rfcrange", `
		route files /r/*`)
	const body = "abcdefghijklmnopqrstuvwxyz"
	lm := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	e.u.Handle("/r/doc", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Last-Modified", lm)
		w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = io.WriteString(w, body)
	})
	want206 := func(t *testing.T, label string, r *http.Response, b, part, contentRange string) {
		t.Helper()
		if r.StatusCode != http.StatusPartialContent || b != part || r.Header.Get("Content-Range") != contentRange {
			t.Fatalf("%s: %d %q Content-Range %q, want 206 %q %q", label, r.StatusCode, b, r.Header.Get("Content-Range"), part, contentRange)
		}
	}

	r, b := e.get(t, "/r/doc", "Range: bytes=0-4")
	rfcWant(t, "range miss", r, b, http.StatusPartialContent, "MISS", "stored", "fwd-status=200")
	want206(t, "range miss", r, b, "abcde", "bytes 0-4/26")
	if h := e.u.LastHeaders("GET", "/r/doc"); h.Get("Range") != "" || h.Get("If-Range") != "" {
		t.Fatalf("the miss sent Range to the upstream: %v", h)
	}

	cases := []struct {
		name    string
		headers []string
		status  int
		body    string
		cr      string
	}{
		{"suffix", []string{"Range: bytes=-3"}, 206, "xyz", "bytes 23-25/26"},
		{"open-ended", []string{"Range: bytes=20-"}, 206, "uvwxyz", "bytes 20-25/26"},
		{"clipped", []string{"Range: bytes=24-99"}, 206, "yz", "bytes 24-25/26"},
		{"unsatisfiable", []string{"Range: bytes=30-"}, 416, "", "bytes */26"},
		{"several ranges: whole", []string{"Range: bytes=0-1,5-6"}, 200, body, ""},
		{"invalid range: whole", []string{"Range: bytes=9-2"}, 200, body, ""},
		{"If-Range strong ETag", []string{"Range: bytes=0-0", `If-Range: "v1"`}, 206, "a", "bytes 0-0/26"},
		{"If-Range other ETag: whole", []string{"Range: bytes=0-0", `If-Range: "v0"`}, 200, body, ""},
		{"If-Range weak ETag: whole", []string{"Range: bytes=0-0", `If-Range: W/"v1"`}, 200, body, ""},
		{"If-Range Last-Modified", []string{"Range: bytes=1-1", "If-Range: " + lm}, 206, "b", "bytes 1-1/26"},
		{"If-None-Match first", []string{"Range: bytes=0-0", `If-None-Match: "v1"`}, 304, "", ""},
	}
	for _, tc := range cases {
		tc := tc
		t.Run(tc.name, func(t *testing.T) {
			r, b := e.get(t, "/r/doc", tc.headers...)
			rfcWant(t, tc.name, r, b, tc.status, "HIT", "hit")
			if b != tc.body || r.Header.Get("Content-Range") != tc.cr {
				t.Fatalf("%s: body %q Content-Range %q, want %q %q", tc.name, b, r.Header.Get("Content-Range"), tc.body, tc.cr)
			}
		})
	}
	t.Run("HEAD with Range gets the whole headers", func(t *testing.T) {
		r, b := e.do(t, http.MethodHead, "/r/doc", nil, "Range: bytes=0-4")
		rfcWant(t, "HEAD", r, b, 200, "HIT", "hit")
	})
	rfcCalls(t, "every range from one fill", e.u, "GET", "/r/doc", 1)

	t.Run("another unit skips the cache", func(t *testing.T) {
		r, b := e.get(t, "/r/doc", "Range: items=0-1")
		rfcWant(t, "items", r, b, 200, "SKIP", "fwd=bypass", "detail=range")
	})
}

// TestRFCHeuristicFreshness covers RFC 9111 §4.2.2: without explicit
// freshness or a route ttl, a heuristically cacheable response with
// Last-Modified is fresh for a fraction of its age (10% by default, the
// route's heuristic percentage, or not at all with heuristic off).
func TestRFCHeuristicFreshness(t *testing.T) {
	e := rfcStart(t, "rfcheur", `
		route dflt /h/*
		route half /half/* {
			heuristic 50%
		}
		route off /off/* {
			heuristic off
		}`)
	lm := func(ago time.Duration) string {
		return "Last-Modified: " + time.Now().Add(-ago).UTC().Format(http.TimeFormat)
	}
	rfcCheckStorage(t, e, []rfcStorageCase{
		{path: "/h/ten-hours-old", headers: []string{lm(10 * time.Hour), "Date: @now"}, stored: true, minTTL: 3580, maxTTL: 3600},
		{path: "/h/ancient", headers: []string{lm(1000 * 24 * time.Hour), "Date: @now"}, stored: true, minTTL: 86380, maxTTL: 86400},
		{path: "/half/two-hours-old", headers: []string{lm(2 * time.Hour), "Date: @now"}, stored: true, minTTL: 3580, maxTTL: 3600},
	})
	t.Run("not for a status that is not heuristically cacheable", func(t *testing.T) {
		const p = "/h/302"
		e.u.Handle(p, rfcRespond(302, "Location: /x", lm(10*time.Hour)))
		for i := 0; i < 2; i++ {
			r, b := e.get(t, p)
			rfcWant(t, "302", r, b, 302, "MISS", "!stored")
		}
	})
	t.Run("heuristic off: stored only to be revalidated", func(t *testing.T) {
		const p = "/off/ten-hours-old"
		e.u.Handle(p, rfcRespond(200, lm(10*time.Hour), "Date: @now"))
		r, b := e.get(t, p)
		rfcWant(t, "first", r, b, 200, "MISS")
		r, b = e.get(t, p)
		if r.Header.Get("X-Cache") == "HIT" {
			t.Fatalf("heuristic off: a HIT %q", r.Header.Values("Cache-Status"))
		}
		rfcCalls(t, "heuristic off", e.u, "GET", p, 2)
	})
}

// TestRFCStorableStatuses covers RFC 9111 §3: any final status the cache
// understands is stored with explicit freshness (an unlisted 4xx or 5xx
// only with s-maxage or a targeted field, against CPDoS); the status list only
// governs the route ttl, which never applies to a server error; an unknown
// status with must-understand is not stored, a known one ignores no-store
// (§5.2.2.3); a stale server error is never served.
func TestRFCStorableStatuses(t *testing.T) {
	e := rfcStart(t, "rfcstat", `
		route s /s/* 300s {
			stale_while_revalidate 60s
			stale_if_error 60s
		}
		route sie /sie/* {
			stale_if_error 60s
		}`)
	rfcCheckStorage(t, e, []rfcStorageCase{
		{path: "/s/500-s-maxage", status: 500, headers: []string{"Cache-Control: s-maxage=60"}, stored: true, maxTTL: 60, minTTL: 50},
		{path: "/s/502-cdn-max-age", status: 502, headers: []string{"CDN-Cache-Control: max-age=60"}, stored: true, maxTTL: 60, minTTL: 50},
		{path: "/s/504-s-maxage", status: 504, headers: []string{"Cache-Control: max-age=5, s-maxage=60"}, stored: true, maxTTL: 60, minTTL: 50},
		// An unlisted error with only max-age: not stored (CPDoS, see
		// TestRFCHostileInput).
		{path: "/s/500-max-age", status: 500, headers: []string{"Cache-Control: max-age=60"}},
		{path: "/s/302-max-age", status: 302, headers: []string{"Location: /x", "Cache-Control: max-age=60"}, stored: true, maxTTL: 60, minTTL: 50},
		{path: "/s/307-expires", status: 307, headers: []string{"Location: /x", "Expires: @now+60", "Date: @now"}, stored: true, maxTTL: 60, minTTL: 50},
		{path: "/s/308-max-age", status: 308, headers: []string{"Location: /x", "Cache-Control: max-age=60"}, stored: true, maxTTL: 60, minTTL: 50},
		{path: "/s/400-s-maxage", status: 400, headers: []string{"Cache-Control: s-maxage=60"}, stored: true, maxTTL: 60, minTTL: 50},
		{path: "/s/503-route-ttl", status: 503},
		{path: "/s/400-route-ttl", status: 400},
		{path: "/s/599-max-age", status: 599, headers: []string{"Cache-Control: max-age=60"}},
		{path: "/s/599-s-maxage", status: 599, headers: []string{"Cache-Control: s-maxage=60"}, stored: true, maxTTL: 60, minTTL: 50},
		{path: "/s/299-max-age", status: 299, headers: []string{"Cache-Control: max-age=60"}, stored: true, maxTTL: 60, minTTL: 50},
		{path: "/s/299-must-understand", status: 299, headers: []string{"Cache-Control: max-age=60, must-understand, no-store"}},
		{path: "/s/200-must-understand", headers: []string{"Cache-Control: max-age=60, must-understand, no-store"}, stored: true, maxTTL: 60, minTTL: 50},
	})
	t.Run("a fresh 500 does not replace a stale entry under stale-if-error", func(t *testing.T) {
		const p = "/sie/doc"
		var failing atomic.Bool
		e.u.Handle(p, func(w http.ResponseWriter, r *http.Request) {
			if failing.Load() {
				w.Header().Set("Cache-Control", "s-maxage=60")
				rfcWriteBody(w, r, 500)
				return
			}
			w.Header().Set("Cache-Control", "max-age=2")
			rfcWriteBody(w, r, 200)
		})
		r, b := e.get(t, p)
		rfcWant(t, "first", r, b, 200, "MISS", "stored")
		time.Sleep(3 * time.Second)
		failing.Store(true)
		r, b2 := e.get(t, p)
		rfcWant(t, "origin 500", r, b2, 200, "STALE", "fwd=stale", "fwd-status=500", "detail=stale-if-error")
		if b2 != b {
			t.Fatalf("served %q, want the stale %q", b2, b)
		}
	})
	t.Run("a stale server error is never served", func(t *testing.T) {
		const p = "/s/500-short"
		e.u.Handle(p, rfcRespond(500, "CDN-Cache-Control: max-age=3, stale-while-revalidate=60, stale-if-error=60"))
		r, b := e.get(t, p)
		rfcWant(t, "first", r, b, 500, "MISS")
		time.Sleep(4 * time.Second)
		r, b = e.get(t, p)
		if r.Header.Get("X-Cache") == "STALE" || r.Header.Get("X-Cache") == "HIT" {
			t.Fatalf("a stale 500 was served: %q", r.Header.Values("Cache-Status"))
		}
	})
}

// TestRFCStaleIfUnreachable covers RFC 9111 §4.2.4: when the origin cannot
// be reached at all, a stale entry is served (by default up to 10 minutes
// past its freshness), unless must-revalidate or s-maxage forbid it; a
// stale error is never served.
func TestRFCStaleIfUnreachable(t *testing.T) {
	e := rfcStart(t, "rfcunreach", `
		route u /u/*`)
	origins := map[string]string{
		"/u/doc":  "Cache-Control: max-age=2",
		"/u/must": "Cache-Control: max-age=2, must-revalidate",
		"/u/smax": "Cache-Control: s-maxage=2",
	}
	stored := map[string]string{}
	for p, cc := range origins {
		e.u.Handle(p, rfcRespond(200, cc, `ETag: "x"`))
		r, b := e.get(t, p)
		rfcWant(t, "prime "+p, r, b, 200, "MISS", "stored")
		stored[p] = b
	}
	e.u.Handle("/u/500", rfcRespond(500, "CDN-Cache-Control: max-age=2", `ETag: "x"`))
	r, b := e.get(t, "/u/500")
	rfcWant(t, "prime /u/500", r, b, 500, "MISS")

	time.Sleep(3500 * time.Millisecond)
	e.u.srv.CloseClientConnections()
	e.u.srv.Close()

	r, b = e.get(t, "/u/doc")
	rfcWant(t, "stale, origin unreachable", r, b, 200, "STALE", "fwd=stale", "detail=stale-if-error")
	if b != stored["/u/doc"] {
		t.Fatalf("served %q, want the stored %q", b, stored["/u/doc"])
	}
	for _, p := range []string{"/u/must", "/u/smax", "/u/500"} {
		r, b := e.get(t, p)
		if r.Header.Get("X-Cache") == "STALE" || r.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s with the origin gone: %d X-Cache %q, want a 502 and no stale answer", p, r.StatusCode, r.Header.Get("X-Cache"))
		}
		_ = b
	}
}

// TestRFCVaryNormalisation covers RFC 9111 §4.1: Accept-Encoding and
// Accept-Language values that differ only in whitespace, case or (where
// the grammar gives order no meaning) the order of members select the
// same stored variant.
func TestRFCVaryNormalisation(t *testing.T) {
	e := rfcStart(t, "rfcvn", `
		route v /v/*`)
	e.u.Handle("/v/lang", rfcRespond(200, "Cache-Control: max-age=300", "Vary: Accept-Language"))
	e.u.Handle("/v/enc", rfcRespond(200, "Cache-Control: max-age=300", "Vary: Accept-Encoding"))

	stored := rfcPrime(t, e, "/v/lang", "Accept-Language: en-US, fr;q=0.5")
	for _, al := range []string{"EN-us,fr;q=0.5", "en-US ,  fr; q=0.5", "fr;q=0.5, en-US"} {
		r, b := e.get(t, "/v/lang", "Accept-Language: "+al)
		rfcWant(t, al, r, b, 200, "HIT", "hit")
		if b != stored {
			t.Fatalf("%s: body %q, want the stored %q", al, b, stored)
		}
	}
	r, b := e.get(t, "/v/lang", "Accept-Language: fr, en-US")
	rfcWant(t, "another preference", r, b, 200, "MISS", "fwd=vary-miss")

	stored = rfcPrime(t, e, "/v/enc", "Accept-Encoding: gzip, br")
	for _, ae := range []string{"br, gzip", "GZIP,BR", " br ,gzip "} {
		r, b := e.get(t, "/v/enc", "Accept-Encoding: "+ae)
		rfcWant(t, ae, r, b, 200, "HIT", "hit")
		if b != stored {
			t.Fatalf("%s: body %q, want the stored %q", ae, b, stored)
		}
	}
	r, b = e.get(t, "/v/enc", "Accept-Encoding: gzip")
	rfcWant(t, "another coding set", r, b, 200, "MISS", "fwd=vary-miss")
}

// TestRFCTargetedCacheControlConfigured: targeted_cache_control sets the
// fields obeyed and their precedence (RFC 9213 §2.2: the first valid one).
func TestRFCTargetedCacheControlConfigured(t *testing.T) {
	e := rfcStart(t, "rfctc2", `
		targeted_cache_control Surrogate-Control CDN-Cache-Control
		route origin /o/*`)
	rfcCheckStorage(t, e, []rfcStorageCase{
		{path: "/o/surrogate-beats-cc", headers: []string{"Surrogate-Control: max-age=60", "Cache-Control: no-store"}, stored: true, maxTTL: 60, minTTL: 50},
		{path: "/o/surrogate-beats-cdn", headers: []string{"Surrogate-Control: max-age=100", "CDN-Cache-Control: no-store"}, stored: true, maxTTL: 100, minTTL: 90},
		{path: "/o/invalid-surrogate-then-cdn", headers: []string{"Surrogate-Control: &&", "CDN-Cache-Control: max-age=30", "Cache-Control: no-store"}, stored: true, maxTTL: 30, minTTL: 20},
		{path: "/o/surrogate-no-store", headers: []string{"Surrogate-Control: no-store", "Cache-Control: max-age=600"}},
	})
}
