package rediscache

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Integration tests of issue 15 (operator experience), through the real
// Caddy binary.

// opTagged makes u answer path with one tag field.
func opTagged(u *upstream, path, field, value string) {
	u.Handle(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set(field, value)
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	})
}

// opAdminPurge posts an admin purge and fails unless it answers 200.
func opAdminPurge(t *testing.T, c *caddyProc, body string) {
	t.Helper()
	if code, out := c.Admin("POST", "/redis_cache/purge", body); code != 200 {
		t.Fatalf("admin purge %s: %d %s", body, code, out)
	}
}

func opExpect(t *testing.T, c *caddyProc, label, path, xcache string, headers ...string) *http.Response {
	t.Helper()
	resp, body := c.Get(path, headers...)
	integExpect(t, label, resp, body, 200, xcache)
	return resp
}

// Surrogate-Key (spaces), Cache-Tag (commas) and X-Cache-Tags tag entries by
// default and never reach clients; tags_header replaces the set. On the old
// code, Surrogate-Key and Cache-Tag reached the client and their tag purges
// purged nothing.
func TestOperatorTagHeaders(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	opTagged(u, "/api/content/sk", "Surrogate-Key", "alpha  beta")
	opTagged(u, "/api/content/ct", "Cache-Tag", "gamma, delta")
	opTagged(u, "/api/content/xt", "X-Cache-Tags", "eps")
	c := startCaddy(t, integSite(u, integRedis(r)+"\n\t\troute content /api/content* 5m"))
	paths := []string{"/api/content/sk", "/api/content/ct", "/api/content/xt"}
	for _, p := range paths {
		integMissThenHit(t, c, u, p)
		resp, _ := c.Get(p)
		for _, f := range []string{"Surrogate-Key", "Cache-Tag", "X-Cache-Tags"} {
			if v := resp.Header.Values(f); len(v) > 0 {
				t.Fatalf("GET %s: client received %s: %q", p, f, v)
			}
		}
	}
	opAdminPurge(t, c, `{"tag":"beta"}`)
	opExpect(t, c, "sk after purge of tag beta", "/api/content/sk", "MISS")
	opExpect(t, c, "ct after purge of tag beta", "/api/content/ct", "HIT")
	opAdminPurge(t, c, `{"tag":"delta"}`)
	opExpect(t, c, "ct after purge of tag delta", "/api/content/ct", "MISS")
	opExpect(t, c, "xt after purge of tag delta", "/api/content/xt", "HIT")
	opAdminPurge(t, c, `{"tag":"eps"}`)
	opExpect(t, c, "xt after purge of tag eps", "/api/content/xt", "MISS")

	// tags_header with one name keeps its old meaning: that field alone.
	if err := c.Reload(integSite(u, integRedis(r)+"\n\t\tnamespace other\n\t\ttags_header X-Mine\n\t\troute content /api/content* 5m")); err != nil {
		t.Fatal(err)
	}
	opTagged(u, "/api/content/mine", "X-Mine", "m1")
	integMissThenHit(t, c, u, "/api/content/mine")
	resp := opExpect(t, c, "sk with tags_header X-Mine", "/api/content/sk", "MISS")
	if resp.Header.Get("Surrogate-Key") != "alpha  beta" {
		t.Fatalf("with tags_header X-Mine, Surrogate-Key %q, want it passed through", resp.Header.Get("Surrogate-Key"))
	}
	if resp := opExpect(t, c, "mine", "/api/content/mine", "HIT"); resp.Header.Get("X-Mine") != "" {
		t.Fatalf("X-Mine reached the client: %q", resp.Header.Get("X-Mine"))
	}
	opAdminPurge(t, c, `{"tag":"m1"}`)
	opExpect(t, c, "mine after purge", "/api/content/mine", "MISS")
}

