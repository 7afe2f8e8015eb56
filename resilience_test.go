package rediscache

// Resilience tests for issue 5: Redis faults under load (killed, paused,
// slow, full), request coalescing within one Caddy and across two,
// stale-while-revalidate and stale-if-error, large and streaming bodies,
// and config reloads. Everything runs against real processes: a Caddy
// binary built from ./cmd/caddy, real redis-servers on fresh loopback ports
// and a counting upstream. Tests assert what a user sees: statuses,
// headers, bodies, upstream call counts and the contents of Redis.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

// resHostPort is an upstream's address for reverse_proxy.
func resHostPort(u *upstream) string { return strings.TrimPrefix(u.URL, "http://") }

// resSite is a site body: a redis_cache block (settings without braces),
// a cheap `respond` path for warming client connections, and a
// reverse_proxy to u.
func resSite(u *upstream, cacheBlock string) string {
	return "\tredis_cache {\n" + cacheBlock + "\n\t}\n" +
		"\trespond /warm \"ok\" 200\n" +
		"\treverse_proxy " + resHostPort(u)
}

// resClient is an HTTP client of its own (not the harness's 10s one),
// keeping up to idle connections to each host open.
func resClient(timeout time.Duration, idle int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DisableCompression = true
	tr.MaxIdleConns = 2 * idle
	tr.MaxIdleConnsPerHost = idle
	return &http.Client{
		Transport:     tr,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// resGet sends GET base+path with "Name: value" headers through client and
// reads the whole body.
func resGet(client *http.Client, base, path string, headers ...string) (*http.Response, string, error) {
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		return nil, "", err
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if strings.EqualFold(name, "Host") {
			req.Host = value
			continue
		}
		req.Header.Add(name, value)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

func resShort(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// resCount counts the occurrences of substr in Caddy's logs.
func resCount(c *caddyProc, substr string) int { return strings.Count(c.Logs(), substr) }

// resBody decodes the upstream's default JSON body.
func resBody(t *testing.T, label, body string) upstreamBody {
	t.Helper()
	var b upstreamBody
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		t.Fatalf("%s: body %q is not the upstream's JSON: %v", label, resShort(body, 300), err)
	}
	return b
}

// resSample is the outcome of one request under load.
type resSample struct {
	path       string
	start, end time.Time
	status     int
	xcache     string
	cstatus    string
	body       string
	err        error
}

func (s resSample) took() time.Duration { return s.end.Sub(s.start) }

// resLoad runs workers goroutines that GET pick(worker, iteration) in a loop
// until stop is called; stop returns every sample.
func resLoad(c *caddyProc, workers int, pick func(w, i int) string) (stop func() []resSample) {
	return resLoadWith(func(path string) (*http.Response, string, error) { return c.GetE(path) }, workers, pick)
}

// resLoadWith is resLoad with a request function of its own.
func resLoadWith(get func(path string) (*http.Response, string, error), workers int, pick func(w, i int) string) (stop func() []resSample) {
	return harnessLoad(workers, func(w, i int) resSample { return resTake(pick(w, i), get) })
}

// resTake performs get(path) as a timed sample.
func resTake(path string, get func(path string) (*http.Response, string, error)) resSample {
	s := resSample{path: path, start: time.Now()}
	resp, body, err := get(path)
	s.end, s.err, s.body = time.Now(), err, body
	if resp != nil {
		s.status = resp.StatusCode
		s.xcache = resp.Header.Get("X-Cache")
		s.cstatus = strings.Join(resp.Header.Values("Cache-Status"), ", ")
	}
	return s
}

// resWarmCold picks a warm path on even iterations and a never-seen cold
// path on odd ones.
func resWarmCold(warm []string, coldPrefix string) func(w, i int) string {
	return func(w, i int) string {
		if i%2 == 0 {
			return warm[(w+i/2)%len(warm)]
		}
		return fmt.Sprintf("%s%d-%d", coldPrefix, w, i)
	}
}

// resCheckAll fails on any transport error, any status but 200, any body
// that is not an answer for the requested path, or any request slower than
// limit. It returns the X-Cache counts.
func resCheckAll(t *testing.T, label string, samples []resSample, limit time.Duration) map[string]int {
	t.Helper()
	if len(samples) == 0 {
		t.Fatalf("%s: no requests were made", label)
	}
	counts := map[string]int{}
	bad := 0
	report := func(format string, args ...any) {
		bad++
		if bad <= 5 {
			t.Errorf("%s: "+format, append([]any{label}, args...)...)
		}
	}
	var slowest time.Duration
	for _, s := range samples {
		slowest = max(slowest, s.took())
		switch {
		case s.err != nil:
			report("GET %s failed after %v: %v", s.path, s.took(), s.err)
		case s.status != http.StatusOK:
			report("GET %s: status %d (X-Cache %q, Cache-Status %q), body %q", s.path, s.status, s.xcache, s.cstatus, resShort(s.body, 300))
		case !strings.Contains(s.body, fmt.Sprintf(`"path":%q`, strings.SplitN(s.path, "?", 2)[0])):
			report("GET %s: body %q is not the upstream's answer for it", s.path, resShort(s.body, 300))
		case s.took() > limit:
			report("GET %s took %v (limit %v; X-Cache %q)", s.path, s.took(), limit, s.xcache)
		}
		counts[s.xcache]++
	}
	if bad > 0 {
		t.Fatalf("%s: %d of %d requests failed, were not 200, had a wrong body or took longer than %v", label, bad, len(samples), limit)
	}
	t.Logf("%s: %d requests, X-Cache %v, slowest %v", label, len(samples), counts, slowest.Round(time.Millisecond))
	return counts
}

// resWithin returns the samples that started at or after from and ended
// at or before to.
func resWithin(samples []resSample, from, to time.Time) []resSample {
	var out []resSample
	for _, s := range samples {
		if !s.start.Before(from) && !s.end.After(to) {
			out = append(out, s)
		}
	}
	return out
}

func resCounts(samples []resSample) map[string]int {
	m := map[string]int{}
	for _, s := range samples {
		m[s.xcache]++
	}
	return m
}

// resMissThenHit asserts that GET path is a stored MISS and a repeat a HIT
// with the same body; it returns the body.
func resMissThenHit(t *testing.T, c *caddyProc, path string) string {
	t.Helper()
	r1, b1 := c.Get(path)
	if r1.StatusCode != 200 || r1.Header.Get("X-Cache") != "MISS" || !strings.Contains(r1.Header.Get("Cache-Status"), "stored") {
		t.Fatalf("first GET %s: %d X-Cache %q Cache-Status %q, want 200 MISS stored", path, r1.StatusCode, r1.Header.Get("X-Cache"), r1.Header.Get("Cache-Status"))
	}
	r2, b2 := c.Get(path)
	if r2.StatusCode != 200 || r2.Header.Get("X-Cache") != "HIT" || b2 != b1 {
		t.Fatalf("second GET %s: %d X-Cache %q body %q, want 200 HIT with the MISS body %q", path, r2.StatusCode, r2.Header.Get("X-Cache"), b2, b1)
	}
	return b1
}

// resWaitCaching polls fresh paths under prefix until one is a stored MISS
// followed by a HIT with the same body: caching works again. It returns how
// long that took.
func resWaitCaching(t *testing.T, c *caddyProc, label, prefix string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for i := 0; time.Since(start) < timeout; i++ {
		path := fmt.Sprintf("%s%d", prefix, i)
		r1, b1 := c.Get(path)
		if r1.StatusCode != 200 {
			t.Fatalf("%s: GET %s: status %d", label, path, r1.StatusCode)
		}
		last = r1.Header.Get("X-Cache") + " / " + r1.Header.Get("Cache-Status")
		if r1.Header.Get("X-Cache") == "MISS" {
			r2, b2 := c.Get(path)
			if r2.StatusCode != 200 {
				t.Fatalf("%s: GET %s: status %d", label, path, r2.StatusCode)
			}
			last += "; then " + r2.Header.Get("X-Cache") + " / " + r2.Header.Get("Cache-Status")
			if r2.Header.Get("X-Cache") == "HIT" && b2 == b1 {
				return time.Since(start)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: caching did not resume within %v (last: %s)", label, timeout, last)
	return 0
}

// metricLines returns the samples on Caddy's admin /metrics whose line
// starts with prefix (a family name, or a name and labels), for sums and
// for failure messages.
func metricLines(t *testing.T, c *caddyProc, prefix string) []string {
	t.Helper()
	code, body := c.Admin("GET", "/metrics", "")
	if code != 200 {
		t.Fatalf("admin /metrics: %d %s", code, resShort(body, 300))
	}
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return out
}

// sumSamples adds up the values of metric sample lines.
func sumSamples(t *testing.T, lines []string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range lines {
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("admin /metrics: bad sample %q", line)
		}
		sum += v
	}
	return sum
}

// resMetric sums every sample of the metric family name (a counter, or a
// histogram's _count) from Caddy's admin /metrics; 0 when there is none
// yet (a labelled counter appears with its first increment).
func resMetric(t *testing.T, c *caddyProc, name string) float64 {
	t.Helper()
	var family []string
	for _, line := range metricLines(t, c, name) {
		metric, _, _ := strings.Cut(line, " ")
		metric, _, _ = strings.Cut(metric, "{")
		if metric == name {
			family = append(family, line)
		}
	}
	return sumSamples(t, family)
}

// resVmHWM reads a process's peak resident set size in KiB.
func resVmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading /proc/%d/status: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || len(f) < 2 || f[1] != "kB" {
				t.Fatalf("bad VmHWM line %q", line)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/status has no VmHWM", pid)
	return 0
}

// resGoroutines reads Caddy's goroutine count from the admin pprof endpoint.
func resGoroutines(t *testing.T, c *caddyProc) int {
	t.Helper()
	code, body := c.Admin("GET", "/debug/pprof/goroutine?debug=1", "")
	first, _, _ := strings.Cut(body, "\n")
	rest, ok := strings.CutPrefix(first, "goroutine profile: total ")
	n, err := strconv.Atoi(strings.TrimSpace(rest))
	if code != 200 || !ok || err != nil {
		t.Fatalf("goroutine profile: %d %q", code, first)
	}
	return n
}

// resBurst runs n requests at once (released together) and returns their
// samples in index order.
func resBurst(n int, do func(i int) resSample) []resSample {
	out := make([]resSample, n)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-gate
			out[i] = do(i)
		}(i)
	}
	close(gate)
	wg.Wait()
	return out
}

// resSampleOf performs GET base+path through client as a sample.
func resSampleOf(client *http.Client, base, path string, headers ...string) resSample {
	return resTake(path, func(path string) (*http.Response, string, error) {
		return resGet(client, base, path, headers...)
	})
}

// resWarmConns opens n keep-alive connections from client to c (on the
// `respond /warm` path, which never reaches the upstream), so that a
// following burst is not slowed down by connection setup.
func resWarmConns(t *testing.T, client *http.Client, c *caddyProc, n int) {
	t.Helper()
	for _, s := range resBurst(n, func(int) resSample { return resSampleOf(client, c.BaseURL, "/warm") }) {
		if s.err != nil || s.status != 200 || s.body != "ok" {
			t.Fatalf("warming connections: %v %d %q", s.err, s.status, s.body)
		}
	}
}

// ---------------------------------------------------------------------------
// 1. Redis faults under load
// ---------------------------------------------------------------------------

const resFaultLimit = 1500 * time.Millisecond // per request; store timeout is 100ms

func resFaultSite(u *upstream, r *redisServer) string {
	return resSite(u, fmt.Sprintf(`		redis %s
		route content /api/content* 5m`, r.URL()))
}

func resWarmPaths(t *testing.T, c *caddyProc, n int) []string {
	t.Helper()
	var warm []string
	for i := 0; i < n; i++ {
		p := fmt.Sprintf("/api/content/warm-%d", i)
		resMissThenHit(t, c, p)
		warm = append(warm, p)
	}
	return warm
}

// TestResilienceRedisKilled: Redis is SIGKILLed under load and restarted.
// Every request still gets the upstream's 200 promptly, with SKIP during
// the outage; the breaker stops touching the dead Redis (a handful of store
// attempts for hundreds of requests) and logs one warning per outage;
// caching resumes by itself after the restart.
func TestResilienceRedisKilled(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, resFaultSite(u, r))
	warm := resWarmPaths(t, c, 4)

	stop := resLoad(c, 12, resWarmCold(warm, "/api/content/cold-"))
	defer stop()
	time.Sleep(500 * time.Millisecond)

	const attemptsMetric = "caddy_redis_cache_store_duration_seconds_count"
	errorsBefore := resMetric(t, c, "caddy_redis_cache_store_errors_total")
	r.Kill()
	killed := time.Now()
	time.Sleep(500 * time.Millisecond)
	// From here on the breaker is open: over a span longer than the 2s
	// cooldown only its probes may reach for the dead Redis.
	steadyFrom := time.Now()
	attemptsBefore := resMetric(t, c, attemptsMetric)
	time.Sleep(3 * time.Second)
	attempts := resMetric(t, c, attemptsMetric) - attemptsBefore
	steadyTo := time.Now()
	failures := resMetric(t, c, "caddy_redis_cache_store_errors_total") - errorsBefore
	restartAt := time.Now()
	r.Restart()
	took := resWaitCaching(t, c, "after restart", "/api/content/resume-", 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	samples := stop()

	outage, _ := resCheckOutage(t, "kill/restart under load", "while Redis was dead", samples, killed, restartAt)
	// The breaker: store operations attempted while Redis was dead are the
	// few that opened it plus one probe per cooldown, not one per request.
	durs := make([]time.Duration, len(outage))
	for i, s := range outage {
		durs[i] = s.took()
	}
	sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
	p50, worst := durs[len(durs)/2], durs[len(durs)-1]
	steady := len(resWithin(samples, steadyFrom, steadyTo))
	t.Logf("outage: %d requests, %v failed store operations, p50 %v, max %v; %d requests and %v store operations in the last %v; caching resumed %v after restart",
		len(outage), failures, p50.Round(time.Millisecond), worst.Round(time.Millisecond), steady, attempts, steadyTo.Sub(steadyFrom).Round(time.Millisecond), took.Round(time.Millisecond))
	if failures > 40 || failures*4 > float64(len(outage)) {
		t.Fatalf("while Redis was dead: %v store operations failed for %d requests; the breaker should stop dialling", failures, len(outage))
	}
	if attempts > 6 || steady < 20 {
		t.Fatalf("with the breaker open: %v store operations for %d requests in %v; want only the probes (one per 2s cooldown)", attempts, steady, steadyTo.Sub(steadyFrom))
	}
	if p50 > 500*time.Millisecond {
		t.Fatalf("while Redis was dead: median request took %v", p50)
	}

	// One warning per state change, however many requests saw the outage.
	if !c.WaitForLog("caching resumed", 5*time.Second) {
		t.Fatalf("no %q warning after Redis came back", "caching resumed")
	}
	if a, b := resCount(c, "cache store unavailable"), resCount(c, "caching resumed"); a != 1 || b != 1 {
		t.Fatalf("one outage: %d %q / %d %q warnings over %d requests, want 1 / 1", a, "cache store unavailable", b, "caching resumed", len(samples))
	}

	// The restarted Redis came back empty; the load after the restart
	// stored the warm paths in it again.
	for _, p := range warm {
		if resp, _ := c.Get(p); resp.Header.Get("X-Cache") != "HIT" {
			t.Fatalf("GET %s after the restart: X-Cache %q, want HIT", p, resp.Header.Get("X-Cache"))
		}
	}
	if k := r.Keys("rcache:content:*"); len(k) < len(warm) {
		t.Fatalf("%d entries in the restarted Redis, want at least %d", len(k), len(warm))
	}
}

// resCheckOutage checks the samples of a load run through a Redis outage:
// every request succeeded promptly, those sent during [from, to) were
// SKIPs, and there were HITs around them. It returns the outage's samples
// and their X-Cache counts.
func resCheckOutage(t *testing.T, label, during string, samples []resSample, from, to time.Time) ([]resSample, map[string]int) {
	t.Helper()
	counts := resCheckAll(t, label, samples, resFaultLimit)
	in := resWithin(samples, from, to)
	ic := resCounts(in)
	if len(in) == 0 || ic["SKIP"] != len(in) {
		t.Fatalf("%s: X-Cache %v, want SKIP only", during, ic)
	}
	if counts["HIT"] == 0 {
		t.Fatalf("no HIT at all under load: %v", counts)
	}
	return in, ic
}

// resHangTest puts load on c while hang makes Redis stop answering for a
// while. hang returns the window in which Redis surely did not answer.
// Every request must succeed promptly, those in the window with SKIP, the
// warm entries must survive and caching must resume by itself.
func resHangTest(t *testing.T, r *redisServer, c *caddyProc, hang func() (from, to time.Time)) {
	t.Helper()
	warm := resWarmPaths(t, c, 4)
	stop := resLoad(c, 12, resWarmCold(warm, "/api/content/cold-"))
	defer stop()
	time.Sleep(500 * time.Millisecond)
	from, to := hang()
	time.Sleep(time.Until(to))
	took := resWaitCaching(t, c, "after the hang", "/api/content/resume-", 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	samples := stop()

	in, ic := resCheckOutage(t, "hang under load", "while Redis did not answer", samples, from, to)
	t.Logf("hang window: %d requests %v; caching resumed %v after the window", len(in), ic, took.Round(time.Millisecond))

	// Entries outlive a hang.
	if k := r.Keys("rcache:content:*"); len(k) < len(warm) {
		t.Fatalf("after the hang: %d entries in Redis, want at least the %d warm ones", len(k), len(warm))
	}
	for _, p := range warm {
		resp, _ := c.Get(p)
		if resp.Header.Get("X-Cache") != "HIT" {
			t.Fatalf("GET %s after the hang: X-Cache %q, want HIT", p, resp.Header.Get("X-Cache"))
		}
	}
	// Every outage that was logged was followed by its recovery.
	if !c.WaitForLog("cache store unavailable", time.Second) {
		t.Fatalf("no %q warning though Redis hung under load", "cache store unavailable")
	}
	ok := harnessWaitUntil(5*time.Second, func() bool {
		return resCount(c, "cache store unavailable") == resCount(c, "caching resumed")
	})
	if a, b := resCount(c, "cache store unavailable"), resCount(c, "caching resumed"); !ok || a > 2 {
		t.Fatalf("%d %q / %d %q warnings over %d requests, want one of each per outage", a, "cache store unavailable", b, "caching resumed", len(samples))
	}
}

// TestResilienceRedisPaused: CLIENT PAUSE ALL for 2s under load.
func TestResilienceRedisPaused(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, resFaultSite(u, r))
	resHangTest(t, r, c, func() (time.Time, time.Time) {
		sent := time.Now()
		r.Pause(2 * time.Second)
		return time.Now(), sent.Add(1900 * time.Millisecond)
	})
}

// TestResilienceRedisSlow: DEBUG SLEEP 2 (the whole server stalls) under load.
func TestResilienceRedisSlow(t *testing.T) {
	r := startRedis(t, "--enable-debug-command", "yes")
	u := newUpstream(t)
	c := startCaddy(t, resFaultSite(u, r))
	sleeper := redis.NewClient(harnessRedisOptions(r.Addr))
	defer sleeper.Close()
	probeOpts := harnessRedisOptions(r.Addr)
	probeOpts.ReadTimeout = 50 * time.Millisecond
	probeOpts.PoolSize = 1
	probe := redis.NewClient(probeOpts)
	defer probe.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Both connections are open before the stall begins.
	if err := sleeper.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := probe.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	slept := make(chan error, 1)
	resHangTest(t, r, c, func() (time.Time, time.Time) {
		sent := time.Now()
		go func() { slept <- sleeper.Do(ctx, "DEBUG", "SLEEP", "2").Err() }()
		// The stall has begun once a PING goes unanswered.
		for probe.Ping(ctx).Err() == nil {
			if time.Since(sent) > time.Second {
				t.Fatal("Redis still answers PING 1s after DEBUG SLEEP 2 was sent")
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Now(), sent.Add(1900 * time.Millisecond)
	})
	select {
	case err := <-slept:
		if err != nil {
			t.Fatalf("DEBUG SLEEP 2: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("DEBUG SLEEP 2 did not return")
	}
}

// TestResilienceRedisFull: Redis at maxmemory with noeviction refuses
// writes (OOM) but answers reads. Requests all succeed, stored entries keep
// being HITs, new responses are not stored, the breaker stays closed, and
// caching of new keys resumes once memory is freed.
func TestResilienceRedisFull(t *testing.T) {
	r := startRedis(t, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
	u := newUpstream(t)
	c := startCaddy(t, resFaultSite(u, r))
	warm := resWarmPaths(t, c, 4)
	entriesBefore := len(r.Keys("rcache:content:*"))
	if entriesBefore != len(warm) {
		t.Fatalf("entries before filling: %d, want %d", entriesBefore, len(warm))
	}

	// Fill Redis with junk until writes fail with OOM.
	rc := r.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	junk := strings.Repeat("j", 16<<10)
	var junkKeys []string
	for i := 0; ; i++ {
		k := fmt.Sprintf("junk:%d", i)
		err := rc.Set(ctx, k, junk, 0).Err()
		if err != nil {
			if !strings.HasPrefix(err.Error(), "OOM") {
				t.Fatalf("filling Redis: SET %s: %v", k, err)
			}
			break
		}
		junkKeys = append(junkKeys, k)
		if i > 2000 {
			t.Fatal("Redis never filled up")
		}
	}
	// Client buffers make used_memory wobble by a few KiB around the
	// limit, which would let a small SET through now and then; a limit a
	// little below the filled level makes every write fail.
	info, err := rc.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(info, "used_memory:")
	field, _, _ := strings.Cut(rest, "\r\n")
	used, err := strconv.ParseInt(strings.TrimSpace(field), 10, 64)
	if err != nil {
		t.Fatalf("INFO memory: used_memory %q: %v", field, err)
	}
	if err := rc.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used-(256<<10), 10)).Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory: %v", err)
	}
	if err := rc.Set(ctx, "probe", "x", 0).Err(); err == nil || !strings.HasPrefix(err.Error(), "OOM") {
		t.Fatalf("SET on a full Redis: %v, want an OOM error", err)
	}
	t.Logf("Redis full after %d junk keys (used_memory %d KiB)", len(junkKeys), used>>10)

	stop := resLoad(c, 8, resWarmCold(warm, "/api/content/cold-"))
	defer stop()
	time.Sleep(2500 * time.Millisecond)
	samples := stop()
	resCheckAll(t, "Redis full", samples, resFaultLimit)
	warmSet := map[string]bool{}
	for _, p := range warm {
		warmSet[p] = true
	}
	cold := map[string]int{}
	for _, s := range samples {
		if warmSet[s.path] {
			if s.xcache != "HIT" {
				t.Fatalf("Redis full: warm GET %s: X-Cache %q (%s), want HIT: reads still work", s.path, s.xcache, s.cstatus)
			}
			continue
		}
		cold[s.xcache]++
		if s.xcache != "MISS" && s.xcache != "SKIP" {
			t.Fatalf("Redis full: cold GET %s: X-Cache %q, want MISS or SKIP", s.path, s.xcache)
		}
	}
	if cold["MISS"] == 0 {
		t.Fatalf("Redis full: cold requests %v; lookups still work, so they should be MISSes", cold)
	}
	// A new response cannot be stored: asking again is another MISS.
	r1, b1 := c.Get("/api/content/after-full")
	r2, b2 := c.Get("/api/content/after-full")
	if r1.StatusCode != 200 || r2.StatusCode != 200 || r2.Header.Get("X-Cache") != "MISS" || b1 == b2 {
		t.Fatalf("Redis full: repeated GET: %d %q then %d %q (bodies %q, %q), want two upstream answers",
			r1.StatusCode, r1.Header.Get("X-Cache"), r2.StatusCode, r2.Header.Get("X-Cache"), b1, b2)
	}
	if n := len(r.Keys("rcache:content:*")); n != entriesBefore {
		t.Fatalf("Redis full: %d entries, want the %d stored before it filled up", n, entriesBefore)
	}
	// Redis answered every command (with an error for writes): the breaker
	// must not have opened.
	if n := resCount(c, "cache store unavailable"); n != 0 {
		t.Fatalf("Redis full: breaker opened (%d warnings) though Redis answered", n)
	}

	// Free the memory: caching of new keys resumes by itself.
	if err := rc.Del(ctx, junkKeys...).Err(); err != nil {
		t.Fatalf("deleting junk: %v", err)
	}
	if err := rc.ConfigSet(ctx, "maxmemory", "2mb").Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory: %v", err)
	}
	resMissThenHit(t, c, "/api/content/after-free")
	if n := len(r.Keys("rcache:content:*")); n != entriesBefore+1 {
		t.Fatalf("after freeing memory: %d entries, want %d", n, entriesBefore+1)
	}
}

// ---------------------------------------------------------------------------
// 2. Request coalescing
// ---------------------------------------------------------------------------

// resCheckStampede checks the answers to one burst for one cold key: all
// 200 with the same upstream body, exactly one stored MISS (the request
// that went to the upstream), every other one a collapsed MISS or a HIT.
// It returns the number of collapsed answers.
func resCheckStampede(t *testing.T, label string, samples []resSample, stored *int, body *string) int {
	t.Helper()
	collapsed := 0
	kinds := map[string]int{}
	var bad []string
	for i, s := range samples {
		kinds[s.xcache+" / "+s.cstatus]++
		if s.err != nil || s.status != 200 {
			bad = append(bad, fmt.Sprintf("request %d: %v status %d", i, s.err, s.status))
			continue
		}
		if *body == "" {
			*body = s.body
		}
		if s.body != *body {
			bad = append(bad, fmt.Sprintf("request %d: body %q differs from %q", i, s.body, *body))
		}
		switch {
		case s.xcache == "MISS" && strings.Contains(s.cstatus, "stored"):
			*stored++
		case s.xcache == "MISS" && strings.Contains(s.cstatus, "collapsed"):
			collapsed++
		case s.xcache == "HIT":
		default:
			bad = append(bad, fmt.Sprintf("request %d: X-Cache %q Cache-Status %q, want a collapsed MISS or a HIT", i, s.xcache, s.cstatus))
		}
	}
	if len(bad) > 0 {
		if len(bad) > 5 {
			bad = append(bad[:5], fmt.Sprintf("... %d more", len(bad)-5))
		}
		t.Fatalf("%s: %d of %d answers wrong:\n%s\nanswers by X-Cache / Cache-Status: %v", label, len(bad), len(samples), strings.Join(bad, "\n"), kinds)
	}
	return collapsed
}

// TestResilienceCoalescing: 200 concurrent cold requests for one key cause
// one upstream request, within one Caddy and across two sharing Redis; an
// uncacheable answer releases the waiters at once, each with its own answer.
//
// The store timeout is raised to 2s here: this test is about coalescing.
// With the default 100ms, on a small busy host (2 cores, -race), a burst of
// 200 lookups against a Caddy whose Redis pool is still empty cannot all
// dial and finish in time: a share of them SKIP the cache (store
// unavailable) and go to the upstream by themselves (measured: 59 of 200
// on the first burst, 3 on the second, 0 on the third).
func TestResilienceCoalescing(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	const delay = 600 * time.Millisecond

	t.Run("one instance", func(t *testing.T) {
		c := startCaddy(t, resSite(u, fmt.Sprintf(`		redis %s
		timeout 2s
		route content /api/content* 5m`, r.URL())))
		client := resClient(30*time.Second, 256)
		defer client.CloseIdleConnections()
		resWarmConns(t, client, c, 200)
		u.SetDelay(delay)
		defer u.SetDelay(0)
		const path = "/api/content/stampede-1"
		samples := resBurst(200, func(int) resSample { return resSampleOf(client, c.BaseURL, path) })
		stored, body := 0, ""
		collapsed := resCheckStampede(t, "one instance", samples, &stored, &body)
		if n := u.Calls("GET", path); n != 1 || stored != 1 {
			t.Fatalf("one instance: upstream called %d times, %d stored answers; want 1 and 1", n, stored)
		}
		if collapsed < 100 {
			t.Fatalf("one instance: only %d of 200 answers were collapsed onto the upstream request", collapsed)
		}
		if b := resBody(t, "stampede", body); b.Path != path {
			t.Fatalf("one instance: body %q", body)
		}
		t.Logf("one instance: 1 upstream call, %d collapsed, %d HIT", collapsed, 199-collapsed)
	})

	t.Run("two instances", func(t *testing.T) {
		site := resSite(u, fmt.Sprintf(`		redis %s
		timeout 2s
		coalesce
		route content /api/content* 5m`, r.URL()))
		a, b := startCaddy(t, site), startCaddy(t, site)
		ca, cb := resClient(30*time.Second, 256), resClient(30*time.Second, 256)
		defer ca.CloseIdleConnections()
		defer cb.CloseIdleConnections()
		resWarmConns(t, ca, a, 100)
		resWarmConns(t, cb, b, 100)
		entries := len(r.Keys("rcache:content:*"))
		u.SetDelay(delay)
		defer u.SetDelay(0)
		// Behind a load balancer every instance sees the same Host; here
		// they listen on different ports, so the port is left out of Host
		// (the host is part of the key).
		const path = "/api/content/stampede-2"
		samples := resBurst(200, func(i int) resSample {
			if i%2 == 0 {
				return resSampleOf(ca, a.BaseURL, path, "Host: 127.0.0.1")
			}
			return resSampleOf(cb, b.BaseURL, path, "Host: 127.0.0.1")
		})
		var sa, sb []resSample
		for i, s := range samples {
			if i%2 == 0 {
				sa = append(sa, s)
			} else {
				sb = append(sb, s)
			}
		}
		stored, body := 0, ""
		colA := resCheckStampede(t, "instance A", sa, &stored, &body)
		colB := resCheckStampede(t, "instance B", sb, &stored, &body)
		if n := u.Calls("GET", path); n != 1 || stored != 1 {
			t.Fatalf("two instances: upstream called %d times, %d stored answers; want 1 and 1", n, stored)
		}
		if colA < 30 || colB < 30 {
			t.Fatalf("two instances: %d / %d collapsed answers; want most of each instance's 100", colA, colB)
		}
		if k := r.Keys("rcache:content:*"); len(k) != entries+1 {
			t.Fatalf("two instances: entries %v, want one more than the %d before", k, entries)
		}
		if k := r.Keys("rcache:_l:*"); len(k) != 0 {
			t.Fatalf("two instances: coalescing locks left behind: %v", k)
		}
		t.Logf("two instances: 1 upstream call, collapsed A %d B %d", colA, colB)
	})

	t.Run("uncacheable answer releases waiters", func(t *testing.T) {
		c := startCaddy(t, resSite(u, fmt.Sprintf(`		redis %s
		timeout 2s
		route content /api/content* 5m`, r.URL())))
		client := resClient(30*time.Second, 64)
		entries := len(r.Keys("rcache:content:*"))
		defer client.CloseIdleConnections()
		resWarmConns(t, client, c, 20)
		const path = "/api/content/nostore"
		const slow = 500 * time.Millisecond
		u.Handle(path, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(slow):
			case <-r.Context().Done():
				return
			}
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"path":%q,"req":%q}`, r.URL.Path, r.Header.Get("X-Req"))
		})
		start := time.Now()
		samples := resBurst(20, func(i int) resSample {
			return resSampleOf(client, c.BaseURL, path, fmt.Sprintf("X-Req: r%d", i))
		})
		total := time.Since(start)
		for i, s := range samples {
			want := fmt.Sprintf(`{"path":%q,"req":"r%d"}`, path, i)
			if s.err != nil || s.status != 200 || s.body != want {
				t.Fatalf("request %d: %v %d body %q, want its own answer %q", i, s.err, s.status, s.body, want)
			}
			if s.xcache != "MISS" || !strings.Contains(s.cstatus, "no-store") {
				t.Fatalf("request %d: X-Cache %q Cache-Status %q, want an unstored MISS", i, s.xcache, s.cstatus)
			}
		}
		if n := u.Calls("GET", path); n != 20 {
			t.Fatalf("upstream called %d times, want 20 (each request its own answer)", n)
		}
		t.Logf("20 requests for an uncacheable answer (upstream %v each) took %v together", slow, total.Round(time.Millisecond))
		if total > 5*slow {
			t.Fatalf("20 concurrent requests took %v; waiters were not released at once (upstream takes %v)", total, slow)
		}
		if k := r.Keys("rcache:content:*"); len(k) != entries {
			t.Fatalf("uncacheable answer stored: entries %v, want %d as before", k, entries)
		}
	})
}

// ---------------------------------------------------------------------------
// 3. Stale serving
// ---------------------------------------------------------------------------

// TestResilienceOutageCollapsing: while Redis is down, a burst of requests
// for one hot key still makes one upstream request, whose answer every
// request gets as a SKIP; an answer that could not have been stored
// (private) is never shared, so each request goes upstream itself.
func TestResilienceOutageCollapsing(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, resFaultSite(u, r))
	client := resClient(30*time.Second, 64)
	defer client.CloseIdleConnections()
	resWarmConns(t, client, c, 40)
	r.Kill()
	for i := 0; ; i++ {
		s := resSampleOf(client, c.BaseURL, fmt.Sprintf("/api/content/down-%d", i))
		if s.err == nil && s.status == 200 && s.xcache == "SKIP" {
			break
		}
		if i == 50 {
			t.Fatalf("Redis killed: never answered SKIP (last: %v %d %q)", s.err, s.status, s.xcache)
		}
		time.Sleep(20 * time.Millisecond)
	}
	u.SetDelay(400 * time.Millisecond)
	defer u.SetDelay(0)

	const hot = "/api/content/outage-hot"
	body, collapsed := "", 0
	for i, s := range resBurst(40, func(int) resSample { return resSampleOf(client, c.BaseURL, hot) }) {
		if s.err != nil || s.status != 200 || s.xcache != "SKIP" || !strings.Contains(s.cstatus, "detail=store-unavailable") {
			t.Fatalf("hot request %d: %v, status %d, X-Cache %q, Cache-Status %q", i, s.err, s.status, s.xcache, s.cstatus)
		}
		if body == "" {
			body = s.body
		}
		if s.body != body {
			t.Fatalf("hot request %d: body %q, another got %q", i, s.body, body)
		}
		if strings.Contains(s.cstatus, "collapsed") {
			collapsed++
		}
	}
	if n := u.Calls("GET", hot); n != 1 || collapsed != 39 {
		t.Fatalf("40 concurrent requests while Redis was down: %d upstream calls, %d collapsed; want 1 and 39", n, collapsed)
	}
	if b := resBody(t, "hot", body); b.Path != hot {
		t.Fatalf("hot body %q", body)
	}

	const private = "/api/content/outage-private"
	var seq atomic.Int64
	u.Handle(private, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "private, max-age=60")
		fmt.Fprintf(w, "private answer %d", seq.Add(1))
	})
	seen := map[string]bool{}
	for i, s := range resBurst(10, func(int) resSample { return resSampleOf(client, c.BaseURL, private) }) {
		if s.err != nil || s.status != 200 || s.xcache != "SKIP" || strings.Contains(s.cstatus, "collapsed") {
			t.Fatalf("private request %d: %v, status %d, X-Cache %q, Cache-Status %q", i, s.err, s.status, s.xcache, s.cstatus)
		}
		seen[s.body] = true
	}
	if n := u.Calls("GET", private); n != 10 || len(seen) != 10 {
		t.Fatalf("10 concurrent requests for a private answer: %d upstream calls, %d distinct bodies; want 10 and 10", n, len(seen))
	}
	t.Logf("Redis down: 40 concurrent requests for a hot key made 1 upstream call (39 collapsed); 10 for a private answer made 10")
}

// TestResilienceStaleWhileRevalidate: past the TTL the entry is served
// STALE at once, even to 20 concurrent clients and with a slow upstream,
// while exactly one background request refreshes it; then it is a HIT with
// the new body.
func TestResilienceStaleWhileRevalidate(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	// ttl 3s rather than 1s: the refresh takes 1s, and the time an upstream
	// takes counts toward the age of its answer (RFC 9111 §4.2.3), so a 1s
	// TTL would make the refreshed entry stale on arrival.
	c := startCaddy(t, resSite(u, fmt.Sprintf(`		redis %s
		route swr /api/swr* 3s {
			stale_while_revalidate 10s
		}`, r.URL())))
	const path = "/api/swr/item"
	oldBody := resMissThenHit(t, c, path)
	client := resClient(30*time.Second, 32)
	defer client.CloseIdleConnections()
	resWarmConns(t, client, c, 20)
	time.Sleep(3200 * time.Millisecond)

	const slow = time.Second
	u.SetDelay(slow)
	defer u.SetDelay(0)
	u.Reset()
	samples := resBurst(20, func(int) resSample { return resSampleOf(client, c.BaseURL, path) })
	for i, s := range samples {
		if s.err != nil || s.status != 200 || s.body != oldBody {
			t.Fatalf("stale request %d: %v %d body %q, want the stored body %q", i, s.err, s.status, s.body, oldBody)
		}
		if s.xcache != "STALE" || !strings.Contains(s.cstatus, "fwd=stale") {
			t.Fatalf("stale request %d: X-Cache %q Cache-Status %q, want STALE with fwd=stale", i, s.xcache, s.cstatus)
		}
		if s.took() > slow/2 {
			t.Fatalf("stale request %d took %v; a stale answer must not wait for the %v upstream", i, s.took(), slow)
		}
	}
	resp, body := c.Get(path)
	if resp.Header.Get("X-Cache") != "STALE" || body != oldBody {
		t.Fatalf("GET during the refresh: X-Cache %q", resp.Header.Get("X-Cache"))
	}
	if age, err := strconv.Atoi(resp.Header.Get("Age")); err != nil || age < 3 {
		t.Fatalf("stale answer: Age %q, want at least 3 (seconds)", resp.Header.Get("Age"))
	}

	// The refresh lands: a HIT with the new body, and the upstream saw
	// exactly one request for all of the above.
	var newBody string
	if !harnessWaitUntil(10*time.Second, func() bool {
		resp, b := c.Get(path)
		if resp.StatusCode != 200 {
			t.Fatalf("GET while waiting for the refresh: %d", resp.StatusCode)
		}
		switch resp.Header.Get("X-Cache") {
		case "HIT":
			newBody = b
			return true
		case "STALE":
			if b != oldBody {
				t.Fatalf("STALE answer with body %q, want the old %q", b, oldBody)
			}
			return false
		default:
			t.Fatalf("GET while waiting for the refresh: X-Cache %q (%s)", resp.Header.Get("X-Cache"), resp.Header.Get("Cache-Status"))
			return false
		}
	}) {
		t.Fatal("the background refresh never produced a HIT")
	}
	if newBody == oldBody {
		t.Fatalf("HIT after the refresh still has the old body %q", oldBody)
	}
	if b := resBody(t, "refreshed", newBody); b.Path != path {
		t.Fatalf("refreshed body %q", newBody)
	}
	if n := u.Calls("GET", path); n != 1 {
		t.Fatalf("upstream called %d times during the stale period, want exactly one background refresh", n)
	}
}

// TestResilienceStaleIfError: past the TTL, an upstream answering 503 or
// not answering at all is replaced by the stale entry on a route with
// stale_if_error; without it the client gets the error.
func TestResilienceStaleIfError(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	gone := newUpstream(t) // closed later: connection refused
	var failing atomic.Bool
	var seq atomic.Int64
	handler := func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "upstream overloaded")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"n":%d}`, r.URL.Path, seq.Add(1))
	}
	for _, p := range []string{"/api/sie/x", "/api/nosie/x"} {
		u.Handle(p, handler)
	}
	// An entry with a validator is kept past its freshness for
	// revalidation, so a stale entry exists on a route without
	// stale_if_error.
	u.Handle("/api/nosie/etag", func(w http.ResponseWriter, r *http.Request) {
		if !failing.Load() {
			w.Header().Set("ETag", `"v1"`)
			w.Header().Set("Cache-Control", "max-age=1")
		}
		handler(w, r)
	})
	c := startCaddy(t, fmt.Sprintf(`	redis_cache {
		redis %s
		route sie /api/sie* 2s {
			stale_if_error 1m
		}
		route nosie /api/nosie* 2s
		route gone /api/gone/* 2s {
			stale_if_error 1m
		}
		route gonenosie /api/gonenosie/* 2s
	}
	@gone path /api/gone/* /api/gonenosie/*
	handle @gone {
		reverse_proxy %s
	}
	handle {
		reverse_proxy %s
	}`, r.URL(), resHostPort(gone), resHostPort(u)))

	bodies := map[string]string{}
	for _, p := range []string{"/api/sie/x", "/api/nosie/x", "/api/nosie/etag", "/api/gone/x", "/api/gonenosie/x"} {
		bodies[p] = resMissThenHit(t, c, p)
	}
	// An entry needs a TTL of at least a second left to be stored, hence
	// 2s TTLs here.
	time.Sleep(2300 * time.Millisecond)
	failing.Store(true)
	gone.srv.CloseClientConnections()
	gone.srv.Close()

	for _, p := range []string{"/api/sie/x", "/api/gone/x"} {
		resp, body := c.Get(p)
		if resp.StatusCode != 200 || body != bodies[p] || resp.Header.Get("X-Cache") != "STALE" {
			t.Fatalf("GET %s with the upstream failing: %d X-Cache %q body %q, want 200 STALE %q",
				p, resp.StatusCode, resp.Header.Get("X-Cache"), body, bodies[p])
		}
		if cs := resp.Header.Get("Cache-Status"); !strings.Contains(cs, "fwd=stale") {
			t.Fatalf("GET %s stale-if-error: Cache-Status %q", p, cs)
		}
		if age, err := strconv.Atoi(resp.Header.Get("Age")); err != nil || age < 2 {
			t.Fatalf("GET %s stale-if-error: Age %q, want at least 2", p, resp.Header.Get("Age"))
		}
	}
	if n := u.Calls("GET", "/api/sie/x"); n != 2 {
		t.Fatalf("sie: upstream called %d times, want 2 (the MISS and the failed refresh)", n)
	}

	// Without stale_if_error the client gets the upstream's error as sent,
	// whether or not a stale entry is still kept.
	for _, p := range []string{"/api/nosie/x", "/api/nosie/etag"} {
		resp, body := c.Get(p)
		if resp.StatusCode != 503 || body != "upstream overloaded" || resp.Header.Get("Retry-After") != "7" {
			t.Fatalf("GET %s with the upstream failing: %d body %q Retry-After %q (X-Cache %q, Cache-Status %q), want the upstream's 503 as sent",
				p, resp.StatusCode, body, resp.Header.Get("Retry-After"), resp.Header.Get("X-Cache"), resp.Header.Get("Cache-Status"))
		}
		if resp.Header.Get("X-Cache") == "STALE" {
			t.Fatalf("GET %s: stale entry served without stale_if_error", p)
		}
	}
	resp, body := c.Get("/api/gonenosie/x")
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Cache") == "STALE" {
		t.Fatalf("gonenosie with the upstream down: %d X-Cache %q body %q, want Caddy's 502", resp.StatusCode, resp.Header.Get("X-Cache"), body)
	}

	// Once the upstream recovers, the route refreshes normally.
	failing.Store(false)
	resp, body = c.Get("/api/sie/x")
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "MISS" || body == bodies["/api/sie/x"] {
		t.Fatalf("sie after recovery: %d X-Cache %q body %q, want a fresh MISS", resp.StatusCode, resp.Header.Get("X-Cache"), body)
	}
}

// TestResilienceStaleFromOrigin: the origin's RFC 5861 directives apply on
// a route without stale settings.
func TestResilienceStaleFromOrigin(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	var failing atomic.Bool
	var seq atomic.Int64
	u.Handle("/api/origin/swr", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=1, stale-while-revalidate=30")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"n":%d}`, r.URL.Path, seq.Add(1))
	})
	u.Handle("/api/origin/sie", func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Header().Set("Cache-Control", "max-age=1, stale-if-error=60")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"n":%d}`, r.URL.Path, seq.Add(1))
	})
	c := startCaddy(t, resSite(u, fmt.Sprintf(`		redis %s
		route origin /api/origin* 5m`, r.URL())))
	swrBody := resMissThenHit(t, c, "/api/origin/swr")
	sieBody := resMissThenHit(t, c, "/api/origin/sie")
	time.Sleep(1300 * time.Millisecond)

	resp, body := c.Get("/api/origin/swr")
	if resp.Header.Get("X-Cache") != "STALE" || body != swrBody || !strings.Contains(resp.Header.Get("Cache-Status"), "fwd=stale") {
		t.Fatalf("origin stale-while-revalidate: X-Cache %q Cache-Status %q body %q, want STALE %q",
			resp.Header.Get("X-Cache"), resp.Header.Get("Cache-Status"), body, swrBody)
	}
	if !harnessWaitUntil(5*time.Second, func() bool { return u.Calls("GET", "/api/origin/swr") == 2 }) {
		t.Fatalf("no background refresh: upstream calls %d", u.Calls("GET", "/api/origin/swr"))
	}

	failing.Store(true)
	resp, body = c.Get("/api/origin/sie")
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "STALE" || body != sieBody {
		t.Fatalf("origin stale-if-error: %d X-Cache %q body %q, want 200 STALE %q", resp.StatusCode, resp.Header.Get("X-Cache"), body, sieBody)
	}
	time.Sleep(300 * time.Millisecond)
	if n := u.Calls("GET", "/api/origin/swr"); n != 2 {
		t.Fatalf("origin stale-while-revalidate: upstream called %d times, want 2 (MISS + one refresh)", n)
	}
}

// ---------------------------------------------------------------------------
// 4. Large and streaming bodies
// ---------------------------------------------------------------------------

const resBigSize = 100 << 20

// resBigBlock is the pattern of the large body: 64 KiB of random bytes,
// each block stamped with its index so a lost, repeated or reordered block
// changes the checksum.
var resBigBlock = func() []byte {
	b := make([]byte, 64<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}()

// resWriteBig writes the large body to w, generated block by block.
func resWriteBig(w io.Writer, flush func()) error {
	block := append([]byte(nil), resBigBlock...)
	for i := 0; i < resBigSize/len(block); i++ {
		binary.BigEndian.PutUint64(block, uint64(i))
		if _, err := w.Write(block); err != nil {
			return err
		}
		if flush != nil && i%64 == 0 {
			flush()
		}
	}
	return nil
}

// TestResilienceLargeBody: 100 MiB responses, with and without
// Content-Length, stream through intact, are not stored, and Caddy's peak
// memory barely moves.
func TestResilienceLargeBody(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	u.Handle("/api/big/cl", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(resBigSize))
		_ = resWriteBig(w, nil)
	})
	u.Handle("/api/big/chunked", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		fl := w.(http.Flusher)
		_ = resWriteBig(w, fl.Flush)
	})
	c := startCaddy(t, resSite(u, fmt.Sprintf(`		redis %s
		route big /api/big* 5m`, r.URL())))

	want := sha256.New()
	_ = resWriteBig(want, nil)
	wantSum := fmt.Sprintf("%x", want.Sum(nil))

	// Baseline after some ordinary traffic.
	for i := 0; i < 20; i++ {
		c.Get(fmt.Sprintf("/api/big/small-%d", i))
	}
	base := resVmHWM(t, c.PID())
	client := resClient(5*time.Minute, 4)
	defer client.CloseIdleConnections()
	for _, path := range []string{"/api/big/cl", "/api/big/chunked"} {
		start := time.Now()
		resp, err := client.Get(c.BaseURL + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("GET %s: reading the body after %d bytes: %v", path, n, err)
		}
		if resp.StatusCode != 200 || n != resBigSize || fmt.Sprintf("%x", h.Sum(nil)) != wantSum {
			t.Fatalf("GET %s: status %d, %d bytes (want %d), checksum match %v", path, resp.StatusCode, n, resBigSize, fmt.Sprintf("%x", h.Sum(nil)) == wantSum)
		}
		if resp.Header.Get("X-Cache") != "MISS" {
			t.Fatalf("GET %s: X-Cache %q (Cache-Status %q), want MISS", path, resp.Header.Get("X-Cache"), resp.Header.Get("Cache-Status"))
		}
		hwm := resVmHWM(t, c.PID())
		t.Logf("GET %s: 100 MiB intact in %v, Cache-Status %q, Caddy peak RSS %d MiB (+%d MiB)",
			path, time.Since(start).Round(time.Millisecond), resp.Header.Get("Cache-Status"), hwm>>10, (hwm-base)>>10)
		// With a Content-Length over max_entry_size nothing is held at all.
		// Without one, up to max_entry_size (4 MiB) is buffered before the
		// response turns out too large and streams on; under -race that
		// buffer costs several times its size in shadow memory.
		limit := int64(40 << 10)
		if path == "/api/big/chunked" && raceEnabled {
			limit = 80 << 10
		}
		if hwm-base > limit {
			t.Fatalf("GET %s: Caddy's peak RSS grew by %d MiB (limit %d MiB) while passing 100 MiB through; the body was held in memory", path, (hwm-base)>>10, limit>>10)
		}
		base = hwm
	}
	if k := r.Keys("rcache:big:*"); len(k) != 20 {
		t.Fatalf("entries %d, want only the 20 small ones", len(k))
	}
	// Not stored: asking again goes to the upstream again.
	resp, err := client.Get(c.BaseURL + "/api/big/cl")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != resBigSize || resp.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("second GET /api/big/cl: %d bytes, %v, X-Cache %q", n, err, resp.Header.Get("X-Cache"))
	}
	if got := u.Calls("GET", "/api/big/cl"); got != 2 {
		t.Fatalf("upstream calls for /api/big/cl: %d, want 2", got)
	}
}

// TestResilienceStreaming: a server-sent event stream reaches the client
// as it is produced, and a chunked response that stalls after its first
// chunk sends that chunk on; neither is stored.
func TestResilienceStreaming(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	u.Handle("/api/stream/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "max-age=60")
		fl := w.(http.Flusher)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "data: event %d\n\n", i); err != nil {
				return
			}
			fl.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	})
	u.Handle("/api/stream/stall", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "first-chunk\n")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(3 * time.Second):
		}
		io.WriteString(w, "second-chunk\n")
	})
	c := startCaddy(t, resSite(u, fmt.Sprintf(`		redis %s
		route stream /api/stream* 5m`, r.URL())))
	client := resClient(30*time.Second, 4)
	defer client.CloseIdleConnections()

	t.Run("event stream", func(t *testing.T) {
		start := time.Now()
		resp, err := client.Get(c.BaseURL + "/api/stream/events")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "MISS" {
			t.Fatalf("event stream: %d X-Cache %q", resp.StatusCode, resp.Header.Get("X-Cache"))
		}
		br := bufio.NewReader(resp.Body)
		for i := 0; i < 3; i++ {
			line, err := br.ReadString('\n')
			if err != nil || line != fmt.Sprintf("data: event %d\n", i) {
				t.Fatalf("event %d: %q %v", i, line, err)
			}
			if i == 0 {
				if d := time.Since(start); d > time.Second {
					t.Fatalf("first event arrived after %v; the stream was buffered", d)
				} else {
					t.Logf("first event after %v; Cache-Status %q", d.Round(time.Millisecond), resp.Header.Get("Cache-Status"))
				}
			}
			if _, err := br.ReadString('\n'); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("stalled chunked body", func(t *testing.T) {
		start := time.Now()
		resp, err := client.Get(c.BaseURL + "/api/stream/stall")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		line, err := br.ReadString('\n')
		first := time.Since(start)
		if err != nil || line != "first-chunk\n" {
			t.Fatalf("first chunk: %q %v", line, err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "MISS" {
			t.Fatalf("stalled body: %d X-Cache %q", resp.StatusCode, resp.Header.Get("X-Cache"))
		}
		t.Logf("first chunk after %v; Cache-Status %q", first.Round(time.Millisecond), resp.Header.Get("Cache-Status"))
		if first > 1800*time.Millisecond {
			t.Fatalf("first chunk arrived after %v; a stalled response must be sent on within ~1.5s", first)
		}
		rest, err := io.ReadAll(br)
		if err != nil || string(rest) != "second-chunk\n" {
			t.Fatalf("rest of the body: %q %v", rest, err)
		}
	})

	// Neither is stored: no entry in Redis, and asking again reaches the
	// upstream again.
	if k := r.Keys("rcache:stream:*"); len(k) != 0 {
		t.Fatalf("streamed responses stored: %v", k)
	}
	resp, err := client.Get(c.BaseURL + "/api/stream/stall")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Header.Get("X-Cache") != "MISS" || u.Calls("GET", "/api/stream/stall") != 2 {
		t.Fatalf("second GET of the stalled body: X-Cache %q, upstream calls %d", resp.Header.Get("X-Cache"), u.Calls("GET", "/api/stream/stall"))
	}
}

// ---------------------------------------------------------------------------
// 5. Reloads
// ---------------------------------------------------------------------------

// resRedisConns counts the connections in CLIENT LIST that are not the
// test's own (named) ones.
func resRedisConns(t *testing.T, cl *redis.Client) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := cl.ClientList(ctx).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		if line != "" && !strings.Contains(line, " name=resilience-test ") {
			n++
		}
	}
	return n
}

// resModuleGoroutines sums the goroutines of a debug=1 goroutine profile
// whose stacks run this module's or go-redis's code.
func resModuleGoroutines(profile string) int {
	n := 0
	for _, block := range strings.Split(profile, "\n\n") {
		if !strings.Contains(block, "caddy-redis-cache") && !strings.Contains(block, "redis/go-redis") {
			continue
		}
		head, _, _ := strings.Cut(strings.TrimSpace(block), " @ ")
		if k, err := strconv.Atoi(head); err == nil {
			n += k
		}
	}
	return n
}

// resRetryGet is a GET as a browser does it: a request whose connection
// was closed or reset before any answer arrived (which Caddy itself does
// to some connections while it hands its listeners to a new config, with
// or without this module) is sent again, up to twice. Any HTTP answer,
// whatever its status, is final.
func resRetryGet(c *caddyProc, retries *atomic.Int64) func(path string) (*http.Response, string, error) {
	return func(path string) (*http.Response, string, error) {
		var err error
		for attempt := 0; attempt < 3; attempt++ {
			var resp *http.Response
			var body string
			resp, body, err = c.GetE(path)
			if resp != nil || err == nil {
				return resp, body, err
			}
			retries.Add(1)
		}
		return nil, "", err
	}
}

// TestResilienceReloads: reloads with a changing route table under load
// fail no request, and 50 reloads leave as many goroutines and Redis
// connections as one.
func TestResilienceReloads(t *testing.T) {
	r := startRedis(t)
	u := newUpstream(t)
	cl := redis.NewClient(resRedisOptionsNamed(r.Addr, "resilience-test"))
	defer cl.Close()

	// The proxy keeps no idle upstream connections: each config's
	// reverse_proxy transport would otherwise keep its own for two
	// minutes after a reload, which is Caddy's business, not the cache's.
	proxy := "\treverse_proxy " + resHostPort(u) + " {\n\t\ttransport http {\n\t\t\tkeepalive off\n\t\t}\n\t}"
	site := func(block string) string {
		return "\tredis_cache {\n\t\tredis " + r.URL() + "\n" + block + "\n\t}\n" + proxy
	}
	// Three route tables. The first also has other store settings, so
	// every reload into or out of it creates a new Redis client and must
	// close the old one. Reload 1 and reload 50 both land on a config with
	// the default store, created by that reload or the one before, so the
	// two measurements see the same kind of pool.
	configs := []string{
		site(`		local_cache 1MiB
		timeout 150ms
		coalesce
		route dash /api/dash* 1m
		route content /api/content* 1m`),
		site(`		local_cache 1MiB
		route content /api/content* 1m
		route dash /api/dash* 1m`),
		site(`		local_cache 1MiB
		route feed /api/feed* 30s
		route content /api/content* 2m {
			stale_while_revalidate 10s
		}
		route dash /api/dash* 1m`),
	}
	c := startCaddy(t, configs[0])
	paths := []string{"/api/content/a", "/api/dash/b", "/api/feed/c", "/other/d"}
	pick := func(w, i int) string {
		if i%3 == 2 {
			return fmt.Sprintf("/api/content/cold-%d-%d", w, i)
		}
		return paths[(w+i)%len(paths)]
	}
	var retries atomic.Int64
	get := resRetryGet(c, &retries)
	reloads := 0
	var storeChanged time.Time // the last reload that replaced the Redis client
	reload := func() {
		t.Helper()
		reloads++
		if reloads%3 != 2 {
			storeChanged = time.Now()
		}
		if err := c.Reload(configs[reloads%len(configs)]); err != nil {
			t.Fatalf("reload %d: %v", reloads, err)
		}
	}
	// settle sends the same traffic each time, so the pools are equally
	// exercised, lets old servers finish their grace period, waits until
	// the goroutine count stops moving, and returns it, the module's and
	// go-redis's share of it, and the Redis connections.
	settle := func(label string) (total, module, conns int) {
		t.Helper()
		for _, s := range resBurst(16, func(i int) resSample {
			p := paths[i%len(paths)]
			s := resSample{path: p, start: time.Now()}
			resp, body, err := get(p)
			s.end, s.err, s.body = time.Now(), err, body
			if resp != nil {
				s.status = resp.StatusCode
			}
			return s
		}) {
			if s.err != nil || s.status != 200 {
				t.Fatalf("%s: GET %s: %v %d", label, s.path, s.err, s.status)
			}
		}
		c.HTTPClient().CloseIdleConnections()
		time.Sleep(2500 * time.Millisecond) // grace_period 2s
		prev := -1
		for i := 0; i < 20; i++ {
			total = resGoroutines(t, c)
			if total == prev {
				break
			}
			prev = total
			time.Sleep(500 * time.Millisecond)
		}
		_, prof := c.Admin("GET", "/debug/pprof/goroutine?debug=1", "")
		module = resModuleGoroutines(prof)
		conns = resRedisConns(t, cl)
		t.Logf("%s: %d goroutines (%d in the module and go-redis), %d Redis connections", label, total, module, conns)
		return total, module, conns
	}

	stop := resLoadWith(get, 6, pick)
	time.Sleep(300 * time.Millisecond)
	reload()
	time.Sleep(300 * time.Millisecond)
	resCheckAll(t, "first reload under load", stop(), 5*time.Second)
	g1, m1, conns1 := settle("after 1 reload")

	stop = resLoadWith(get, 6, pick)
	for reloads < 50 {
		reload()
		time.Sleep(50 * time.Millisecond)
	}
	samples := stop()
	counts := resCheckAll(t, "49 more reloads under load", samples, 5*time.Second)
	t.Logf("%d of %d requests were sent again after Caddy closed their connection during a reload", retries.Load(), len(samples))
	if counts["HIT"] == 0 || counts["MISS"] == 0 {
		t.Fatalf("during reloads: X-Cache %v; the cache should keep working", counts)
	}
	g50, m50, conns50 := settle("after 50 reloads")

	if g50 > g1+10 || m50 > m1+2 {
		_, prof := c.Admin("GET", "/debug/pprof/goroutine?debug=1", "")
		t.Errorf("goroutines: %d (module %d) after 1 reload, %d (module %d) after 50: leaking; profile:\n%s", g1, m1, g50, m50, resShort(prof, 8000))
	}
	list, err := cl.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if conns50 > conns1+2 {
		t.Errorf("Redis connections: %d after 1 reload, %d after 50: leaking\n%s", conns1, conns50, list)
	}
	// Every Redis client the reloads replaced was closed: no connection
	// is older than the last reload that replaced the client.
	maxAge := int(time.Since(storeChanged)/time.Second) + 1
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		if strings.Contains(line, " name=resilience-test ") {
			continue
		}
		_, rest, _ := strings.Cut(line, " age=")
		field, _, _ := strings.Cut(rest, " ")
		if age, err := strconv.Atoi(field); err != nil || age > maxAge {
			t.Errorf("Redis connection older (age=%s) than the last client replacement (%ds ago): a replaced client was not closed: %s", field, maxAge-1, line)
		}
	}
	// The last config (50 % 3 == 2) caches /api/feed.
	resMissThenHit(t, c, "/api/feed/final")
	resMissThenHit(t, c, "/api/content/final")
}

func resRedisOptionsNamed(addr, name string) *redis.Options {
	o := harnessRedisOptions(addr)
	o.ClientName = name
	o.PoolSize = 1
	return o
}
