package rediscache

// Visibility tests for issue 6: the Prometheus metrics on Caddy's admin
// /metrics, the admin stats and health endpoints, the local tier's
// coherence across two Caddy instances sharing one Redis, and the Grafana
// dashboard and metrics documentation shipped in the repository.
//
// Like the integration tests, these run a real Caddy binary built from
// ./cmd/caddy, real redis-server processes and a counting upstream, and
// assert what an operator sees: scraped series, JSON from the admin API,
// bodies and X-Cache headers.

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

// visSample is one series of a Prometheus text exposition.
type visSample struct {
	name   string
	labels map[string]string
	value  float64
}

func (s visSample) String() string {
	keys := make([]string, 0, len(s.labels))
	for k := range s.labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Quote(s.labels[k])
	}
	return fmt.Sprintf("%s{%s} %g", s.name, strings.Join(parts, ","), s.value)
}

// visParseExposition parses the Prometheus text format (the series lines;
// comments are skipped).
func visParseExposition(text string) ([]visSample, error) {
	var out []visSample
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := visSample{labels: map[string]string{}}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			return nil, fmt.Errorf("bad series line %q", line)
		}
		s.name = line[:i]
		rest := line[i:]
		if rest[0] == '{' {
			rest = rest[1:]
			for {
				rest = strings.TrimLeft(rest, " ,")
				if strings.HasPrefix(rest, "}") {
					rest = rest[1:]
					break
				}
				eq := strings.Index(rest, "=")
				if eq < 0 || len(rest) < eq+2 || rest[eq+1] != '"' {
					return nil, fmt.Errorf("bad labels in %q", line)
				}
				name := strings.TrimSpace(rest[:eq])
				rest = rest[eq+2:]
				var val strings.Builder
				closed := false
				for j := 0; j < len(rest); j++ {
					c := rest[j]
					if c == '\\' && j+1 < len(rest) {
						j++
						switch rest[j] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[j])
						}
						continue
					}
					if c == '"' {
						rest = rest[j+1:]
						closed = true
						break
					}
					val.WriteByte(c)
				}
				if !closed {
					return nil, fmt.Errorf("unterminated label value in %q", line)
				}
				s.labels[name] = val.String()
			}
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("no value in %q", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("bad value in %q: %v", line, err)
		}
		s.value = v
		out = append(out, s)
	}
	return out, nil
}

// visScrape fetches the admin /metrics endpoint and parses it.
func visScrape(t *testing.T, c *caddyProc) []visSample {
	t.Helper()
	code, body := c.Admin(http.MethodGet, "/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("GET admin /metrics: %d %s", code, integShort(body))
	}
	samples, err := visParseExposition(body)
	if err != nil {
		t.Fatalf("admin /metrics is not a parseable exposition: %v", err)
	}
	return samples
}

// visFind sums the series called name whose labels include every kv pair,
// and reports how many series matched.
func visFind(samples []visSample, name string, kv ...string) (float64, int) {
	var sum float64
	n := 0
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if s.labels[kv[i]] != kv[i+1] {
				continue next
			}
		}
		sum += s.value
		n++
	}
	return sum, n
}

// visValue returns the value of the single series name{kv...}, or 0 when it
// is absent (a labelled counter that was never incremented has no series).
func visValue(t *testing.T, samples []visSample, name string, kv ...string) float64 {
	t.Helper()
	v, n := visFind(samples, name, kv...)
	if n > 1 {
		t.Fatalf("%s%v: %d series match, want one", name, kv, n)
	}
	return v
}

func visOurs(samples []visSample) []visSample {
	var out []visSample
	for _, s := range samples {
		if strings.HasPrefix(s.name, "caddy_redis_cache_") {
			out = append(out, s)
		}
	}
	return out
}