// PURGE is answered by the module for the clients its matchers allow, 403
// for others, and never forwarded. On the old code it was forwarded to the
// upstream as a mutation.
func TestOperatorPurgeMethod(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	opTagged(u, "/api/content/t", "Surrogate-Key", "grp")
	c := startCaddy(t, integSite(u, integRedis(r)+`
		purge_method PURGE {
			header X-Purge-Token s3cret
		}
		route content /api/content* 5m`))
	for _, p := range []string{"/api/content/a", "/api/content/b", "/api/content/t", "/api/content/q?x=1"} {
		integMissThenHit(t, c, u, p)
	}
	purge := func(path string, headers ...string) (*http.Response, map[string]any) {
		t.Helper()
		resp, body := integDo(t, c, "PURGE", path, headers...)
		var out map[string]any
		if resp.StatusCode == 200 {
			if err := json.Unmarshal([]byte(body), &out); err != nil {
				t.Fatalf("PURGE %s: body %q is not JSON: %v", path, body, err)
			}
		}
		return resp, out
	}

	if resp, _ := purge("/api/content/a"); resp.StatusCode != 403 {
		t.Fatalf("PURGE without the token: %d, want 403", resp.StatusCode)
	}
	if resp, _ := purge("/api/content/a", "X-Purge-Token: wrong", "Surrogate-Key: grp"); resp.StatusCode != 403 {
		t.Fatalf("PURGE with a wrong token: %d, want 403", resp.StatusCode)
	}
	opExpect(t, c, "a after refused purges", "/api/content/a", "HIT")
	opExpect(t, c, "t after refused purges", "/api/content/t", "HIT")

	resp, out := purge("/api/content/a", "X-Purge-Token: s3cret")
	if resp.StatusCode != 200 || out["kind"] != "uri" || !strings.HasSuffix(fmt.Sprint(out["uri"]), "/api/content/a") {
		t.Fatalf("PURGE /api/content/a: %d %v", resp.StatusCode, out)
	}
	opExpect(t, c, "a after PURGE", "/api/content/a", "MISS")
	opExpect(t, c, "b after PURGE of a", "/api/content/b", "HIT")
	opExpect(t, c, "q after PURGE of a", "/api/content/q?x=1", "HIT")
	if resp, _ := purge("/api/content/q?x=1", "X-Purge-Token: s3cret"); resp.StatusCode != 200 {
		t.Fatalf("PURGE with a query: %d", resp.StatusCode)
	}
	opExpect(t, c, "q after its PURGE", "/api/content/q?x=1", "MISS")

	resp, out = purge("/", "X-Purge-Token: s3cret", "Surrogate-Key: grp other")
	if resp.StatusCode != 200 || out["kind"] != "tag" || fmt.Sprint(out["tags"]) != "[grp other]" {
		t.Fatalf("PURGE with Surrogate-Key: %d %v", resp.StatusCode, out)
	}
	opExpect(t, c, "t after tag PURGE", "/api/content/t", "MISS")
	opExpect(t, c, "b after tag PURGE", "/api/content/b", "HIT")

	// Outside every route, still answered here.
	if resp, _ := purge("/elsewhere", "X-Purge-Token: s3cret"); resp.StatusCode != 200 {
		t.Fatalf("PURGE outside the routes: %d", resp.StatusCode)
	}
	u.mu.Lock()
	forwarded := 0
	for k, n := range u.calls {
		if strings.HasPrefix(k, "PURGE ") {
			forwarded += n
		}
	}
	u.mu.Unlock()
	if forwarded != 0 {
		t.Fatalf("%d PURGE requests reached the upstream", forwarded)
	}
}

