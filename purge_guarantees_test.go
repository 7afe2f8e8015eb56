package rediscache

// Issue 11: a purge blocks storing only for the answers it covers; a
// missing generation is unknown; an acknowledged purge is applied even when
// Redis stalls or dies; route purges follow 2xx answers only; coalescing
// survives aborted leaders, slow origins and cold starts. Every test runs
// through the real Caddy binary against real redis-server processes.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// pgOrigin answers with a body unique to each call, after ?sleep=<ms>, and
// with the tags ?tags= names.
func pgOrigin(u *upstream, paths ...string) {
	for _, p := range paths {
		u.Handle(p, func(w http.ResponseWriter, r *http.Request) {
			if ms, _ := strconv.Atoi(r.URL.Query().Get("sleep")); ms > 0 {
				select {
				case <-time.After(time.Duration(ms) * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
			if tags := r.URL.Query().Get("tags"); tags != "" {
				w.Header().Set("X-Cache-Tags", tags)
			}
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"path":%q,"user":%q,"n":%d}`, r.URL.Path, r.Header.Get("X-User-Id"), rfcSeq.Add(1))
		})
	}
}

// pgSameHost makes requests to several Caddys (on different ports) share
// their cache keys, as requests to one site behind several Caddys do.
const pgSameHost = "Host: 127.0.0.1"

// pgStores are the stores every guarantee is checked on.
func pgStores(t *testing.T, r *redisServer) map[string]string {
	return map[string]string{
		"redis":  "redis " + r.URL() + "\n\t\ttimeout 2s",
		"memory": "memory_limit 64MiB",
	}
}

const pgRoutes = `
		route dashboard /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
			tags user:{http.request.header.X-User-Id}
		}
		route campaigns /api/campaigns* 2m {
			invalidates dashboard
		}
		route content /api/content* 5m {
			purge uri
		}
		route tagged /api/tagged* 5m`

// pgGetAsync starts a GET and returns a function that waits for its answer.
func pgGetAsync(t *testing.T, c *caddyProc, path string, headers ...string) func() (*http.Response, string) {
	t.Helper()
	type result struct {
		resp *http.Response
		body string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, body, err := c.GetE(path, headers...)
		ch <- result{resp, body, err}
	}()
	return func() (*http.Response, string) {
		t.Helper()
		res := <-ch
		if res.err != nil {
			t.Fatalf("GET %s: %v", path, res.err)
		}
		return res.resp, res.body
	}
}

// pgPost sends a mutation and checks its status.
func pgPost(t *testing.T, c *caddyProc, path string, want int, headers ...string) {
	t.Helper()
	req, err := c.NewRequest(http.MethodPost, path, strings.NewReader("{}"), headers...)
	if err != nil {
		t.Fatal(err)
	}
	resp, body, err := c.DoE(req)
	if err != nil || resp.StatusCode != want {
		t.Fatalf("POST %s: %v %v %s, want %d", path, resp, err, body, want)
	}
}

func pgAdminPurge(t *testing.T, c *caddyProc, body string) {
	t.Helper()
	if code, out := c.Admin(http.MethodPost, "/redis_cache/purge", body); code != http.StatusOK {
		t.Fatalf("purge %s: %d %s", body, code, out)
	}
}

// pgInFlight runs a slow miss of path, does act while the upstream is
// computing the answer, and then reports whether the answer was stored: the
// next GET is a HIT with the same body.
func pgInFlight(t *testing.T, c *caddyProc, path string, act func(), headers ...string) bool {
	t.Helper()
	writes := pgWriteOutcomes(t, c)
	wait := pgGetAsync(t, c, path, headers...)
	time.Sleep(300 * time.Millisecond)
	act()
	first, body := wait()
	if first.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("GET %s: X-Cache %q, want MISS", path, first.Header.Get("X-Cache"))
	}
	// The store write follows the answer: wait until it was done or
	// refused, however busy the machine.
	if !harnessWaitUntil(10*time.Second, func() bool { return pgWriteOutcomes(t, c) > writes }) {
		t.Fatalf("GET %s: its store write never completed", path)
	}
	again, body2, err := c.GetE(path, headers...)
	if err != nil {
		t.Fatal(err)
	}
	return again.Header.Get("X-Cache") == "HIT" && body2 == body
}

// pgWriteOutcomes counts finished store writes, stored or refused, from
// the metrics.
func pgWriteOutcomes(t *testing.T, c *caddyProc) float64 {
	t.Helper()
	return sumSamples(t, metricLines(t, c, `caddy_redis_cache_store_duration_seconds_count{op="set"}`)) +
		sumSamples(t, metricLines(t, c, "caddy_redis_cache_unstored_total{"))
}

// Finding 1: a write anywhere used to stop every in-flight miss from being
// stored. Now a purge refuses only the writes it covers.
func TestPurgeBlocksOnlyWhatItCovers(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	for name, store := range pgStores(t, r) {
		t.Run(name, func(t *testing.T) {
			u := newUpstream(t)
			pgOrigin(u, "/api/dashboard", "/api/campaigns", "/api/content/1", "/api/content/2", "/api/tagged")
			c := startCaddy(t, "\tredis_cache {\n\t\t"+store+"\n\t\tnamespace pg"+name+pgRoutes+"\n\t}\n\treverse_proxy "+rfcHost(u))
			const slow = "?sleep=900"

			if !pgInFlight(t, c, "/api/dashboard"+slow, func() { pgPost(t, c, "/api/content/9", 200) }, "X-User-Id: u1") {
				t.Errorf("a POST to another route stopped the dashboard answer from being stored")
			}
			if !pgInFlight(t, c, "/api/content/1"+slow, func() { pgPost(t, c, "/api/content/2", 200) }) {
				t.Errorf("a POST to another URI of a purge-uri route stopped this URI's answer from being stored")
			}
			if !pgInFlight(t, c, "/api/tagged"+slow+"&tags=t1", func() { pgAdminPurge(t, c, `{"tag":"t2"}`) }) {
				t.Errorf("a purge of an unrelated tag stopped an answer from being stored")
			}
			if !pgInFlight(t, c, "/api/tagged"+slow+"&tags=t3&x=1", func() { pgAdminPurge(t, c, `{"pattern":"tagged:nothing:*"}`) }) {
				t.Errorf("a pattern purge that covers nothing stopped an answer from being stored")
			}

			// What a purge covers is still refused: the answer in flight may
			// predate it.
			if pgInFlight(t, c, "/api/dashboard"+slow+"&v=2", func() { pgPost(t, c, "/api/campaigns", 200) }, "X-User-Id: u2") {
				t.Errorf("a POST to a route that invalidates the dashboard did not stop the answer in flight from being stored")
			}
			if pgInFlight(t, c, "/api/tagged"+slow+"&tags=t4&y=1", func() { pgAdminPurge(t, c, `{"tag":"t4"}`) }) {
				t.Errorf("a purge of a tag the answer names, during its fetch, did not stop it from being stored")
			}
			if pgInFlight(t, c, "/api/tagged"+slow+"&z=1", func() { pgAdminPurge(t, c, `{"pattern":"tagged:*"}`) }) {
				t.Errorf("a pattern purge covering the answer in flight did not stop it from being stored")
			}
		})
	}
}

// Finding 2: a generation that Redis evicted read as "never purged", so
// entries stored before the purge came back.
func TestPurgeSurvivesLostGenerations(t *testing.T) {
	t.Parallel()
	t.Run("deleted", func(t *testing.T) {
		t.Parallel()
		e := rfcStart(t, "pgl", pgRoutes)
		pgOrigin(e.u, "/api/dashboard")
		_, before := e.get(t, "/api/dashboard", "X-User-Id: u1")
		if resp, b := e.get(t, "/api/dashboard", "X-User-Id: u1"); resp.Header.Get("X-Cache") != "HIT" || b != before {
			t.Fatalf("second GET: %s %q, want a HIT", resp.Header.Get("X-Cache"), b)
		}
		pgAdminPurge(t, e.c, `{"tag":"user:u1"}`)
		for _, k := range e.r.Keys("pgl:_g:t:*") {
			e.r.Client().Del(context.Background(), k) // as an eviction would
		}
		if resp, b := e.get(t, "/api/dashboard", "X-User-Id: u1"); b == before {
			t.Fatalf("after the tag purge and the loss of its generation: %s with the purged body", resp.Header.Get("X-Cache"))
		}
	})
	t.Run("evicted", func(t *testing.T) {
		t.Parallel()
		r := startRedis(t, "--maxmemory", "6mb", "--maxmemory-policy", "allkeys-lru")
		u := newUpstream(t)
		pgOrigin(u, "/api/dashboard")
		c := startCaddy(t, "\t"+rfcCacheBlock(r, "pge", pgRoutes)+"\n\treverse_proxy "+rfcHost(u))
		const users = 300
		purged := make(map[int]string, users)
		for i := range users {
			_, b, err := c.GetE("/api/dashboard", "X-User-Id: u"+strconv.Itoa(i))
			if err != nil {
				t.Fatal(err)
			}
			purged[i] = b
		}
		for i := range users {
			pgAdminPurge(t, c, fmt.Sprintf(`{"tag":"user:u%d"}`, i))
		}
		fill := r.Client()
		big := strings.Repeat("x", 8<<10)
		for i := 0; i < 2000; i++ {
			if err := fill.Set(context.Background(), fmt.Sprintf("filler:%d", i), big, 0).Err(); err != nil {
				break
			}
		}
		resurrected := 0
		for i := range users {
			resp, b, err := c.GetE("/api/dashboard", "X-User-Id: u"+strconv.Itoa(i))
			if err != nil {
				t.Fatal(err)
			}
			if b == purged[i] {
				resurrected++
				t.Logf("u%d: %s %s", i, resp.Header.Get("X-Cache"), resp.Header.Get("Cache-Status"))
			}
		}
		if resurrected > 0 {
			t.Fatalf("%d of %d tag-purged dashboards were served again after evictions", resurrected, users)
		}
	})
	t.Run("older-snapshot", func(t *testing.T) {
		t.Parallel()
		e := rfcStart(t, "pgs", pgRoutes)
		pgOrigin(e.u, "/api/dashboard")
		_, before := e.get(t, "/api/dashboard", "X-User-Id: u1")
		if err := e.r.Client().Save(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		pgAdminPurge(t, e.c, `{"tag":"user:u1"}`)
		e.r.Restart() // loads the snapshot taken before the purge
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, b, err := e.c.GetE("/api/dashboard", "X-User-Id: u1")
			if err == nil && b == before {
				t.Fatalf("after Redis came back from a snapshot older than the purge: %s with the purged body", resp.Header.Get("X-Cache"))
			}
			if err == nil && resp.Header.Get("X-Cache") != "SKIP" || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// Finding 3: a purge that failed during a Redis stall was logged and
// forgotten, so the old entry was served for the rest of its TTL.
func TestPurgeQueuedUntilRedisTakesIt(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	pgOrigin(u, "/api/dashboard", "/api/campaigns")
	block := "\tredis_cache {\n\t\tredis " + r.URL() + "\n\t\ttimeout 150ms\n\t\tnamespace pgq" + pgRoutes + "\n\t}\n\treverse_proxy " + rfcHost(u)
	a := startCaddy(t, block)
	b := startCaddy(t, block)
	a.Get("/api/dashboard", "X-User-Id: u1", pgSameHost)
	var old string
	for _, c := range []*caddyProc{a, b} {
		// The store write follows the answer.
		var last string
		if !harnessWaitUntil(5*time.Second, func() bool {
			resp, body := c.Get("/api/dashboard", "X-User-Id: u1", pgSameHost)
			last = resp.Header.Get("Cache-Status") + " " + body
			if old == "" && resp.Header.Get("X-Cache") == "HIT" {
				old = body
			}
			return resp.Header.Get("X-Cache") == "HIT" && body == old
		}) {
			t.Fatalf("before the stall: no HIT of one entry on both instances (last: %s, entry %s)", last, old)
		}
	}
	ctl := r.Client()
	if err := ctl.Do(context.Background(), "CLIENT", "PAUSE", 1500, "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	pgPost(t, a, "/api/campaigns", 200, pgSameHost)
	if resp, body := a.Get("/api/dashboard", "X-User-Id: u1", pgSameHost); body == old {
		t.Errorf("during the stall, the instance that acknowledged the purge served the purged entry (%s)", resp.Header.Get("X-Cache"))
	}
	if !strings.Contains(a.Logs(), "purges queued") {
		t.Errorf("no warning that a purge was queued; logs:\n%s", harnessTail(a.Logs(), 4000))
	}
	if m := resMetric(t, a, "caddy_redis_cache_purges_queued_total"); m < 1 {
		t.Errorf("caddy_redis_cache_purges_queued_total = %v, want ≥ 1", m)
	}
	time.Sleep(1500 * time.Millisecond) // the pause ends; the retry lands
	if !harnessWaitUntil(10*time.Second, func() bool { return strings.Contains(a.Logs(), "queued purges applied") }) {
		t.Fatalf("the queued purge was never applied; logs:\n%s", harnessTail(a.Logs(), 4000))
	}
	for name, c := range map[string]*caddyProc{"A": a, "B": b} {
		if resp, body := c.Get("/api/dashboard", "X-User-Id: u1", pgSameHost); body == old {
			t.Errorf("after the stall, instance %s served the purged entry (%s)", name, resp.Header.Get("X-Cache"))
		}
	}

	// Killed, with the purge acknowledged while Redis is gone, and back
	// from a snapshot holding the old entry.
	_, old = a.Get("/api/dashboard", "X-User-Id: u2", pgSameHost)
	if !harnessWaitUntil(5*time.Second, func() bool {
		resp, body := b.Get("/api/dashboard", "X-User-Id: u2", pgSameHost)
		return resp.Header.Get("X-Cache") == "HIT" && body == old
	}) {
		t.Fatalf("the second entry was never a HIT on B")
	}
	if err := ctl.Save(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	r.Kill()
	pgPost(t, a, "/api/campaigns", 200, pgSameHost)
	r.Restart()
	if !harnessWaitUntil(15*time.Second, func() bool { return strings.Count(a.Logs(), "queued purges applied") >= 2 }) {
		t.Fatalf("the purge queued while Redis was down was never applied; logs:\n%s", harnessTail(a.Logs(), 4000))
	}
	for name, c := range map[string]*caddyProc{"A": a, "B": b} {
		if resp, body := c.Get("/api/dashboard", "X-User-Id: u2", pgSameHost); body == old {
			t.Errorf("after the restart, instance %s served the purged entry (%s)", name, resp.Header.Get("X-Cache"))
		}
	}
}

// Finding 4: a redirect answering a mutation (say, to a login page) purged
// every route the mutation's route invalidates.
func TestPurgeRoutesOnlyOn2xx(t *testing.T) {
	t.Parallel()
	e := rfcStart(t, "pgr", pgRoutes)
	pgOrigin(e.u, "/api/dashboard")
	e.u.Handle("/api/campaigns", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			http.Redirect(w, r, "/login", http.StatusFound)
			return
		}
		fmt.Fprintf(w, "campaigns %d", rfcSeq.Add(1))
	})
	_, dash := e.get(t, "/api/dashboard", "X-User-Id: u1")
	_, camp := e.get(t, "/api/campaigns")
	pgPost(t, e.c, "/api/campaigns", http.StatusFound)
	if resp, b := e.get(t, "/api/dashboard", "X-User-Id: u1"); resp.Header.Get("X-Cache") != "HIT" || b != dash {
		t.Errorf("a 302 to a POST purged the routes it invalidates: dashboard %s", resp.Header.Get("X-Cache"))
	}
	if resp, b := e.get(t, "/api/campaigns"); b == camp {
		t.Errorf("a 302 to a POST did not invalidate its target URI (RFC 9111 §4.4): %s", resp.Header.Get("X-Cache"))
	}
}

// Finding 5a: when the client whose request went upstream went away, the
// upstream request was cancelled and every waiter fetched by itself.
func TestCoalescingSurvivesLeaderAbort(t *testing.T) {
	t.Parallel()
	e := rfcStart(t, "pgc", pgRoutes)
	pgOrigin(e.u, "/api/content/a")
	const path = "/api/content/a?sleep=1500"
	ctx, cancel := context.WithCancel(context.Background())
	req, err := e.c.NewRequest(http.MethodGet, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _, _ = e.c.DoE(req.WithContext(ctx)) }()
	time.Sleep(300 * time.Millisecond)
	const waiters = 30
	var wg sync.WaitGroup
	bodies := make([]string, waiters)
	for i := range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, b, err := e.c.GetE(path)
			if err == nil && resp.StatusCode == 200 {
				bodies[i] = b
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	cancel() // the first client goes away
	wg.Wait()
	for i, b := range bodies {
		if b == "" || b != bodies[0] {
			t.Fatalf("waiter %d got %q, waiter 0 %q: want one shared answer", i, b, bodies[0])
		}
	}
	if n := e.u.Calls(http.MethodGet, "/api/content/a"); n != 1 {
		t.Fatalf("upstream calls: %d, want 1 (the leader's client went away, its waiters must not fetch again)", n)
	}
}

// Finding 5b: an upstream slower than coalesce_wait was called once per
// waiter, within a Caddy and across Caddys.
func TestCoalescingOutlastsWait(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	pgOrigin(u, "/api/content/slow")
	block := "\tredis_cache {\n\t\tredis " + r.URL() + "\n\t\ttimeout 2s\n\t\tnamespace pgw\n\t\tcoalesce\n\t\tcoalesce_wait 300ms" + pgRoutes + "\n\t}\n\treverse_proxy " + rfcHost(u)
	a, b := startCaddy(t, block), startCaddy(t, block)
	const path = "/api/content/slow?sleep=1500"
	var wg sync.WaitGroup
	bodies := make([]string, 20)
	statuses := make([]string, 20)
	for i := range bodies {
		c := a
		if i%2 == 1 {
			c = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i > 1 {
				time.Sleep(100 * time.Millisecond)
			}
			resp, body, err := c.GetE(path, pgSameHost)
			if err == nil && resp.StatusCode == 200 {
				bodies[i] = body
				statuses[i] = resp.Header.Get("Cache-Status")
			}
		}()
	}
	wg.Wait()
	if n := u.Calls(http.MethodGet, "/api/content/slow"); n != 1 {
		t.Fatalf("upstream calls: %d, want 1 (an upstream slower than coalesce_wait is still shared); Cache-Status:\n%s", n, strings.Join(statuses, "\n"))
	}
	for i, body := range bodies {
		if body == "" || body != bodies[0] {
			t.Fatalf("request %d got %q, request 0 %q: want one shared answer", i, body, bodies[0])
		}
	}
}

// Finding 5c: a burst on freshly started Caddys lost lookups to their
// empty connection pools and each went upstream.
func TestCoalescingColdStart(t *testing.T) {
	t.Parallel()
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("REDISCACHE_COLD_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	r := startRedis(t)
	u := newUpstream(t)
	pgOrigin(u, "/api/content/cold")
	// A race-detector build on two busy cores can take longer than the
	// default 100 ms for a round trip; bench/cold_start.sh measures the
	// default with a normal build.
	block := "\tredis_cache {\n\t\tredis " + r.URL() + "\n\t\ttimeout 1s\n\t\tnamespace pgcold\n\t\tcoalesce" + pgRoutes + "\n\t}\n\treverse_proxy " + rfcHost(u)
	for round := range rounds {
		a, b := startCaddyWith(t, caddyOptions{LogLevel: os.Getenv("REDISCACHE_COLD_LOG")}, block), startCaddyWith(t, caddyOptions{LogLevel: os.Getenv("REDISCACHE_COLD_LOG")}, block)
		path := fmt.Sprintf("/api/content/cold?sleep=300&round=%d", round)
		u.Reset()
		var wg sync.WaitGroup
		var mu sync.Mutex
		statuses := map[string]int{}
		start := make(chan struct{})
		for i := range 200 {
			c := a
			if i%2 == 1 {
				c = b
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				resp, _, err := c.GetE(path, pgSameHost)
				status := fmt.Sprint(err)
				if err == nil {
					status = resp.Header.Get("Cache-Status")
				}
				mu.Lock()
				statuses[status]++
				mu.Unlock()
			}()
		}
		close(start)
		wg.Wait()
		if n := u.Calls(http.MethodGet, "/api/content/cold"); n != 1 {
			t.Fatalf("round %d: 200 cold requests through two fresh Caddys made %d upstream calls, want 1; answers by Cache-Status: %v\nA:\n%s\nB:\n%s",
				round, n, statuses, harnessTail(a.Logs(), 3000), harnessTail(b.Logs(), 3000))
		}
		a.Stop()
		b.Stop()
	}
}

// Issue 12, finding 10: a foreign value at a generation key (another
// tool's string, or another type) made purges answer 502 and could stop
// storing. It is overwritten like a corrupt entry.
func TestPurgeForeignGenerationValues(t *testing.T) {
	t.Parallel()
	e := rfcStart(t, "pgf", pgRoutes)
	pgOrigin(e.u, "/api/dashboard", "/api/campaigns")
	ctx := context.Background()
	cl := e.r.Client()
	for _, k := range []string{"pgf:_g:all", "pgf:_g:r:dashboard"} {
		if err := cl.HSet(ctx, k, "f", "v").Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Set(ctx, "pgf:_g:purged", "not a sorted set", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_, first := e.get(t, "/api/dashboard", "X-User-Id: u1")
	if resp, b := e.get(t, "/api/dashboard", "X-User-Id: u1"); resp.Header.Get("X-Cache") != "HIT" || b != first {
		t.Fatalf("with foreign values at generation keys: %s, want the entry stored and served", resp.Header.Get("X-Cache"))
	}
	cl.Del(ctx, "pgf:_g:r:dashboard")
	if err := cl.HSet(ctx, "pgf:_g:r:dashboard", "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	pgAdminPurge(t, e.c, `{"route":"dashboard"}`)
	pgAdminPurge(t, e.c, `{"pattern":"dashboard:nothing:*"}`)
	if err := cl.Set(ctx, "pgf:_g:r:campaigns", "garbage", 0).Err(); err != nil {
		t.Fatal(err)
	}
	pgPost(t, e.c, "/api/campaigns", 200)
	if resp, b := e.get(t, "/api/dashboard", "X-User-Id: u1"); b == first {
		t.Fatalf("after purges over foreign values: %s with the purged body", resp.Header.Get("X-Cache"))
	}
}

// Issue 12, finding 9: the embedded store's purge counters lived in a map
// that every bump swept under the lock lookups need, outside memory_limit.
// Now they are entries of the byte-bounded LRU.
func TestMemoryStoreGenerationsBounded(t *testing.T) {
	const limit = 1 << 20
	m := newMemoryStore(limit)
	ctx := context.Background()
	for i := range 50000 {
		if err := m.bump(ctx, false, time.Hour, fmt.Sprintf("ns:_g:u:%032d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n, used := m.items.size(); used > limit {
		t.Fatalf("50000 generations hold %d bytes in %d items, over the %d-byte memory_limit", used, n, limit)
	}
	cur, _ := m.gens(ctx, []string{fmt.Sprintf("ns:_g:u:%032d", 0), fmt.Sprintf("ns:_g:u:%032d", 49999)})
	if cur[0] != genMissing || cur[1] == genMissing {
		t.Fatalf("oldest generation %q (want evicted: unknown), newest %q (want present)", cur[0], cur[1])
	}
}

// Concurrent first misses of entries that share generations (one route,
// one URI, per-user keys) all create them: none of their writes may be
// refused for it, or every user pays a second miss.
func TestPurgeConcurrentFirstStores(t *testing.T) {
	t.Parallel()
	e := rfcStart(t, "pgcf", pgRoutes)
	pgOrigin(e.u, "/api/dashboard")
	const users = 20
	var wg sync.WaitGroup
	for i := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _ = e.c.GetE("/api/dashboard?sleep=300", "X-User-Id: u"+strconv.Itoa(i))
		}()
	}
	wg.Wait()
	// The writes follow the answers: wait for all of them to land.
	harnessWaitUntil(10*time.Second, func() bool { return len(e.r.Keys("pgcf:dashboard:*")) >= users })
	misses := 0
	for i := range users {
		resp, _ := e.get(t, "/api/dashboard?sleep=300", "X-User-Id: u"+strconv.Itoa(i))
		if resp.Header.Get("X-Cache") != "HIT" {
			misses++
			t.Logf("u%d: %s", i, resp.Header.Get("Cache-Status"))
		}
	}
	if misses > 0 {
		t.Fatalf("%d of %d users missed again after their first answer was stored:\n%s", misses, users, strings.Join(metricLines(t, e.c, "caddy_redis_cache_unstored_total"), "\n"))
	}
}