func visDump(samples []visSample) string {
	var b strings.Builder
	for _, s := range visOurs(samples) {
		b.WriteString(s.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// visTally counts the X-Cache values clients saw, per route, with the
// metrics' lower-case result names.
type visTally map[string]map[string]int

func (v visTally) add(route string, resp *http.Response) {
	xc := strings.ToLower(resp.Header.Get("X-Cache"))
	if xc == "" {
		return
	}
	if v[route] == nil {
		v[route] = map[string]int{}
	}
	v[route][xc]++
}

// checkRequests asserts that caddy_redis_cache_requests_total equals the
// tally exactly, series by series, and that there is no other series.
func (v visTally) checkRequests(t *testing.T, label string, samples []visSample) {
	t.Helper()
	seen := 0
	for route, results := range v {
		for result, n := range results {
			got := visValue(t, samples, "caddy_redis_cache_requests_total", "route", route, "result", result)
			if got != float64(n) {
				t.Errorf("%s: requests_total{route=%q,result=%q} = %g, want %d (what clients saw: %v)",
					label, route, result, got, n, v)
			}
			seen++
		}
	}
	var nonzero int
	for _, s := range samples {
		if s.name == "caddy_redis_cache_requests_total" && s.value != 0 {
			nonzero++
		}
	}
	if nonzero != seen {
		t.Errorf("%s: %d non-zero requests_total series, want %d (clients saw %v)", label, nonzero, seen, v)
	}
	if t.Failed() {
		t.Logf("%s: scraped series:\n%s", label, visDump(samples))
	}
}

// visHistogram checks one histogram child: +Inf bucket equals _count,
// buckets never decrease, and returns the count.
func visHistogram(t *testing.T, samples []visSample, name string, kv ...string) float64 {
	t.Helper()
	count := visValue(t, samples, name+"_count", kv...)
	sum := visValue(t, samples, name+"_sum", kv...)
	type bucket struct{ le, n float64 }
	var buckets []bucket
	for _, s := range samples {
		if s.name != name+"_bucket" {
			continue
		}
		match := true
		for i := 0; i+1 < len(kv); i += 2 {
			if s.labels[kv[i]] != kv[i+1] {
				match = false
			}
		}
		if !match {
			continue
		}
		le, err := strconv.ParseFloat(s.labels["le"], 64)
		if err != nil {
			t.Fatalf("%s%v: bad le %q", name, kv, s.labels["le"])
		}
		buckets = append(buckets, bucket{le, s.value})
	}
	if count == 0 {
		return 0
	}
	if len(buckets) < 2 {
		t.Fatalf("%s%v: count %g but %d buckets", name, kv, count, len(buckets))
	}
	sort.Slice(buckets, func(i, j int) bool { return buckets[i].le < buckets[j].le })
	for i := 1; i < len(buckets); i++ {
		if buckets[i].n < buckets[i-1].n {
			t.Errorf("%s%v: bucket le=%g (%g) below le=%g (%g)", name, kv, buckets[i].le, buckets[i].n, buckets[i-1].le, buckets[i-1].n)
		}
	}
	if last := buckets[len(buckets)-1]; !math.IsInf(last.le, 1) || last.n != count {
		t.Errorf("%s%v: +Inf bucket %v, want le=+Inf with the count %g", name, kv, last, count)
	}
	if sum <= 0 {
		t.Errorf("%s%v: _sum %g with %g observations", name, kv, sum, count)
	}
	return count
}

// visStrlen is the size of a Redis value.
func visStrlen(t *testing.T, r *redisServer, key string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := r.Client().StrLen(ctx, key).Result()
	if err != nil {
		t.Fatalf("STRLEN %s: %v", key, err)
	}
	return n
}

// visRedisInfo returns one INFO field as Redis itself reports it.
func visRedisInfo(t *testing.T, r *redisServer, section, field string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := r.Client().Info(ctx, section).Result()
	if err != nil {
		t.Fatalf("INFO %s: %v", section, err)
	}
	for _, line := range strings.Split(raw, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == field {
			return v
		}
	}
	return ""
}

// visGetCalls is how many GET commands Redis has executed.
func visGetCalls(t *testing.T, r *redisServer) int64 {
	t.Helper()
	v := visRedisInfo(t, r, "commandstats", "cmdstat_get")
	m := regexp.MustCompile(`calls=(\d+)`).FindStringSubmatch(v)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

func visPurge(t *testing.T, c *caddyProc, body string) {
	t.Helper()
	code, out := c.Admin(http.MethodPost, "/redis_cache/purge", body)
	if code != http.StatusOK {
		t.Fatalf("admin purge %s: %d %s", body, code, out)
	}
}

// visStats is the JSON of GET /redis_cache/stats.
type visStats struct {
	Stores []struct {
		Namespace string         `json:"namespace"`
		Healthy   bool           `json:"healthy"`
		Info      map[string]any `json:"info"`
		LatencyMS *float64       `json:"latency_ms"`
		Routes    map[string]struct {
			Hits     int64   `json:"hits"`
			Misses   int64   `json:"misses"`
			Stale    int64   `json:"stale"`
			Skips    int64   `json:"skips"`
			HitRatio float64 `json:"hit_ratio"`
		} `json:"routes"`
		Local  map[string]any `json:"local_tier"`
		Copies map[string]any `json:"validated_copies"`
	} `json:"stores"`
}

func visGetStats(t *testing.T, c *caddyProc) (visStats, string) {
	t.Helper()
	code, body := c.Admin(http.MethodGet, "/redis_cache/stats", "")
	if code != http.StatusOK {
		t.Fatalf("GET /redis_cache/stats: %d %s", code, body)
	}
	var st visStats
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("stats is not the documented JSON: %v\n%s", err, body)
	}
	if len(st.Stores) != 1 {
		t.Fatalf("stats: %d stores, want 1: %s", len(st.Stores), body)
	}
	return st, body
}

func visNum(t *testing.T, label string, v any) float64 {
	t.Helper()
	switch n := v.(type) {
	case float64:
		return n
	case string:
		f, err := strconv.ParseFloat(n, 64)
		if err == nil {
			return f
		}
	}
	t.Fatalf("%s: %v (%T) is not a number", label, v, v)
	return 0
}

// ---------------------------------------------------------------------------
// 1. Prometheus metrics on Caddy's admin /metrics
// ---------------------------------------------------------------------------

// TestVisibilityMetrics runs a known sequence of requests, purges, a config
// reload and a Redis outage, and checks every caddy_redis_cache_* series
// against it: exact request counts by route and result, purges by kind,
// store latency histograms, store errors, upstream fetch latency, bytes
// stored and the breaker gauge. No `metrics` global option is set: the
// module's collectors must appear on the admin endpoint by themselves.
func TestVisibilityMetrics(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	block := fmt.Sprintf(`		redis %s
		breaker 3 1s
		route content /api/content* 5m {
			tags content
		}
		route user /api/user/* 5m {
			key {http.request.header.X-User-Id}
		}`, r.URL())
	c := startCaddy(t, integSite(u, block))

	tally := visTally{}
	get := func(route, wantXC, path string, headers ...string) (*http.Response, string) {
		t.Helper()
		resp, body := c.Get(path, headers...)
		tally.add(route, resp)
		if resp.StatusCode != 200 || (wantXC != "" && resp.Header.Get("X-Cache") != wantXC) {
			t.Fatalf("GET %s %v: %d X-Cache=%q (%q), want 200 %s", path, headers, resp.StatusCode,
				resp.Header.Get("X-Cache"), resp.Header.Get("Cache-Status"), wantXC)
		}
		return resp, body
	}

	// Bytes stored: after every stored miss, the counter grows by exactly
	// the size of the value written to Redis.
	storedBytes := map[string]float64{}
	waitStored := func(route, keyPattern string) {
		t.Helper()
		var keys []string
		var got float64
		ok := harnessWaitUntil(5*time.Second, func() bool {
			keys = r.Keys(keyPattern)
			got = visValue(t, visScrape(t, c), "caddy_redis_cache_stored_bytes_total", "route", route)
			return len(keys) == 1 && got > storedBytes[route]
		})
		if !ok {
			t.Fatalf("stored miss on %s: keys %v, stored_bytes_total %g (before %g)", route, keys, got, storedBytes[route])
		}
		if want := storedBytes[route] + float64(visStrlen(t, r, keys[0])); got != want {
			t.Fatalf("stored_bytes_total{route=%q} = %g, want %g (previous total + STRLEN of %s)", route, got, want, keys[0])
		}
		storedBytes[route] = got
	}

	const secretUser = "user-4242-secret"
	const secretPath = "/api/user/profile-7f3a9"
	const secretToken = "tok-9b1e77"

	// MISS, HIT, HIT.
	_, missBody := get("content", "MISS", "/api/content/a")
	waitStored("content", "rcache:content:*")
	for i := 0; i < 2; i++ {
		if _, b := get("content", "HIT", "/api/content/a"); b != missBody {
			t.Fatalf("HIT body %q, want %q", b, missBody)
		}
	}
	// SKIP: a Cookie on a route whose key carries no identity.
	get("content", "SKIP", "/api/content/a", "Cookie: session="+secretToken)
	// A POST (SKIP) purges the route.
	req, _ := c.NewRequest(http.MethodPost, "/api/content/a", strings.NewReader(`{}`), "Content-Type: application/json")
	resp, _ := c.Do(req)
	tally.add("content", resp)
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "SKIP" {
		t.Fatalf("POST: %d X-Cache=%q", resp.StatusCode, resp.Header.Get("X-Cache"))
	}
	get("content", "MISS", "/api/content/a")
	waitStored("content", "rcache:content:*")
	// A per-user route, with a user id and a path that must never become
	// label values.
	get("user", "MISS", secretPath, "X-User-Id: "+secretUser)
	waitStored("user", "rcache:user:*")
	get("user", "HIT", secretPath, "X-User-Id: "+secretUser)
	// Admin purges by route and by tag; each makes the next GET a MISS.
	visPurge(t, c, `{"route":"content"}`)
	get("content", "MISS", "/api/content/a")
	waitStored("content", "rcache:content:*")
	visPurge(t, c, `{"tag":"content"}`)
	get("content", "MISS", "/api/content/a")
	waitStored("content", "rcache:content:*")

	// What the fixed sequence must have produced.
	wantTally := visTally{
		"content": {"miss": 4, "hit": 2, "skip": 2},
		"user":    {"miss": 1, "hit": 1},
	}
	if fmt.Sprint(tally) != fmt.Sprint(wantTally) {
		t.Fatalf("clients saw X-Cache %v, want %v", tally, wantTally)
	}
	m := visScrape(t, c)
	if len(visOurs(m)) == 0 {
		t.Fatalf("admin /metrics has no caddy_redis_cache_* series")
	}
	tally.checkRequests(t, "after the sequence", m)
	for kind, want := range map[string]float64{"mutation": 1, "route": 1, "tag": 1, "key": 0, "pattern": 0, "all": 0} {
		if got := visValue(t, m, "caddy_redis_cache_purges_total", "kind", kind); got != want {
			t.Errorf("purges_total{kind=%q} = %g, want %g", kind, got, want)
		}
	}
	// Every store operation is observed: at least a read per lookup (6
	// content + 2 user), a write per stored miss and a generation bump per
	// purge (an implementation may add operations, e.g. epoch checks).
	for op, want := range map[string]float64{"get": 8, "set": 5, "bump": 3} {
		if got := visHistogram(t, m, "caddy_redis_cache_store_duration_seconds", "op", op); got < want {
			t.Errorf("store_duration_seconds_count{op=%q} = %g, want at least %g\n%s", op, got, want, visDump(m))
		}
	}
	storeOps, _ := visFind(m, "caddy_redis_cache_store_duration_seconds_count")
	if v, _ := visFind(m, "caddy_redis_cache_store_errors_total"); v != 0 {
		t.Errorf("store_errors_total = %g before any outage\n%s", v, visDump(m))
	}
	// Upstream fetch latency is observed once per cache miss that went to
	// the upstream (SKIPs bypass the cache and are not timed).
	for route, want := range map[string]float64{"content": 4, "user": 1} {
		if got := visHistogram(t, m, "caddy_redis_cache_upstream_duration_seconds", "route", route); got != want {
			t.Errorf("upstream_duration_seconds_count{route=%q} = %g, want %g (misses)", route, got, want)
		}
	}
	if got, want := u.Total(), 4+1+2; got != want {
		t.Errorf("upstream saw %d requests, want %d (5 misses + 2 skips)", got, want)
	}
	if got := visValue(t, m, "caddy_redis_cache_breaker_open", "store", "redis"); got != 0 {
		t.Errorf("breaker_open{store=redis} = %g while Redis is up", got)
	}
	if _, n := visFind(m, "caddy_redis_cache_breaker_open", "store", "redis"); n != 1 {
		t.Errorf("breaker_open{store=redis}: %d series, want 1 (the gauge exists from the start)", n)
	}

	// The metrics survive a config reload: nothing is reset, and counting
	// goes on in the same series.
	before := visOurs(m)
	if err := c.Reload(integSite(u, block+"\n\t\troute extra /api/extra* 1m")); err != nil {
		t.Fatalf("reload: %v", err)
	}
	after := visScrape(t, c)
	for _, s := range before {
		if strings.HasSuffix(s.name, "_bucket") || strings.HasSuffix(s.name, "_sum") || strings.HasSuffix(s.name, "_count") ||
			s.name == "caddy_redis_cache_breaker_open" {
			continue
		}
		kv := make([]string, 0, 2*len(s.labels))
		for k, v := range s.labels {
			kv = append(kv, k, v)
		}
		if got := visValue(t, after, s.name, kv...); got != s.value {
			t.Errorf("after reload: %s = %g, want %g (counters must not reset)", s, got, s.value)
		}
	}
	if got, _ := visFind(after, "caddy_redis_cache_store_duration_seconds_count"); got < storeOps {
		t.Errorf("after reload: store_duration_seconds_count totals %g, was %g before (histograms must not reset)", got, storeOps)
	}
	get("content", "HIT", "/api/content/a")
	tally.checkRequests(t, "after reload and a HIT", visScrape(t, c))

	// Outage: Redis dies, requests SKIP, the breaker opens.
	r.Kill()
	for i := 0; i < 6; i++ {
		get("content", "SKIP", "/api/content/a")
	}
	if !harnessWaitUntil(5*time.Second, func() bool {
		return visValue(t, visScrape(t, c), "caddy_redis_cache_breaker_open", "store", "redis") == 1
	}) {
		t.Fatalf("breaker_open{store=redis} never became 1 after Redis died\n%s", visDump(visScrape(t, c)))
	}
	m = visScrape(t, c)
	if v, _ := visFind(m, "caddy_redis_cache_store_errors_total"); v < 3 {
		t.Errorf("store_errors_total = %g after an outage that opened a 3-failure breaker, want >= 3\n%s", v, visDump(m))
	}
	if v := visValue(t, m, "caddy_redis_cache_store_errors_total", "op", "get"); v < 1 {
		t.Errorf("store_errors_total{op=get} = %g, want > 0", v)
	}
	tally.checkRequests(t, "during the outage", m)
	if got := visHistogram(t, m, "caddy_redis_cache_upstream_duration_seconds", "route", "content"); got != 4 {
		t.Errorf("upstream_duration_seconds_count{route=content} = %g during the outage, want 4 (SKIPs are not misses)", got)
	}

	// Recovery: caching resumes by itself and the gauge returns to 0.
	r.Restart()
	if !harnessWaitUntil(15*time.Second, func() bool {
		resp, _ := get("content", "", "/api/content/a")
		return resp.Header.Get("X-Cache") == "MISS"
	}) {
		t.Fatalf("caching did not resume after Redis came back")
	}
	waitStored("content", "rcache:content:*")
	m = visScrape(t, c)
	if got := visValue(t, m, "caddy_redis_cache_breaker_open", "store", "redis"); got != 0 {
		t.Errorf("breaker_open{store=redis} = %g after recovery, want 0", got)
	}
	tally.checkRequests(t, "after recovery", m)
	if got, want := visHistogram(t, m, "caddy_redis_cache_upstream_duration_seconds", "route", "content"), float64(tally["content"]["miss"]); got != want {
		t.Errorf("upstream_duration_seconds_count{route=content} = %g, want %g (one per miss)", got, want)
	}
	t.Logf("clients saw %v; store errors %v", tally, func() float64 { v, _ := visFind(m, "caddy_redis_cache_store_errors_total"); return v }())

	// Labels are bounded: route names, fixed result and kind names,
	// operation names and store kinds, never keys, paths or users.
	allowed := map[string]map[string]bool{
		"route":   {"content": true, "user": true, "extra": true},
		"result":  {"hit": true, "miss": true, "stale": true, "skip": true},
		"kind":    {"mutation": true, "route": true, "tag": true, "key": true, "pattern": true, "all": true},
		"store":   {"redis": true, "redis-cluster": true, "redis-sentinel": true, "memory": true},
		"outcome": {copyUnchanged: true, copyReplaced: true, copyGone: true},
	}
	opName := regexp.MustCompile(`^[a-z]{2,16}$`) // operation names are code, not data
	ours := visOurs(m)
	for _, s := range ours {
		for k, v := range s.labels {
			for _, secret := range []string{secretUser, "4242", "profile", "7f3a9", "tok-", "/", "rcache", ":"} {
				if strings.Contains(v, secret) {
					t.Errorf("series %s: label %s=%q contains %q (a key, path or user)", s, k, v, secret)
				}
			}
			if k == "le" {
				if _, err := strconv.ParseFloat(v, 64); err != nil {
					t.Errorf("series %s: le=%q", s, v)
				}
				continue
			}
			if k == "op" {
				if !opName.MatchString(v) {
					t.Errorf("series %s: op=%q is not an operation name", s, v)
				}
				continue
			}
			if vals, ok := allowed[k]; !ok || !vals[v] {
				t.Errorf("series %s: label %s=%q is not one of the bounded label values", s, k, v)
			}
		}
	}
	t.Logf("%d caddy_redis_cache_* series, all labels bounded", len(ours))
}

// ---------------------------------------------------------------------------
// 2. Admin stats and health
// ---------------------------------------------------------------------------

// TestVisibilityStats checks GET /redis_cache/stats (per-route counts and
// hit ratio, store health, Redis memory figures, the local tier's size) and
// GET /redis_cache/health through a Redis outage.
func TestVisibilityStats(t *testing.T) {
	t.Parallel()
	r := startRedis(t, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
	u := newUpstream(t)
	block := fmt.Sprintf(`		redis %s
		breaker 3 1s
		local_cache 16MiB
		route content /api/content* 5m
		route feed /api/feed* 2s {
			stale_while_revalidate 1m
		}
		route idle /api/idle* 1m`, r.URL())
	c := startCaddy(t, integSite(u, block))

	st, raw := visGetStats(t, c)
	s := st.Stores[0]
	if !s.Healthy || s.Namespace != "rcache" {
		t.Fatalf("fresh stats: %s", raw)
	}
	for _, name := range []string{"content", "feed", "idle"} {
		rs, ok := s.Routes[name]
		if !ok || rs.Hits+rs.Misses+rs.Stale+rs.Skips != 0 || rs.HitRatio != 0 {
			t.Fatalf("fresh stats: route %s = %+v (present %v): %s", name, rs, ok, raw)
		}
	}

	tally := visTally{}
	get := func(route, wantXC, path string, headers ...string) string {
		t.Helper()
		resp, body := c.Get(path, headers...)
		tally.add(route, resp)
		if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != wantXC {
			t.Fatalf("GET %s: %d X-Cache=%q (%q), want 200 %s", path, resp.StatusCode,
				resp.Header.Get("X-Cache"), resp.Header.Get("Cache-Status"), wantXC)
		}
		return body
	}
	waitKey := func(pattern string) {
		t.Helper()
		if !harnessWaitUntil(5*time.Second, func() bool { return len(r.Keys(pattern)) > 0 }) {
			t.Fatalf("no key %s was stored", pattern)
		}
	}

	// content: MISS HIT HIT SKIP(Cookie) SKIP(POST) MISS HIT.
	get("content", "MISS", "/api/content/s")
	waitKey("rcache:content:*")
	get("content", "HIT", "/api/content/s")
	get("content", "HIT", "/api/content/s")
	get("content", "SKIP", "/api/content/s", "Cookie: session=x")
	req, _ := c.NewRequest(http.MethodPost, "/api/content/s", strings.NewReader("{}"))
	resp, _ := c.Do(req)
	tally.add("content", resp)
	get("content", "MISS", "/api/content/s")
	if !harnessWaitUntil(5*time.Second, func() bool { return u.Calls("GET", "/api/content/s") == 3 }) {
		t.Fatal("second content miss did not reach the upstream")
	}
	time.Sleep(100 * time.Millisecond) // let the store write land
	get("content", "HIT", "/api/content/s")

	// feed: MISS, then once past its 2s TTL a STALE (refreshed in the
	// background), then a HIT on the refreshed entry.
	get("feed", "MISS", "/api/feed")
	waitKey("rcache:feed:*")
	time.Sleep(2200 * time.Millisecond)
	get("feed", "STALE", "/api/feed")
	if !harnessWaitUntil(5*time.Second, func() bool { return u.Calls("GET", "/api/feed") == 2 }) {
		t.Fatal("the stale feed entry was not refreshed in the background")
	}
	var fresh bool
	harnessWaitUntil(3*time.Second, func() bool {
		resp, _ := c.Get("/api/feed")
		if resp.Header.Get("X-Cache") == "HIT" {
			tally.add("feed", resp)
			fresh = true
			return true
		}
		tally.add("feed", resp) // still STALE: the refresh has not landed yet
		return false
	})
	if !fresh {
		t.Fatalf("refreshed feed entry never served as a HIT; clients saw %v", tally)
	}
	if tally["feed"]["stale"] != 1 {
		t.Logf("note: the refresh took a moment to land; feed STALE count %d", tally["feed"]["stale"])
	}

	want := map[string][4]int64{ // hits, misses, stale, skips
		"content": {3, 2, 0, 2},
		"feed":    {int64(tally["feed"]["hit"]), 1, int64(tally["feed"]["stale"]), 0},
		"idle":    {0, 0, 0, 0},
	}
	if tally["content"]["hit"] != 3 || tally["content"]["miss"] != 2 || tally["content"]["skip"] != 2 || tally["feed"]["miss"] != 1 {
		t.Fatalf("clients saw %v", tally)
	}
	st, raw = visGetStats(t, c)
	s = st.Stores[0]
	for name, w := range want {
		rs := s.Routes[name]
		got := [4]int64{rs.Hits, rs.Misses, rs.Stale, rs.Skips}
		if got != w {
			t.Errorf("stats route %s: hits/misses/stale/skips = %v, want %v (what clients saw)\n%s", name, got, w, raw)
		}
		wantRatio := 0.0
		if lookups := w[0] + w[1] + w[2]; lookups > 0 {
			wantRatio = float64(w[0]+w[2]) / float64(lookups)
		}
		if math.Abs(rs.HitRatio-wantRatio) > 1e-9 {
			t.Errorf("stats route %s: hit_ratio %v, want %v ((hits+stale)/(hits+misses+stale))", name, rs.HitRatio, wantRatio)
		}
	}

	// Store health and Redis memory, as Redis itself reports them.
	if !s.Healthy {
		t.Errorf("stats: store unhealthy while Redis is up: %s", raw)
	}
	if s.Info == nil {
		t.Fatalf("stats: no store info: %s", raw)
	}
	if p := s.Info["maxmemory_policy"]; p != "allkeys-lru" {
		t.Errorf("stats: maxmemory_policy %v, want allkeys-lru: %s", p, raw)
	}
	if mm := visNum(t, "maxmemory", s.Info["maxmemory"]); mm != 64<<20 {
		t.Errorf("stats: maxmemory %v, want %d", s.Info["maxmemory"], 64<<20)
	}
	used := visNum(t, "used_memory", s.Info["used_memory"])
	direct, _ := strconv.ParseFloat(visRedisInfo(t, r, "memory", "used_memory"), 64)
	if used <= 0 || math.Abs(used-direct) > 0.25*direct {
		t.Errorf("stats: used_memory %g, Redis says %g", used, direct)
	}
	if k := s.Info["kind"]; k != "redis" {
		t.Errorf("stats: kind %v, want redis", k)
	}
	// Store latency: one round trip, within the stats call's 1s bound.
	if s.LatencyMS == nil || *s.LatencyMS <= 0 || *s.LatencyMS >= 1000 {
		t.Errorf("stats: latency_ms %v, want the duration of a store round trip: %s", s.LatencyMS, raw)
	}

	// The local tier's size: two hot entries (content and feed).
	if s.Local == nil {
		t.Fatalf("stats: no local_tier with local_cache set: %s", raw)
	}
	entries := visNum(t, "local entries", s.Local["entries"])
	bytes := visNum(t, "local bytes", s.Local["bytes"])
	if entries != 2 || bytes <= 0 || bytes > 16<<20 {
		t.Errorf("stats: local_tier entries %g bytes %g, want 2 entries of some bytes: %s", entries, bytes, raw)
	}
	if l := visNum(t, "local limit", s.Local["limit"]); l != 16<<20 {
		t.Errorf("stats: local_tier limit %g, want %d", l, 16<<20)
	}
	visPurge(t, c, `{"pattern":"*"}`)
	st, raw = visGetStats(t, c)
	if e, b := visNum(t, "entries", st.Stores[0].Local["entries"]), visNum(t, "bytes", st.Stores[0].Local["bytes"]); e != 0 || b != 0 {
		t.Errorf("after a purge of everything: local_tier entries %g bytes %g, want 0 0: %s", e, b, raw)
	}

	// Health: 200 while Redis is up, 503 once the breaker opens, 200 again
	// after Redis returns.
	code, hb := c.Admin(http.MethodGet, "/redis_cache/health", "")
	if code != 200 || !strings.Contains(hb, `"healthy":true`) {
		t.Fatalf("health while Redis is up: %d %s", code, hb)
	}
	r.Kill()
	var downCode int
	if !harnessWaitUntil(10*time.Second, func() bool {
		resp, _ := c.Get("/api/idle/x")
		tally.add("idle", resp)
		if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "SKIP" {
			t.Fatalf("GET during the outage: %d X-Cache=%q", resp.StatusCode, resp.Header.Get("X-Cache"))
		}
		downCode, hb = c.Admin(http.MethodGet, "/redis_cache/health", "")
		return downCode == http.StatusServiceUnavailable
	}) {
		t.Fatalf("health never answered 503 while Redis was dead: %d %s", downCode, hb)
	}
	var health struct {
		Healthy bool `json:"healthy"`
		Stores  []struct {
			Kind    string `json:"kind"`
			Healthy bool   `json:"healthy"`
		} `json:"stores"`
	}
	if err := json.Unmarshal([]byte(hb), &health); err != nil || health.Healthy || len(health.Stores) != 1 || health.Stores[0].Healthy || health.Stores[0].Kind != "redis" {
		t.Errorf("health while Redis is dead: %s (%v)", hb, err)
	}
	st, raw = visGetStats(t, c)
	if st.Stores[0].Healthy {
		t.Errorf("stats while Redis is dead: healthy: %s", raw)
	}
	if got, want := st.Stores[0].Routes["idle"].Skips, int64(tally["idle"]["skip"]); got != want || want < 3 {
		t.Errorf("stats while Redis is dead: idle skips %d, clients saw %d", got, want)
	}
	r.Restart()
	if !harnessWaitUntil(15*time.Second, func() bool {
		resp, _ := c.Get("/api/idle/y")
		tally.add("idle", resp)
		code, hb = c.Admin(http.MethodGet, "/redis_cache/health", "")
		return resp.Header.Get("X-Cache") == "MISS" && code == 200
	}) {
		t.Fatalf("health after Redis returned: %d %s", code, hb)
	}
	if !strings.Contains(hb, `"healthy":true`) {
		t.Errorf("health after Redis returned: %s", hb)
	}
	st, raw = visGetStats(t, c)
	rs := st.Stores[0].Routes["idle"]
	if !st.Stores[0].Healthy || rs.Skips != int64(tally["idle"]["skip"]) || rs.Misses != int64(tally["idle"]["miss"]) || rs.Hits != 0 {
		t.Errorf("stats after recovery: %+v, clients saw %v: %s", rs, tally["idle"], raw)
	}
	if p := st.Stores[0].Info["maxmemory_policy"]; p != "allkeys-lru" {
		t.Errorf("stats after recovery: maxmemory_policy %v", p)
	}

	// Across a config reload: observed and reported, not asserted (the
	// issue asks only the Prometheus metrics to survive reloads).
	beforeReload := st.Stores[0].Routes["content"]
	if err := c.Reload(integSite(u, block+"\n\t\troute extra /api/extra* 1m")); err != nil {
		t.Fatalf("reload: %v", err)
	}
	st, raw = visGetStats(t, c)
	afterReload := st.Stores[0].Routes["content"]
	t.Logf("stats route content before reload %+v, after reload %+v", beforeReload, afterReload)
	if afterReload != beforeReload {
		t.Logf("NOTE: per-route stats do not survive a config reload (the Prometheus counters do)")
	}
}

// ---------------------------------------------------------------------------
// 3. Local tier coherence across two instances
// ---------------------------------------------------------------------------

// TestVisibilityLocalTierCoherence runs two Caddy instances with
// `local_cache` on one Redis, warms an entry on both (B then serves it from
// its local tier without asking Redis), purges on A in every way, and checks
// that A serves fresh data at once and B within the documented bound
// (pub/sub delivery; at most 1s should a notice be lost). B is polled
// continuously from before each purge, to measure when it turned fresh.
// Notices are also lost on purpose: right after a Redis restart (B's
// subscription is down), and while an ACL forbids the purge channel.
func TestVisibilityLocalTierCoherence(t *testing.T) {
	t.Parallel()
	// AOF so that entries and generations survive the restart below.
	r := startRedis(t, "--appendonly", "yes", "--appendfsync", "always")
	u := newUpstream(t)
	// /api/user/lost answers user-nostore with no-store: such a request is
	// looked up in Redis every time and never kept, like any uncached
	// variant of a hot URL.
	var lostSeq atomic.Int64
	u.Handle("/api/user/lost", func(w http.ResponseWriter, r *http.Request) {
		user := r.Header.Get("X-User-Id")
		if user == "user-nostore" {
			w.Header().Set("Cache-Control", "no-store")
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"user":%q,"seq":%d}`, r.URL.Path, user, lostSeq.Add(1))
	})
	block := fmt.Sprintf(`		redis %s
		breaker 3 1s
		local_cache 16MiB
		route content /api/content* 5m {
			tags content
		}
		route user /api/user/* 5m {
			key {http.request.header.X-User-Id}
		}`, r.URL())
	a := startCaddy(t, integSite(u, block))
	b := startCaddy(t, integSite(u, block))

	const bound = time.Second

	// Both instances must see one Host, as behind a load balancer: the
	// host is part of every key.
	const sameHost = "Host: 127.0.0.1"
	getEOn := func(c *caddyProc, path string, headers ...string) (*http.Response, string, error) {
		return c.GetE(path, append([]string{sameHost}, headers...)...)
	}
	getOn := func(c *caddyProc, path string, headers ...string) (*http.Response, string) {
		t.Helper()
		resp, body, err := getEOn(c, path, headers...)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp, body
	}
	redisDo := func(args ...any) any {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		v, err := r.Client().Do(ctx, args...).Result()
		if err != nil {
			t.Fatalf("redis %v: %v", args, err)
		}
		return v
	}
	subscribers := func() int {
		list, _ := redisDo("CLIENT", "LIST", "TYPE", "pubsub").(string)
		return len(strings.Fields(strings.ReplaceAll(list, " ", "_")))
	}
	if !harnessWaitUntil(10*time.Second, func() bool { return subscribers() == 2 }) {
		t.Fatalf("the two instances did not subscribe to purge notices: %d subscribers", subscribers())
	}

	// warm makes path cached on both instances with one body and returns it
	// and the entry's key.
	warm := func(path, keyPattern string, headers ...string) (string, string) {
		t.Helper()
		before := map[string]bool{}
		for _, k := range r.Keys(keyPattern) {
			before[k] = true
		}
		resp, body := getOn(a, path, headers...)
		if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "MISS" {
			t.Fatalf("warm %s on A: %d X-Cache=%q (%q)", path, resp.StatusCode, resp.Header.Get("X-Cache"), resp.Header.Get("Cache-Status"))
		}
		var key string
		if !harnessWaitUntil(5*time.Second, func() bool {
			for _, k := range r.Keys(keyPattern) {
				if !before[k] {
					key = k
					return true
				}
			}
			return false
		}) {
			t.Fatalf("warm %s: no new key among %v", path, r.Keys(keyPattern))
		}
		for _, c := range []*caddyProc{a, b, b} {
			resp, got := getOn(c, path, headers...)
			if resp.Header.Get("X-Cache") != "HIT" || got != body {
				t.Fatalf("warm %s: X-Cache=%q body %q, want HIT %q", path, resp.Header.Get("X-Cache"), got, body)
			}
		}
		return body, key
	}
	clean := func() {
		t.Helper()
		visPurge(t, a, `{"all":true}`)
		if !harnessWaitUntil(2*time.Second, func() bool { return len(r.Keys("rcache:[a-z]*")) == 0 }) {
			t.Fatalf("entries left after a purge of everything: %v", r.Keys("rcache:[a-z]*"))
		}
	}

	// B's hits come from its local tier: no GET reaches Redis. A generation
	// value is trusted for 1s, so B reads Redis once, then serves locally.
	body, _ := warm("/api/content/x", "rcache:content:*")
	calls := u.Calls("GET", "/api/content/x")
	local := false
	for attempt := 0; attempt < 5 && !local; attempt++ {
		if resp, got := getOn(b, "/api/content/x"); resp.Header.Get("X-Cache") != "HIT" || got != body {
			t.Fatalf("B: %q %q", resp.Header.Get("X-Cache"), got)
		}
		before := visGetCalls(t, r)
		for i := 0; i < 5; i++ {
			if resp, got := getOn(b, "/api/content/x"); resp.Header.Get("X-Cache") != "HIT" || got != body {
				t.Fatalf("B: %q %q", resp.Header.Get("X-Cache"), got)
			}
		}
		local = visGetCalls(t, r) == before
	}
	if !local {
		t.Fatalf("B's hits all went to Redis: the local tier served nothing")
	}
	if n := u.Calls("GET", "/api/content/x") - calls; n != 0 {
		t.Fatalf("upstream called %d times for hits", n)
	}

	// propagation polls B continuously from before purge() is called until
	// B serves a body other than old (a sibling request, if given, is sent
	// to B before each poll). It fails if B serves old in a request sent
	// more than the bound after the purge returned, or if A (asked the
	// moment the purge returned) or either instance later serves old.
	type probe struct {
		sent, recv time.Time
		stale      bool
	}
	type result struct {
		kind                         string
		took                         time.Duration // the purge call
		lastStale, firstFresh        time.Duration // since the purge was issued
		staleAfterReturn, totalPolls int
	}
	var results []result
	propagation := func(kind, path, old string, purge func(), sibling []string, headers ...string) {
		t.Helper()
		var mu sync.Mutex
		var probes []probe
		var pollErr error
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if sibling != nil {
					if _, _, err := getEOn(b, sibling[0], sibling[1:]...); err != nil {
						mu.Lock()
						pollErr = err
						mu.Unlock()
						return
					}
				}
				sent := time.Now()
				resp, got, err := getEOn(b, path, headers...)
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
				mu.Lock()
				if err != nil {
					pollErr = err
					mu.Unlock()
					return
				}
				probes = append(probes, probe{sent, time.Now(), got == old})
				mu.Unlock()
			}
		}()
		time.Sleep(30 * time.Millisecond) // B is being polled before the purge
		issued := time.Now()
		purge()
		returned := time.Now()
		aBody := make(chan string, 1)
		go func() {
			_, got, err := getEOn(a, path, headers...)
			if err != nil {
				got = "error: " + err.Error()
			}
			aBody <- got
		}()
		freshSeen := func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, p := range probes {
				if !p.stale && p.sent.After(returned) {
					return true
				}
			}
			return pollErr != nil
		}
		deadline := returned.Add(bound + 2*time.Second)
		for !freshSeen() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		close(stop)
		<-done
		if pollErr != nil {
			t.Fatalf("%s: polling B: %v", kind, pollErr)
		}
		res := result{kind: kind, took: returned.Sub(issued), lastStale: -1, firstFresh: -1, totalPolls: len(probes)}
		var worst time.Duration
		for _, p := range probes {
			if p.stale {
				res.lastStale = p.sent.Sub(issued)
				if p.sent.After(returned) {
					res.staleAfterReturn++
					worst = max(worst, p.sent.Sub(returned))
				}
			} else if res.firstFresh < 0 && p.sent.After(issued) {
				res.firstFresh = p.recv.Sub(issued)
			}
		}
		results = append(results, res)
		if worst > bound || !freshSeen() {
			var trace []string
			for i, p := range probes {
				if i == 0 || p.stale != probes[i-1].stale || i == len(probes)-1 {
					trace = append(trace, fmt.Sprintf("#%d sent %+v stale=%v", i, p.sent.Sub(issued).Round(time.Millisecond), p.stale))
				}
			}
			t.Logf("%s: purge issued at +0, returned at +%v; B's answers (changes only): %s",
				kind, returned.Sub(issued).Round(time.Millisecond), strings.Join(trace, "; "))
			t.Fatalf("%s: B served the purged body in a request sent %v after the purge returned (bound %v; %d stale of %d polls; fresh seen: %v)",
				kind, worst.Round(time.Millisecond), bound, res.staleAfterReturn, res.totalPolls, freshSeen())
		}
		if got := <-aBody; got == old || strings.HasPrefix(got, "error: ") {
			t.Fatalf("%s: A answered %q right after its own purge returned; want fresh data", kind, integShort(got))
		}
		// The old body never comes back on either instance.
		for i := 0; i < 10; i++ {
			for name, c := range map[string]*caddyProc{"A": a, "B": b} {
				if _, got := getOn(c, path, headers...); got == old {
					t.Fatalf("%s: %s served the purged body again after fresh data", kind, name)
				}
			}
		}
	}
	adminPurge := func(body string) func() {
		return func() { visPurge(t, a, body) }
	}

	// A POST on A.
	old, _ := warm("/api/content/m", "rcache:content:*")
	propagation("POST", "/api/content/m", old, func() {
		req, _ := a.NewRequest(http.MethodPost, "/api/content/m", strings.NewReader("{}"), sameHost)
		if resp, _ := a.Do(req); resp.StatusCode != 200 {
			t.Errorf("POST on A: %d", resp.StatusCode)
		}
	}, nil)

	// Admin purges on A: route, tag, key, pattern, all.
	for _, kind := range []string{"route", "tag", "key", "pattern", "all"} {
		path, pattern := "/api/content/"+kind, "rcache:content:*"
		var headers []string
		if kind == "pattern" {
			path, pattern = "/api/user/"+kind, "rcache:user:user-123:*"
			headers = []string{"X-User-Id: user-123"}
		}
		clean()
		old, key := warm(path, pattern, headers...)
		// Another user's entry, warm on B, that the pattern must not touch.
		var other string
		if kind == "pattern" {
			other, _ = warm("/api/user/pattern", "rcache:user:user-456:*", "X-User-Id: user-456")
		}
		body := map[string]string{
			"route":   `{"route":"content"}`,
			"tag":     `{"tag":"content"}`,
			"key":     fmt.Sprintf(`{"key":%q}`, key),
			"pattern": `{"pattern":"*:user-123:*"}`,
			"all":     `{"all":true}`,
		}[kind]
		propagation(kind, path, old, adminPurge(body), nil, headers...)
		if kind == "pattern" {
			resp, got := getOn(b, "/api/user/pattern", "X-User-Id: user-456")
			if resp.Header.Get("X-Cache") != "HIT" || got != other {
				t.Fatalf("pattern purge of user-123 touched user-456 on B: %q %q, want HIT %q", resp.Header.Get("X-Cache"), got, other)
			}
		}
	}

	// Redis restarts; a purge on A right after the restart may be
	// published while B's subscription is still down, so B must rely on
	// its resubscription (which clears the tier) or on the 1s trust bound.
	clean()
	old, _ = warm("/api/content/restart", "rcache:content:*")
	r.Kill()
	r.Restart()
	// B's local tier may serve what it holds for up to its 1 s trust bound.
	time.Sleep(1100 * time.Millisecond)
	// B reads Redis again (its generations become trusted anew). The entry
	// survived the restart (AOF), but a restart may have lost purges (the
	// last second of an AOF, an older snapshot), so the first connection
	// to the new server invalidated the namespace: the entry is fetched
	// again, once, and then served by both instances.
	if !harnessWaitUntil(10*time.Second, func() bool {
		resp, got := getOn(b, "/api/content/restart")
		if resp.Header.Get("X-Cache") == "HIT" && got == old {
			t.Fatalf("after restart: B served the entry stored before the restart %q", got)
		}
		if resp.Header.Get("X-Cache") == "HIT" {
			old = got
			return true
		}
		return false
	}) {
		t.Fatalf("B never served an entry from the restarted Redis")
	}
	propagation("route right after a Redis restart", "/api/content/restart", old, func() {
		var last string
		if !harnessWaitUntil(10*time.Second, func() bool {
			code, out := a.Admin(http.MethodPost, "/redis_cache/purge", `{"route":"content"}`)
			last = fmt.Sprintf("%d %s", code, out)
			return code == http.StatusOK
		}) {
			t.Errorf("purge on A after the restart: %s", last)
		}
	}, nil)
	if !harnessWaitUntil(10*time.Second, func() bool { return subscribers() == 2 }) {
		t.Fatalf("the instances did not resubscribe after the restart: %d subscribers", subscribers())
	}

	// Notices lost for good: an ACL forbids the purge channel, so the
	// instances are unsubscribed and A's PUBLISH fails, while data commands
	// work. Only the documented 1s bound protects B now. Meanwhile B keeps
	// looking up a variant of the same URL that is never stored, which
	// reads the URL's generations from Redis all the time.
	clean()
	redisDo("ACL", "SETUSER", "default", "resetchannels")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Client().Do(ctx, "ACL", "SETUSER", "default", "allchannels").Err()
	})
	if !harnessWaitUntil(5*time.Second, func() bool { return subscribers() == 0 }) {
		t.Fatalf("instances still subscribed under the ACL: %d", subscribers())
	}
	sibling := []string{"/api/user/lost", "X-User-Id: user-nostore"}
	for _, kind := range []string{"route", "key"} {
		clean()
		time.Sleep(bound + 100*time.Millisecond) // B's generations from before expire
		old, key := warm("/api/user/lost", "rcache:user:user-123:*", "X-User-Id: user-123")
		body := map[string]string{
			"route": `{"route":"user"}`,
			"key":   fmt.Sprintf(`{"key":%q}`, key),
		}[kind]
		propagation(kind+" with notices lost", "/api/user/lost", old, adminPurge(body), sibling, "X-User-Id: user-123")
	}
	// Observed, not asserted: whether the instances subscribe again once the
	// ACL allows it (go-redis keeps a pub/sub connection whose SUBSCRIBE got
	// an error reply; the tier then relies on the 1s bound alone).
	redisDo("ACL", "SETUSER", "default", "allchannels")
	resubscribed := harnessWaitUntil(3*time.Second, func() bool { return subscribers() == 2 })
	t.Logf("after the ACL allowed the channel again: %d of 2 instances subscribed within 3s", subscribers())
	if !resubscribed {
		// The bound still holds without notices: a route purge on A is seen
		// by B within 1s.
		old, _ := warm("/api/content/unsubscribed", "rcache:content:*")
		propagation("route while unsubscribed", "/api/content/unsubscribed", old, adminPurge(`{"route":"content"}`), nil)
	}

	for _, res := range results {
		if res.lastStale < 0 {
			res.lastStale = 0
		}
		t.Logf("local tier, %s purge on A (call took %v): B last stale at +%v, first fresh answer at +%v after the purge was issued; %d stale answers to requests sent after it returned, %d polls",
			res.kind, res.took.Round(10*time.Microsecond), res.lastStale.Round(10*time.Microsecond),
			res.firstFresh.Round(10*time.Microsecond), res.staleAfterReturn, res.totalPolls)
	}
}

// ---------------------------------------------------------------------------
// 4. Grafana dashboard and metrics documentation
// ---------------------------------------------------------------------------

// visMetricLabels returns every metric the module defines, with its
// variable labels, from the collectors themselves.
func visMetricLabels(t *testing.T) map[string][]string {
	t.Helper()
	descRE := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	out := map[string][]string{}
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range newHandlerMetrics().collectors() {
			c.Describe(ch)
		}
		close(ch)
	}()
	for d := range ch {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s", d)
		}
		var labels []string
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
		out[m[1]] = labels
	}
	if len(out) < 8 {
		t.Fatalf("only %d metrics described: %v", len(out), out)
	}
	return out
}

// TestVisibilityGrafanaDashboard checks grafana/redis_cache_dashboard.json:
// valid JSON, a Prometheus datasource variable, the required panels, and
// queries that use only metrics and labels the module exports.
func TestVisibilityGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile("grafana/redis_cache_dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title         string  `json:"title"`
		UID           string  `json:"uid"`
		SchemaVersion float64 `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         float64        `json:"id"`
			Title      string         `json:"title"`
			Type       string         `json:"type"`
			GridPos    map[string]int `json:"gridPos"`
			Datasource struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || dash.SchemaVersion < 36 || dash.SchemaVersion > 41 {
		t.Fatalf("dashboard title %q uid %q schemaVersion %v", dash.Title, dash.UID, dash.SchemaVersion)
	}
	dsVar := ""
	vars := map[string]bool{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = v.Name
		}
	}
	if dsVar == "" {
		t.Fatalf("no Prometheus datasource variable in templating: %+v", dash.Templating.List)
	}

	metrics := visMetricLabels(t)
	nameRE := regexp.MustCompile(`caddy_redis_cache_[a-z_]+`)
	selectorRE := regexp.MustCompile(`\{([^}]*)\}`)
	matcherRE := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	byRE := regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	varRE := regexp.MustCompile(`\$\{?([a-zA-Z_][a-zA-Z0-9_]*)`)
	targetLabels := map[string]bool{"instance": true, "job": true}
	resultValues := map[string]bool{"hit": true, "miss": true, "stale": true, "skip": true}

	ids := map[float64]bool{}
	var all []string
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %v missing or duplicated", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos["w"] == 0 || p.GridPos["h"] == 0 {
			t.Errorf("panel %q: no gridPos", p.Title)
		}
		if p.Datasource.Type != "prometheus" || p.Datasource.UID != "${"+dsVar+"}" {
			t.Errorf("panel %q: datasource %+v, want the ${%s} variable", p.Title, p.Datasource, dsVar)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no queries", p.Title)
		}
		for _, tg := range p.Targets {
			e := tg.Expr
			all = append(all, p.Title+": "+e)
			if tg.RefID == "" {
				t.Errorf("panel %q: target without refId", p.Title)
			}
			if strings.Count(e, "(") != strings.Count(e, ")") || strings.Count(e, "{") != strings.Count(e, "}") {
				t.Errorf("panel %q: unbalanced query %s", p.Title, e)
			}
			for _, m := range varRE.FindAllStringSubmatch(e, -1) {
				if !vars[m[1]] && !strings.HasPrefix(m[1], "__") {
					t.Errorf("panel %q: query uses undefined variable $%s", p.Title, m[1])
				}
			}
			names := nameRE.FindAllString(e, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %s uses no caddy_redis_cache_* metric", p.Title, e)
			}
			labelsOK := map[string]bool{}
			for k := range targetLabels {
				labelsOK[k] = true
			}
			for _, n := range names {
				base := n
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if b, ok := strings.CutSuffix(n, suffix); ok {
						if _, hist := metrics[b]; hist {
							base = b
							if suffix == "_bucket" {
								labelsOK["le"] = true
							}
						}
					}
				}
				labels, ok := metrics[base]
				if !ok {
					t.Errorf("panel %q: metric %s does not exist in metrics.go", p.Title, n)
				}
				for _, l := range labels {
					labelsOK[l] = true
				}
			}
			for _, sel := range selectorRE.FindAllStringSubmatch(e, -1) {
				for _, m := range matcherRE.FindAllStringSubmatch(sel[1], -1) {
					if !labelsOK[m[1]] {
						t.Errorf("panel %q: selector label %q is not a label of %v", p.Title, m[1], names)
					}
					if m[1] == "result" && !strings.Contains(m[3], "$") {
						for _, v := range strings.Split(m[3], "|") {
							if !resultValues[v] {
								t.Errorf("panel %q: result value %q is never exported", p.Title, v)
							}
						}
					}
				}
			}
			for _, m := range byRE.FindAllStringSubmatch(e, -1) {
				for _, l := range strings.Split(m[1], ",") {
					if l = strings.TrimSpace(l); l != "" && !labelsOK[l] {
						t.Errorf("panel %q: aggregation label %q is not a label of %v", p.Title, l, names)
					}
				}
			}
		}
	}
	joined := strings.Join(all, "\n")
	required := []struct{ what, re string }{
		{"request rate by result", `rate\(caddy_redis_cache_requests_total[^\n]*by \(result\)|by \(result\)[^\n]*rate\(caddy_redis_cache_requests_total`},
		{"hit ratio by route", `by \(route\)[^\n]*caddy_redis_cache_requests_total\{[^}]*result=~"hit\|stale"[^\n]*/`},
		{"store latency p50", `histogram_quantile\(0\.5,[^\n]*caddy_redis_cache_store_duration_seconds_bucket`},
		{"store latency p99", `histogram_quantile\(0\.99,[^\n]*caddy_redis_cache_store_duration_seconds_bucket`},
		{"store errors rate", `rate\(caddy_redis_cache_store_errors_total`},
		{"purges by kind", `by \(kind\)[^\n]*caddy_redis_cache_purges_total`},
		{"upstream latency p99 by route", `histogram_quantile\(0\.99, sum by \(le, route\)[^\n]*caddy_redis_cache_upstream_duration_seconds_bucket`},
		{"bytes stored rate", `rate\(caddy_redis_cache_stored_bytes_total`},
		{"breaker state", `caddy_redis_cache_breaker_open`},
	}
	for _, req := range required {
		if !regexp.MustCompile(req.re).MatchString(joined) {
			t.Errorf("dashboard has no %s panel (no query matching %s)", req.what, req.re)
		}
	}
	if t.Failed() {
		t.Logf("queries:\n%s", joined)
	}
}

// TestVisibilityMetricsDoc checks that docs/metrics.md documents every
// metric the module exports, with its type and labels.
func TestVisibilityMetricsDoc(t *testing.T) {
	raw, err := os.ReadFile("docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	for name, labels := range visMetricLabels(t) {
		i := strings.Index(doc, "`"+name+"`")
		if i < 0 {
			t.Errorf("docs/metrics.md does not document %s", name)
			continue
		}
		// The metric's table row names its labels.
		line := doc[i:]
		if j := strings.IndexByte(line, '\n'); j >= 0 {
			line = line[:j]
		}
		for _, l := range labels {
			if !strings.Contains(line, "`"+l+"`") {
				t.Errorf("docs/metrics.md: the line for %s does not name its label %q: %s", name, l, line)
			}
		}
	}
}