// A tag template in invalidates purges one user's entries in one write. On
// the old code the configuration was rejected ("invalidates unknown route").
func TestOperatorInvalidatesTag(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, integSite(u, integRedis(r)+`
		route dash /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
			tags user:{http.request.header.X-User-Id}
		}
		route content /api/content* 5m
		route campaigns /api/campaigns* 2m {
			invalidates content tag:user:{http.request.header.X-User-Id}
		}`))
	for _, user := range []string{"u1", "u2"} {
		integMissThenHit(t, c, u, "/api/dashboard", "X-User-Id: "+user)
	}
	integMissThenHit(t, c, u, "/api/content/x")

	post := func(headers ...string) {
		t.Helper()
		if resp, body := integDo(t, c, "POST", "/api/campaigns", headers...); resp.StatusCode != 200 {
			t.Fatalf("POST /api/campaigns: %d %s", resp.StatusCode, body)
		}
	}
	// Without the header the template is empty: no tag is purged.
	post()
	opExpect(t, c, "u1 after an anonymous POST", "/api/dashboard", "HIT", "X-User-Id: u1")
	opExpect(t, c, "u2 after an anonymous POST", "/api/dashboard", "HIT", "X-User-Id: u2")
	opExpect(t, c, "content after a POST (named route)", "/api/content/x", "MISS")

	post("X-User-Id: u1")
	opExpect(t, c, "u1 after u1's POST", "/api/dashboard", "MISS", "X-User-Id: u1")
	opExpect(t, c, "u2 after u1's POST", "/api/dashboard", "HIT", "X-User-Id: u2")
	opExpect(t, c, "u1 again", "/api/dashboard", "HIT", "X-User-Id: u1")

	// A failed mutation purges nothing.
	u.Handle("/api/campaigns", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	if resp, _ := integDo(t, c, "POST", "/api/campaigns", "X-User-Id: u2"); resp.StatusCode != 500 {
		t.Fatalf("failing POST: %d", resp.StatusCode)
	}
	opExpect(t, c, "u2 after a failed POST", "/api/dashboard", "HIT", "X-User-Id: u2")
}

// Configuration mistakes of the new options fail caddy validate and adapt,
// naming the line.
func TestOperatorBadConfig(t *testing.T) {
	t.Parallel()
	const up = "\treverse_proxy 127.0.0.1:9"
	// harnessCaddyfile puts the site body's first line at line 13.
	lineOf := func(site, needle string) int { return strings.Count(site[:strings.Index(site, needle)], "\n") + 13 }
	cases := []struct {
		name, block, needle string
		want                []string
		forbid              string
	}{
		{"invalidates unknown route names its line", "\t\troute a /a 5m {\n\t\t\tttl 1m\n\t\t\tinvalidates b ghost\n\t\t\tstale_if_error 1m\n\t\t}\n\t\troute b /b 5m", "invalidates",
			[]string{`invalidates unknown route "ghost"`}, ""},
		{"bad invalidates item", "\t\troute a /a 5m {\n\t\t\tinvalidates tag:\n\t\t}", "invalidates", []string{`"tag:"`}, ""},
		{"redis URL that does not parse", "\t\tredis redis://:s3cretpw@127.0.0.1:notaport/0\n\t\troute a /a 5m", "redis redis", []string{"redis", "invalid port"}, "s3cretpw"},
		{"redis URL with a bad database", "\t\tredis redis://u:s3cretpw@127.0.0.1:6379/abc\n\t\troute a /a 5m", "redis redis", []string{"redis", "database"}, "s3cretpw"},
		{"purge_method without matchers", "\t\tpurge_method PURGE\n\t\troute a /a 5m", "purge_method", []string{"purge_method", "matcher block"}, ""},
		{"purge_method GET", "\t\tpurge_method GET {\n\t\t\tremote_ip 10.0.0.0/8\n\t\t}\n\t\troute a /a 5m", "purge_method", []string{"purge_method", `"GET"`}, ""},
	}
	sem := make(chan struct{}, 3)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sem <- struct{}{}
			defer func() { <-sem }()
			site := "\tredis_cache {\n" + tc.block + "\n\t}\n" + up
			want := append(tc.want, fmt.Sprintf("Caddyfile:%d", lineOf(site, tc.needle)))
			_, verr := caddyValidate(t, site)
			_, aerr := caddyAdapt(t, site)
			if verr == nil || aerr == nil {
				t.Fatalf("accepted (validate err %v, adapt err %v):\n%s", verr, aerr, site)
			}
			for _, w := range want {
				for _, msg := range []string{integUnescape(verr.Error()), integUnescape(aerr.Error())} {
					if !strings.Contains(msg, w) {
						t.Errorf("error does not name %q:\n%s", w, msg)
					}
					if tc.forbid != "" && strings.Contains(msg, tc.forbid) {
						t.Errorf("error reveals %q:\n%s", tc.forbid, msg)
					}
				}
			}
		})
	}
	t.Run("valid purge_method and tag invalidation", func(t *testing.T) {
		t.Parallel()
		sem <- struct{}{}
		defer func() { <-sem }()
		site := "\tredis_cache {\n\t\tpurge_method PURGE {\n\t\t\tremote_ip 10.0.0.0/8 127.0.0.1/32\n\t\t}\n\t\ttags_header Surrogate-Key Cache-Tag\n\t\troute a /a 5m {\n\t\t\tinvalidates b tag:user:{http.request.header.X-User-Id}\n\t\t}\n\t\troute b /b 5m\n\t}\n" + up
		if out, err := caddyValidate(t, site); err != nil || !strings.Contains(out, "Valid configuration") {
			t.Fatalf("valid config rejected: %v\n%s", err, out)
		}
	})
}

