package rediscache

import (
	"bytes"
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func sampleEntry() *entry {
	return &entry{
		kind:       kindResponse,
		status:     200,
		storedAt:   time.UnixMicro(1_700_000_000_123_456),
		initialAge: 3 * time.Second,
		freshFor:   5 * time.Minute,
		swr:        time.Minute,
		sie:        2 * time.Minute,
		gens:       []genStamp{{"ns:_g:all", "0:0"}, {"ns:_g:r:dash", "1700000000000000:2"}},
		vary:       []string{"Accept-Encoding"},
		header: http.Header{
			"Content-Type": {"application/json"},
			"Etag":         {`"abc"`},
			"X-Multi":      {"a", "b"},
		},
		body: []byte(`{"hello":"world"}`),
	}
}

func TestEntryRoundTrip(t *testing.T) {
	in := sampleEntry()
	out, err := decodeEntry(in.encode())
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !out.storedAt.Equal(in.storedAt) {
		t.Errorf("storedAt = %v, want %v", out.storedAt, in.storedAt)
	}
	out.storedAt = in.storedAt
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip mismatch:\n got %+v\nwant %+v", out, in)
	}
}

// Encoding into a recycled buffer gives the same bytes as a fresh one, and
// never outgrows the size bound (which would copy the body twice).
func TestEntryEncodeIntoBuffer(t *testing.T) {
	e := sampleEntry()
	e.gens = append(e.gens, genStamp{key: strings.Repeat("g", 300), val: "1795664202117509:3"})
	e.vary = []string{"Accept-Language", "X-Platform"}
	e.varyEpoch = strings.Repeat("v", 40)
	e.header["X-Long"] = []string{strings.Repeat("h", 5000), "", "x"}
	fresh := e.encode()
	if len(fresh) > e.encodedSizeBound() || cap(fresh) != e.encodedSizeBound() {
		t.Errorf("encoded %d bytes into %d, bound %d", len(fresh), cap(fresh), e.encodedSizeBound())
	}
	dirty := bytes.Repeat([]byte{0xff}, cap(fresh)+100)
	reused := e.appendEncoded(dirty)
	if &reused[0] != &dirty[0] {
		t.Errorf("a large enough buffer was not reused")
	}
	// Header fields are encoded in map order, so the entries are compared,
	// not the bytes.
	want, err := decodeEntry(fresh)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeEntry(reused)
	if err != nil {
		t.Fatalf("decoding an entry encoded into a used buffer: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("encoding into a used buffer changed the entry:\n got %+v\nwant %+v", got, want)
	}
}

func TestEntryVaryIndexRoundTrip(t *testing.T) {
	in := &entry{kind: kindVaryIndex, storedAt: time.UnixMicro(5), vary: []string{"Accept-Encoding", "Accept-Language"}, varyEpoch: "abc", header: http.Header{}}
	out, err := decodeEntry(in.encode())
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if out.kind != kindVaryIndex || out.varyEpoch != "abc" || !reflect.DeepEqual(out.vary, in.vary) {
		t.Errorf("got %+v", out)
	}
}

// Every truncation and every single-byte corruption of a valid entry must
// decode as an error, never panic and never yield a different response.
func TestEntryCorruptionIsDetected(t *testing.T) {
	raw := sampleEntry().encode()
	for n := 0; n < len(raw); n++ {
		if _, err := decodeEntry(raw[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: decoded without error", n)
		}
	}
	for i := range raw {
		bad := bytes.Clone(raw)
		bad[i] ^= 0x5a
		if _, err := decodeEntry(bad); err == nil {
			t.Fatalf("byte %d flipped: decoded without error", i)
		}
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 2000; i++ {
		junk := make([]byte, rng.Intn(200))
		rng.Read(junk)
		if len(junk) > 2 && i%2 == 0 {
			junk[0], junk[1] = entryMagic0, entryMagic1
		}
		if _, err := decodeEntry(junk); err == nil {
			t.Fatalf("random value %x decoded without error", junk)
		}
	}
	for _, foreign := range []string{"", "hello", `{"data":"test"}`, "RC", "RC\x02\x01xxxxxxxx"} {
		if _, err := decodeEntry([]byte(foreign)); err == nil {
			t.Errorf("foreign value %q decoded without error", foreign)
		}
	}
}

func testHandler(routes ...*Route) *Handler {
	h := &Handler{Namespace: "ns", Routes: routes}
	h.setDefaults()
	if err := h.compileRoutes(); err != nil {
		panic(err)
	}
	return h
}

func TestBuildKey(t *testing.T) {
	rt := &Route{Name: "dash", Path: "/api/dashboard*", Vary: []string{"X-Tenant"}}
	h := testHandler(rt)
	key := func(target string, keyPart string, hdr ...string) requestKey {
		r := httptest.NewRequest("GET", target, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		p, _ := normalizedPath(r)
		return h.buildKey(r, rt, p, keyPart)
	}
	base := key("http://example.com/api/dashboard?a=1&b=2", "user-1")
	if !strings.HasPrefix(base.primary, "ns:dash:user-1:") {
		t.Errorf("readable prefix missing: %q", base.primary)
	}
	same := []requestKey{
		key("http://example.com/api/dashboard?b=2&a=1", "user-1"),
		key("http://EXAMPLE.com/api/dashboard?a=1&b=2", "user-1"),
	}
	for _, k := range same {
		if k.primary != base.primary {
			t.Errorf("equivalent request got a different key: %q vs %q", k.primary, base.primary)
		}
	}
	different := map[string]requestKey{
		"user":   key("http://example.com/api/dashboard?a=1&b=2", "user-2"),
		"host":   key("http://other.com/api/dashboard?a=1&b=2", "user-1"),
		"path":   key("http://example.com/api/dashboard/x?a=1&b=2", "user-1"),
		"query":  key("http://example.com/api/dashboard?a=1&b=3", "user-1"),
		"vary":   key("http://example.com/api/dashboard?a=1&b=2", "user-1", "X-Tenant", "t2"),
		"scheme": key("https://example.com/api/dashboard?a=1&b=2", "user-1"),
	}
	for name, k := range different {
		if k.primary == base.primary {
			t.Errorf("%s: different request shares the key %q", name, k.primary)
		}
	}
	if different["user"].uriGen != base.uriGen {
		t.Errorf("the URI generation must not depend on the user")
	}
	// Repeated parameters keep their relative order.
	if key("http://e/api/dashboard?a=1&a=2", "u").primary == key("http://e/api/dashboard?a=2&a=1", "u").primary {
		t.Errorf("reordering repeated parameters must change the key")
	}
}

func TestKeyPartEscaping(t *testing.T) {
	for in, want := range map[string]string{
		"user-123":      "user-123",
		"a:b":           "a%3Ab",
		"*":             "%2A",
		"u?[x]":         "u%3F%5Bx%5D",
		"a b/c":         "a%20b%2Fc",
		"caf\xc3\xa9":   "caf%C3%A9",
		`back\slash`:    "back%5Cslash",
		"":              "",
		"user@x.com+=~": "user@x.com+=~",
	} {
		if got := escapeKeyPart(in); got != want {
			t.Errorf("escapeKeyPart(%q) = %q, want %q", in, got, want)
		}
	}
	long := escapeKeyPart(strings.Repeat("*", 1000))
	if len(long) > maxKeyPartLength {
		t.Errorf("escaped key part is %d bytes, bound is %d", len(long), maxKeyPartLength)
	}
	// A hostile identity can never produce a key that a pattern purge for
	// another identity would match, nor glob characters in the key.
	rt := &Route{Name: "r", Path: "/*", Key: "x"}
	h := testHandler(rt)
	for _, hostile := range []string{"*", "user-123:*", "[a-z]*", "?", "user-1\\*"} {
		r := httptest.NewRequest("GET", "http://e/x", nil)
		k := h.buildKey(r, rt, "/x", hostile)
		if strings.ContainsAny(k.primary, "*?[]\\") {
			t.Errorf("key for %q contains glob characters: %q", hostile, k.primary)
		}
		if globMatch("ns:*:user-123:*", k.primary) {
			t.Errorf("key for %q matched another user's purge pattern: %q", hostile, k.primary)
		}
	}
}

func TestNormalizedPath(t *testing.T) {
	for target, want := range map[string]struct {
		path      string
		canonical bool
	}{
		"/api/a":          {"/api/a", true},
		"/api/a/":         {"/api/a/", true},
		"/api//a":         {"/api/a", false},
		"/api/./a":        {"/api/a", false},
		"/api/x/../a":     {"/api/a", false},
		"/api/a%2Fb":      {"/api/a/b", false},
		"/api/caf%C3%A9":  {"/api/café", true},
		"/api/%61":        {"/api/a", false},
		"/":               {"/", true},
		"/api/a?q=%2F..%": {"/api/a", true},
	} {
		r := httptest.NewRequest("GET", "http://e"+target, nil)
		p, ok := normalizedPath(r)
		if p != want.path || ok != want.canonical {
			t.Errorf("%s: got (%q, %v), want (%q, %v)", target, p, ok, want.path, want.canonical)
		}
	}
}

func TestPathPatterns(t *testing.T) {
	cases := []struct {
		pattern, path string
		match         bool
	}{
		{"/api/dashboard*", "/api/dashboard", true},
		{"/api/dashboard*", "/api/dashboard/x/y", true},
		{"/api/dashboard*", "/api/dash", false},
		{"/api/exact", "/api/exact", true},
		{"/api/exact", "/api/exact/", false},
		{"/api/*/stats", "/api/a/b/stats", true},
		{"/api/*/stats", "/api/a/other", false},
		{"*.json", "/x/y.json", true},
		{"/api/v[12]/*", "/api/v2/x", true},
		{"/api/v[12]/*", "/api/v3/x", false},
	}
	for _, c := range cases {
		m, err := compilePathPattern(c.pattern)
		if err != nil {
			t.Fatalf("%q: %v", c.pattern, err)
		}
		if got := m.match(c.path); got != c.match {
			t.Errorf("%q match %q = %v, want %v", c.pattern, c.path, got, c.match)
		}
	}
	for _, bad := range []string{"", "api", "/api/[x"} {
		if _, err := compilePathPattern(bad); err == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
}

func TestGlobMatch(t *testing.T) {
	cases := []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true},
		{"ns:*:user-123:*", "ns:dash:user-123:abc", true},
		{"ns:*:user-123:*", "ns:dash:user-1234:abc", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"[^a]bc", "xbc", true},
		{"[^a]bc", "abc", false},
		{"a\\*", "a*", true},
		{"a\\*", "ab", false},
		{"[a-c]*", "b", true},
	}
	for _, c := range cases {
		if got := globMatch(c.pattern, c.s); got != c.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", c.pattern, c.s, got, c.want)
		}
	}
}

func TestFreshnessAndCacheability(t *testing.T) {
	rt := &Route{Name: "r", Path: "/*", TTL: caddy.Duration(time.Minute)}
	forced := &Route{Name: "f", Path: "/*", TTL: caddy.Duration(time.Minute), ForceTTL: true}
	noTTL := &Route{Name: "n", Path: "/*"}
	jsonOnly := &Route{Name: "j", Path: "/*", TTL: caddy.Duration(time.Minute), ContentTypes: []string{"application/json"}}
	h := testHandler(rt, forced, noTTL, jsonOnly)
	h.cacheable = map[int]bool{200: true, 404: true}
	now := time.Now()
	cases := []struct {
		name   string
		route  *Route
		status int
		hdr    http.Header
		fresh  time.Duration
		reason string
	}{
		{"default ttl", rt, 200, http.Header{}, time.Minute, ""},
		{"max-age wins", rt, 200, http.Header{"Cache-Control": {"max-age=10"}}, 10 * time.Second, ""},
		{"s-maxage beats max-age", rt, 200, http.Header{"Cache-Control": {"max-age=10, s-maxage=20"}}, 20 * time.Second, ""},
		{"forced ttl", forced, 200, http.Header{"Cache-Control": {"max-age=10"}}, time.Minute, ""},
		{"forced never stores no-store", forced, 200, http.Header{"Cache-Control": {"no-store"}}, 0, "no-store"},
		{"forced never stores private", forced, 200, http.Header{"Cache-Control": {"private"}}, 0, "private"},
		{"no ttl, origin silent", noTTL, 200, http.Header{}, 0, "not-fresh"},
		{"no ttl, origin fresh", noTTL, 200, http.Header{"Cache-Control": {"max-age=30"}}, 30 * time.Second, ""},
		{"expires", noTTL, 200, http.Header{"Expires": {now.Add(time.Hour).UTC().Format(http.TimeFormat)}, "Date": {now.UTC().Format(http.TimeFormat)}}, time.Hour, ""},
		{"invalid expires", noTTL, 200, http.Header{"Expires": {"0"}}, 0, "not-fresh"},
		{"status not cacheable", rt, 500, http.Header{}, 0, "status"},
		{"404 cacheable", rt, 404, http.Header{}, time.Minute, ""},
		{"set-cookie", rt, 200, http.Header{"Set-Cookie": {"a=b"}}, 0, "set-cookie"},
		{"vary star", rt, 200, http.Header{"Vary": {"*"}}, 0, "vary-star"},
		{"event stream", rt, 200, http.Header{"Content-Type": {"text/event-stream"}}, 0, "streaming"},
		{"too large", rt, 200, http.Header{"Content-Length": {"999999999"}}, 0, "too-large"},
		{"wrong content type", jsonOnly, 200, http.Header{"Content-Type": {"text/html"}}, 0, "content-type"},
		{"right content type", jsonOnly, 200, http.Header{"Content-Type": {"application/json; charset=utf-8"}}, time.Minute, ""},
		{"no-cache", rt, 200, http.Header{"Cache-Control": {"no-cache"}}, 0, "no-cache"},
		// Issue 13.
		{"RFC 9213: targeted max-age beats no-store", noTTL, 200, http.Header{"Cache-Control": {"no-store"}, "Cdn-Cache-Control": {"max-age=50"}}, 50 * time.Second, ""},
		{"RFC 9213: targeted private", rt, 200, http.Header{"Cache-Control": {"max-age=50"}, "Cdn-Cache-Control": {"private"}}, 0, "private"},
		{"RFC 9111 §3: unlisted 500 with s-maxage", rt, 500, http.Header{"Cache-Control": {"s-maxage=30"}}, 30 * time.Second, ""},
		{"RFC 9213: unlisted 503 with a targeted max-age", rt, 503, http.Header{"Cdn-Cache-Control": {"max-age=30"}}, 30 * time.Second, ""},
		{"CPDoS: unlisted 400 with only max-age", rt, 400, http.Header{"Cache-Control": {"max-age=30"}}, 0, "status"},
		{"RFC 9111 §3: unlisted 302 with max-age", noTTL, 302, http.Header{"Cache-Control": {"max-age=30"}}, 30 * time.Second, ""},
		{"route ttl never applies to an error", rt, 503, http.Header{}, 0, "status"},
		{"forced ttl never applies to an error", forced, 500, http.Header{"Cache-Control": {"s-maxage=30"}}, 30 * time.Second, ""},
		{"RFC 9111 §5.2.2.3: must-understand, unknown status", rt, 299, http.Header{"Cache-Control": {"max-age=30, must-understand, no-store"}}, 0, "must-understand"},
		{"RFC 9111 §3: unknown status with max-age", rt, 299, http.Header{"Cache-Control": {"max-age=30"}}, 30 * time.Second, ""},
		{"RFC 9111 §3: unknown status, route ttl never applies", rt, 299, http.Header{}, 0, "status"},
		{"RFC 9111 §3: 206 is not stored", rt, 206, http.Header{"Cache-Control": {"max-age=30"}}, 0, "status"},
		{"RFC 9111 §5.2.2.3: must-understand overrides no-store", rt, 200, http.Header{"Cache-Control": {"max-age=30, must-understand, no-store"}}, 30 * time.Second, ""},
		{"RFC 9111 §4.2.2: heuristic", noTTL, 200, http.Header{"Last-Modified": {now.Add(-10 * time.Hour).UTC().Format(http.TimeFormat)}, "Date": {now.UTC().Format(http.TimeFormat)}}, time.Hour, ""},
	}
	for _, c := range cases {
		cr := &cacheRequest{h: h, route: c.route, r: httptest.NewRequest("GET", "/", nil)}
		plan, reason := h.cacheability(cr, c.status, c.hdr, now)
		if reason != c.reason {
			t.Errorf("%s: reason %q, want %q", c.name, reason, c.reason)
			continue
		}
		if reason == "" && (plan.freshFor < c.fresh-2*time.Second || plan.freshFor > c.fresh) {
			t.Errorf("%s: fresh for %v, want %v", c.name, plan.freshFor, c.fresh)
		}
	}
}

func TestInitialAge(t *testing.T) {
	req := time.Now()
	resp := req.Add(2 * time.Second)
	if got := initialAge(http.Header{"Age": {"10"}}, req, resp); got != 12*time.Second {
		t.Errorf("Age 10 + 2s delay = %v, want 12s", got)
	}
	if got := initialAge(http.Header{}, req, resp); got != 2*time.Second {
		t.Errorf("no Age: %v, want the 2s response delay", got)
	}
}

func parseTestCaddyfile(input string) (*Handler, error) {
	d := caddyfile.NewTestDispenser(input)
	h := new(Handler)
	return h, h.UnmarshalCaddyfile(d)
}

func TestCaddyfileParses(t *testing.T) {
	h, err := parseTestCaddyfile(`redis_cache {
		redis redis://127.0.0.1:7000 redis://127.0.0.1:7001
		password {env.REDIS_TOKEN}
		namespace app
		purge_on post put
		timeout 50ms
		breaker 5 3s
		memory_limit 16MiB
		max_entry_size 1MB
		validated_copies 8MiB
		status 200 404
		route dashboard /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
			tags user:{http.request.header.X-User-Id} dash
			vary Accept-Language
			stale_while_revalidate 30s
			stale_if_error 1h
			cache_control "private, max-age=60"
		}
		route campaigns /api/campaigns* {
			ttl 2m
			force_ttl
			invalidates dashboard
			purge uri
			content_type application/json
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Redis) != 2 || h.Password != "{env.REDIS_TOKEN}" || h.Namespace != "app" {
		t.Errorf("store settings: %+v", h)
	}
	if !reflect.DeepEqual(h.PurgeOn, []string{"POST", "PUT"}) || h.BreakerFailures != 5 || h.MemoryLimit != 16<<20 || h.MaxEntrySize != 1_000_000 || h.ValidatedCopies != 8<<20 {
		t.Errorf("settings: %+v", h)
	}
	if len(h.Routes) != 2 {
		t.Fatalf("routes: %d", len(h.Routes))
	}
	d, c := h.Routes[0], h.Routes[1]
	if d.TTL != caddy.Duration(5*time.Minute) || d.Key == "" || len(d.Tags) != 2 || d.CacheControl != "private, max-age=60" || d.StaleIfError != caddy.Duration(time.Hour) {
		t.Errorf("dashboard route: %+v", d)
	}
	if c.TTL != caddy.Duration(2*time.Minute) || !c.ForceTTL || c.Purge != "uri" || c.Invalidates[0] != "dashboard" {
		t.Errorf("campaigns route: %+v", c)
	}
}

func TestCaddyfileIssue13Options(t *testing.T) {
	h, err := parseTestCaddyfile(`redis_cache {
		targeted_cache_control Surrogate-Control CDN-Cache-Control
		stale_if_unreachable 1h
		route a /a/* {
			heuristic 20%
		}
		route b /b/* {
			heuristic off
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"Surrogate-Control", "CDN-Cache-Control"}; !reflect.DeepEqual(h.TargetedCacheControl, want) {
		t.Errorf("targeted_cache_control = %q, want %q", h.TargetedCacheControl, want)
	}
	if h.StaleIfUnreachable != caddy.Duration(time.Hour) {
		t.Errorf("stale_if_unreachable = %v, want 1h", h.StaleIfUnreachable)
	}
	if h.Routes[0].Heuristic != 20 || h.Routes[1].Heuristic != -1 {
		t.Errorf("heuristic = %d, %d; want 20, -1", h.Routes[0].Heuristic, h.Routes[1].Heuristic)
	}
	if err := testHandler(&Route{Name: "x", Path: "/", Heuristic: -2}).Validate(); err == nil || !strings.Contains(err.Error(), "heuristic -2") {
		t.Errorf("Validate with heuristic -2: %v", err)
	}
	if dflt := testHandler(); !reflect.DeepEqual(dflt.TargetedCacheControl, []string{"CDN-Cache-Control"}) {
		t.Errorf("default targeted_cache_control = %q", dflt.TargetedCacheControl)
	}
}

func TestCaddyfileErrors(t *testing.T) {
	cases := []struct {
		name, input, want string
	}{
		{"unknown subdirective", `redis_cache { colour blue }`, `unknown subdirective "colour"`},
		{"bad targeted field", `redis_cache { targeted_cache_control "CDN Cache" }`, `targeted_cache_control "CDN Cache": not a header field name`},
		{"duplicate targeted_cache_control", `redis_cache { targeted_cache_control A
			targeted_cache_control B }`, `duplicate subdirective "targeted_cache_control"`},
		{"bad stale_if_unreachable", `redis_cache { stale_if_unreachable soon }`, `stale_if_unreachable "soon": must be a positive duration (e.g. 10m) or off`},
		{"bad heuristic", `redis_cache { route a /a {
			heuristic 150
		} }`, `heuristic "150": must be a percentage from 1 to 100, or off`},
		{"duplicate heuristic", `redis_cache { route a /a { heuristic 5
			heuristic off } }`, `route "a": duplicate subdirective "heuristic"`},
		{"unknown route subdirective", `redis_cache { route a /a 1m { flavour x } }`, `route "a": unknown subdirective "flavour"`},
		{"bad route ttl", `redis_cache { route a /a 5 parsecs }`, `route needs <name> <path-pattern> [<ttl>], got 4 arguments`},
		{"bad route ttl value", `redis_cache { route a /a soon }`, `route "a": ttl "soon": not a valid duration`},
		{"bad ttl subdirective", `redis_cache { route a /a { ttl forever } }`, `ttl "forever": not a valid duration`},
		{"bad timeout", `redis_cache { timeout fast }`, `timeout "fast": not a valid duration`},
		{"negative duration", `redis_cache { route a /a { stale_if_error -1s } }`, `stale_if_error "-1s": must not be negative`},
		{"duplicate route", `redis_cache { route a /a 1m
			route a /b 1m }`, `route "a": duplicate route name`},
		{"unknown invalidates", `redis_cache { route a /a 1m { invalidates ghost } }`, `route "a": invalidates unknown route "ghost"`},
		{"duplicate subdirective", `redis_cache { namespace a
			namespace b }`, `duplicate subdirective "namespace"`},
		{"duplicate route subdirective", `redis_cache { route a /a { ttl 1m
			ttl 2m } }`, `route "a": duplicate subdirective "ttl"`},
		{"bad redis url", `redis_cache { redis http://x }`, `URL must start with redis:// or rediss://`},
		{"redis without url", `redis_cache { redis }`, `wrong argument count`},
		{"bad route name", `redis_cache { route "bad name" /a 1m }`, `invalid name`},
		{"bad path", `redis_cache { route a api 1m }`, `must start with '/'`},
		{"bad purge mode", `redis_cache { route a /a 1m { purge everything } }`, `purge "everything": must be 'route' or 'uri'`},
		{"force_ttl without ttl", `redis_cache { route a /a { force_ttl } }`, `force_ttl needs a ttl`},
		{"bad size", `redis_cache { memory_limit lots }`, `memory_limit "lots": not a valid size`},
		{"bad validated_copies", `redis_cache { validated_copies some }`, `validated_copies "some": not a valid size`},
		{"validated_copies without size", `redis_cache { validated_copies }`, `wrong argument count`},
		{"bad status", `redis_cache { status 200 abc }`, `status "abc": not an HTTP status code`},
		{"bad breaker", `redis_cache { breaker 0 1s }`, `breaker failures "0"`},
		{"bad namespace", `redis_cache { namespace "a:b" }`, `namespace "a:b"`},
		{"arguments on first line", `redis_cache foo`, `takes no arguments`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			input := strings.NewReplacer("{ ", "{\n", " }", "\n}").Replace(c.input)
			_, err := parseTestCaddyfile(input)
			if err == nil {
				t.Fatalf("accepted %s", c.input)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestValidateNamesTheProblem(t *testing.T) {
	cases := []struct {
		name string
		h    Handler
		want string
	}{
		{"duplicate route", Handler{Routes: []*Route{{Name: "a", Path: "/a"}, {Name: "a", Path: "/b"}}}, `route "a": duplicate route name`},
		{"unknown invalidates", Handler{Routes: []*Route{{Name: "a", Path: "/a", Invalidates: []string{"b"}}}}, `invalidates unknown route "b"`},
		{"bad path", Handler{Routes: []*Route{{Name: "a", Path: "a"}}}, `must start with '/'`},
		{"bad status", Handler{CacheableStatus: []int{99}}, `status 99`},
		{"lower-case method", Handler{PurgeOn: []string{"post"}}, `purge_on "post"`},
		{"negative validated copies", Handler{ValidatedCopies: -2}, `validated_copies -2`},
	}
	for _, c := range cases {
		c.h.setDefaults()
		err := c.h.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to contain %q", c.name, err, c.want)
		}
	}
}

func TestBreaker(t *testing.T) {
	var changes []bool
	b := newBreaker(2, 50*time.Millisecond, func(open bool, _ error) { changes = append(changes, open) })
	fail := errFake("boom")
	b.record(fail)
	if !b.allow() {
		t.Fatal("opened after one failure; threshold is two")
	}
	b.record(fail)
	if b.allow() {
		t.Fatal("still closed after two failures")
	}
	time.Sleep(60 * time.Millisecond)
	if !b.allow() {
		t.Fatal("no probe after the cooldown")
	}
	if b.allow() {
		t.Fatal("a second probe while the first is in flight")
	}
	b.record(nil)
	if !b.allow() {
		t.Fatal("not closed after a successful probe")
	}
	if !reflect.DeepEqual(changes, []bool{true, false}) {
		t.Errorf("state changes %v, want one open then one close", changes)
	}
}

type errFake string

func (e errFake) Error() string { return string(e) }

func TestMemoryStoreBoundAndEviction(t *testing.T) {
	m := newMemoryStore(10 * (1024 + memOverhead + 16))
	ctx := t.Context()
	val := bytes.Repeat([]byte("x"), 1024)
	for i := 0; i < 50; i++ {
		if err := m.set(ctx, fmt.Sprintf("key-%04d", i), val, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, used := m.items.size(); used > m.items.limit {
		t.Errorf("used %d bytes, limit %d", used, m.items.limit)
	}
	if got, _, _, _ := m.get(ctx, "key-0049", nil, nil); got == nil {
		t.Errorf("most recent entry was evicted")
	}
	if got, _, _, _ := m.get(ctx, "key-0000", nil, nil); got != nil {
		t.Errorf("oldest entry survived eviction")
	}
	_ = m.set(ctx, "short", val, time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	if got, _, _, _ := m.get(ctx, "short", nil, nil); got != nil {
		t.Errorf("expired entry returned")
	}
}