// /redis_cache/health and /stats say whether Redis answers now, before any
// traffic and without it; go-redis's own log lines go through zap. On the
// old code, health said healthy before any traffic with Redis unreachable.
func TestOperatorHealth(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	health := func(c *caddyProc) (int, map[string]any) {
		t.Helper()
		code, body := c.Admin("GET", "/redis_cache/health", "")
		var out map[string]any
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatalf("health body %q: %v", body, err)
		}
		return code, out
	}
	waitHealth := func(c *caddyProc, label string, want int) {
		t.Helper()
		var code int
		var out map[string]any
		if !harnessWaitUntil(10*time.Second, func() bool { code, out = health(c); return code == want }) {
			t.Fatalf("%s: health %d %v, want %d within 10s", label, code, out, want)
		}
	}

	t.Run("unreachable from the start", func(t *testing.T) {
		t.Parallel()
		for _, url := range []string{fmt.Sprintf("redis://127.0.0.1:%d", freePort(t)), "redis://no-such-host.invalid:6379"} {
			c := startCaddy(t, integSite(u, "\t\tredis "+url+"\n\t\troute content /api/content* 5m"))
			// No request has gone through the cache.
			code, out := health(c)
			if code != 503 || out["healthy"] != false {
				t.Fatalf("%s, no traffic: health %d %v, want 503 unhealthy", url, code, out)
			}
			_, stats := c.Admin("GET", "/redis_cache/stats", "")
			if !strings.Contains(stats, `"healthy":false`) || strings.Contains(stats, `"healthy":true`) {
				t.Fatalf("%s: stats %s, want healthy false", url, stats)
			}
			// Requests still succeed.
			resp, body := c.Get("/api/content/x")
			integExpect(t, "GET with Redis unreachable", resp, body, 200, "SKIP")
			time.Sleep(1500 * time.Millisecond) // a few probes and dial failures
			for _, line := range strings.Split(c.Logs(), "\n") {
				if strings.Contains(line, "redis: ") && !strings.HasPrefix(strings.TrimSpace(line), "{") {
					t.Fatalf("%s: a log line not through zap: %s", url, line)
				}
			}
			if n := integCount(c, "redis health probe: no answer"); n != 1 {
				t.Errorf("%s: %d probe warnings, want 1 (a state change, not one per probe)", url, n)
			}
			c.Stop()
		}
	})

	t.Run("follows Redis without traffic", func(t *testing.T) {
		t.Parallel()
		r := startRedis(t)
		c := startCaddy(t, integSite(u, integRedis(r)+"\n\t\troute content /api/content* 5m"))
		waitHealth(c, "redis up", 200)
		r.Kill()
		waitHealth(c, "redis killed", 503)
		r.Restart()
		waitHealth(c, "redis restarted", 200)
		if !c.WaitForLog("PING answered again", 5*time.Second) {
			t.Fatalf("no recovery line in the log")
		}
	})
}

// ignore_query and key_query drop parameters from the key and from what the
// upstream receives. On the old code the options did not exist.
func TestOperatorQueryNormalisation(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, integSite(u, integRedis(r)+`
		route content /api/content* 5m {
			ignore_query utm_* gclid
			purge uri
		}
		route plat /api/plat* 5m {
			key_query platform
		}`))
	get := func(path, xcache, wantQuery string) {
		t.Helper()
		resp, body := c.Get(path)
		integExpect(t, "GET "+path, resp, body, 200, xcache)
		if b := integBody(t, path, body); b.Query != wantQuery {
			t.Fatalf("GET %s: the upstream saw query %q, want %q", path, b.Query, wantQuery)
		}
	}
	get("/api/content/a?utm_source=x&id=1", "MISS", "id=1")
	get("/api/content/a?id=1&utm_medium=y&gclid=z", "HIT", "id=1")
	get("/api/content/a?id=2&utm_source=x", "MISS", "id=2")
	get("/api/plat?platform=ios&foo=1", "MISS", "platform=ios")
	get("/api/plat?bar=2&platform=ios", "HIT", "platform=ios")
	get("/api/plat?platform=android", "MISS", "platform=android")

	// A mutation's target URI is normalised the same way.
	if resp, _ := integDo(t, c, "POST", "/api/content/a?id=1&utm_source=q"); resp.StatusCode != 200 {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	get("/api/content/a?id=1", "MISS", "id=1")
	if q := u.LastHeaders("POST", "/api/content/a"); q == nil {
		t.Fatalf("POST did not reach the upstream")
	}
}

// The admin API shows what is stored for a URL, lists a route's keys and
// counts entries and Redis commands. On the old code none of it existed.
func TestOperatorInspection(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, integSite(u, integRedis(r)+`
		route dash /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
			tags user:{http.request.header.X-User-Id}
		}
		route content /api/content* 5m {
			stale_while_revalidate 1m
		}`))
	integMissThenHit(t, c, u, "/api/content/a")
	integMissThenHit(t, c, u, "/api/content/b")
	integMissThenHit(t, c, u, "/api/dashboard", "X-User-Id: u1")

	type entryJSON struct {
		Key         string              `json:"key"`
		Route       string              `json:"route"`
		Status      int                 `json:"status"`
		Headers     map[string][]string `json:"headers"`
		BodyBytes   int                 `json:"body_bytes"`
		TTL         int                 `json:"ttl_s"`
		SWR         int                 `json:"stale_while_revalidate_s"`
		Tags        []string            `json:"tags"`
		Servable    bool                `json:"servable"`
		Fresh       bool                `json:"fresh"`
		Store       string              `json:"store"`
		Generations []struct {
			Key   string `json:"key"`
			Valid bool   `json:"valid"`
		} `json:"generations"`
	}
	entry := func(label, path string, headers ...string) (int, entryJSON, string) {
		t.Helper()
		q := "url=" + url.QueryEscape(c.BaseURL+path)
		for _, h := range headers {
			q += "&header=" + url.QueryEscape(h)
		}
		code, body := c.Admin("GET", "/redis_cache/entry?"+q, "")
		var out struct {
			Entries []entryJSON `json:"entries"`
		}
		if code == 200 {
			if err := json.Unmarshal([]byte(body), &out); err != nil || len(out.Entries) != 1 {
				t.Fatalf("%s: entry body %s (%v)", label, body, err)
			}
			return code, out.Entries[0], body
		}
		return code, entryJSON{}, body
	}

	code, e, body := entry("content a", "/api/content/a")
	if code != 200 || e.Route != "content" || !strings.HasPrefix(e.Key, "rcache:content:") || e.Status != 200 ||
		e.BodyBytes == 0 || e.TTL < 200 || e.SWR != 60 || !e.Servable || !e.Fresh || e.Store == "" || len(e.Generations) < 3 {
		t.Fatalf("entry for /api/content/a: %d %s", code, body)
	}
	if code, _, body := entry("content missing", "/api/content/none"); code != 404 {
		t.Fatalf("entry for an unstored URL: %d %s, want 404", code, body)
	}
	if code, _, body := entry("dash without identity", "/api/dashboard"); code != 404 {
		t.Fatalf("entry for the dashboard without X-User-Id: %d %s, want 404", code, body)
	}
	code, d, body := entry("dash u1", "/api/dashboard", "X-User-Id: u1")
	if code != 200 || d.Route != "dash" || len(d.Tags) != 1 || !strings.Contains(d.Tags[0], "u1") || !d.Servable {
		t.Fatalf("entry for u1's dashboard: %d %s", code, body)
	}
	opAdminPurge(t, c, `{"tag":"user:u1"}`)
	code, d, body = entry("dash u1 after its tag purge", "/api/dashboard", "X-User-Id: u1")
	invalid := 0
	for _, g := range d.Generations {
		if !g.Valid {
			invalid++
		}
	}
	if code != 200 || d.Servable || invalid != 1 {
		t.Fatalf("entry after the tag purge: %d %s, want still stored, not servable, one generation no longer current", code, body)
	}

	// keys: bounded listing, with size and TTL.
	type keysJSON struct {
		Stores []struct {
			Keys []struct {
				Key   string  `json:"key"`
				Bytes int64   `json:"bytes"`
				TTL   float64 `json:"ttl_s"`
			} `json:"keys"`
			Truncated bool `json:"truncated"`
		} `json:"stores"`
	}
	keys := func(q string) keysJSON {
		t.Helper()
		code, body := c.Admin("GET", "/redis_cache/keys?"+q, "")
		var out keysJSON
		if code != 200 || json.Unmarshal([]byte(body), &out) != nil || len(out.Stores) != 1 {
			t.Fatalf("keys?%s: %d %s", q, code, body)
		}
		return out
	}
	k := keys("route=content&limit=10")
	if got := k.Stores[0].Keys; len(got) != 2 || k.Stores[0].Truncated || got[0].Bytes <= 0 || got[0].TTL <= 0 ||
		(got[0].Key != e.Key && got[1].Key != e.Key) {
		t.Fatalf("keys of content: %+v, want 2 with size and TTL, one of them %s", k, e.Key)
	}
	if k := keys("route=content&limit=1"); len(k.Stores[0].Keys) != 1 || !k.Stores[0].Truncated {
		t.Fatalf("keys with limit 1: %+v", k)
	}
	if code, body := c.Admin("GET", "/redis_cache/keys?route=ghost", ""); code != 400 {
		t.Fatalf("keys of an unknown route: %d %s", code, body)
	}

	// The key found here is the one the admin key purge takes.
	opAdminPurge(t, c, fmt.Sprintf(`{"key":%q}`, e.Key))
	opExpect(t, c, "content a after its key purge", "/api/content/a", "MISS")

	_, stats := c.Admin("GET", "/redis_cache/stats", "")
	var st struct {
		Stores []struct {
			KeyCount int64 `json:"key_count"`
			Ops      struct {
				Ops        int64   `json:"operations"`
				PerRequest float64 `json:"operations_per_request"`
			} `json:"redis_operations"`
			Inflight map[string]int64 `json:"inflight_budget"`
		} `json:"stores"`
	}
	if err := json.Unmarshal([]byte(stats), &st); err != nil || len(st.Stores) != 1 {
		t.Fatalf("stats %s: %v", stats, err)
	}
	if s := st.Stores[0]; s.Ops.Ops == 0 || s.Ops.PerRequest <= 0 || s.Inflight["limit"] == 0 {
		t.Fatalf("stats: %s", stats)
	}
	t.Logf("stats: key_count %d (estimate), %.1f Redis operations per request", st.Stores[0].KeyCount, st.Stores[0].Ops.PerRequest)
}

// The README shows Caddyfile.example as it is, and the example listens on
// loopback only and names the secret in its runtime form. On the old code
// the README's snippet differed from the file, and the example listened on
// every interface.
func TestOperatorReadmeExample(t *testing.T) {
	t.Parallel()
	example, err := os.ReadFile(filepath.Join(harnessModuleRoot(), "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(harnessModuleRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```caddyfile\n"+string(example)+"```\n") {
		t.Errorf("README.md does not show Caddyfile.example verbatim in a caddyfile block")
	}
	text := string(example)
	if n := strings.Count(text, "\n\tbind 127.0.0.1"); n != 2 {
		t.Errorf("Caddyfile.example binds %d sites to 127.0.0.1, want both", n)
	}
	if strings.Contains(text, "{$REDIS_TOKEN}") || !strings.Contains(text, "{env.REDIS_TOKEN}") {
		t.Errorf("Caddyfile.example should name the token as {env.REDIS_TOKEN}")
	}
}

// A hot entry is refreshed in the background before it expires, so its
// readers keep getting hits; with refresh_ahead off, it expires into a
// miss. On the old code the option did not exist.
func TestOperatorRefreshAhead(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, integSite(u, integRedis(r)+`
		route hot /api/hot* 4s {
			force_ttl
			refresh_ahead 3s
		}
		route cold /api/cold* 4s {
			force_ttl
			refresh_ahead off
		}`))
	read := func(path string, d time.Duration) map[string]int {
		counts := map[string]int{}
		for start := time.Now(); time.Since(start) < d; time.Sleep(100 * time.Millisecond) {
			resp, _ := c.Get(path)
			counts[resp.Header.Get("X-Cache")]++
		}
		return counts
	}
	integMissThenHit(t, c, u, "/api/hot")
	hot := read("/api/hot", 7*time.Second)
	calls := u.Calls("GET", "/api/hot")
	// Within the 3s window before each expiry some 30 hits each draw a
	// refresh; one miss is allowed for a refresh that a starved machine
	// could not finish in time.
	if hot["MISS"] > 1 || calls < 2 {
		t.Fatalf("hot entry over 7s: X-Cache %v, %d upstream calls; want hits refreshed ahead (at most 1 miss, at least 2 calls)", hot, calls)
	}
	t.Logf("hot entry over 7s: %v, %d upstream calls", hot, calls)

	integMissThenHit(t, c, u, "/api/cold")
	cold := read("/api/cold", 5*time.Second)
	if cold["MISS"] == 0 {
		t.Fatalf("entry with refresh_ahead off over 5s: %v, want it to expire into a miss", cold)
	}
}

// /redis_cache/keys scans every master of a Cluster, and the key count
// estimate sums them.
func TestOperatorKeysCluster(t *testing.T) {
	t.Parallel()
	rc := startCluster(t)
	u := newUpstream(t)
	c := startCaddy(t, integSite(u, fmt.Sprintf(`		redis %s
		timeout 2s
		route content /api/content* 5m`, strings.Join(rc.URLs(), " "))))
	const n = 30
	for i := range n {
		integMissThenHit(t, c, u, fmt.Sprintf("/api/content/%d", i))
	}
	code, body := c.Admin("GET", "/redis_cache/keys?route=content&limit=1000", "")
	var out struct {
		Stores []struct {
			Keys []struct {
				Key string `json:"key"`
			} `json:"keys"`
		} `json:"stores"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &out) != nil || len(out.Stores) != 1 {
		t.Fatalf("keys: %d %s", code, body)
	}
	seen := map[string]bool{}
	for _, k := range out.Stores[0].Keys {
		seen[k.Key] = true
	}
	if len(seen) != n {
		t.Fatalf("keys listed %d distinct entry keys over the Cluster, want %d: %s", len(seen), n, body)
	}
	if direct := rc.Keys("rcache:content:*"); len(direct) != n {
		t.Fatalf("the Cluster holds %d entry keys, want %d", len(direct), n)
	}
}
