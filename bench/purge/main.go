// Command purge measures invalidation at scale with a real Caddy (built from
// ./cmd/caddy) and a real redis-server, both started on free 127.0.0.1
// ports and stopped on exit:
//
//	go run ./bench/purge [-entries 100000,1000000] [-conns 16] [-out bench/purge-results.md]
//
// For each entry count N it fills the route "items" with N entries written
// straight into Redis (pipelined SETs of a real encoded entry that Caddy
// stored, under keys of the module's shape bench:items:bulk:<hash>), then
// measures:
//
//  1. route purge: POST /redis_cache/purge {"route":"items"}, several times
//     (one generation bump: the time must not depend on N);
//  2. pattern purge: {"pattern":"*:bulk:*"}, which SCANs and UNLINKs all N
//     keys; time, keys/s, and the count the module reports;
//  3. cache-hit latency through Caddy (-conns goroutines GETting a few warm
//     keys of another route) for a few seconds before the pattern purge,
//     and for as long as the pattern purge runs.
//
// It prints a markdown table and writes it to -out.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

const (
	namespace = "bench"
	hotKeys   = 8
)

var (
	flagEntries = flag.String("entries", "100000,1000000", "comma-separated entry counts to measure")
	flagConns   = flag.Int("conns", 16, "goroutines issuing cache hits during the measurements")
	flagBefore  = flag.Duration("before", 3*time.Second, "how long hit latency is measured before the pattern purge")
	flagRepeat  = flag.Int("route-purges", 7, "route purges per entry count (median and max are reported)")
	flagBody    = flag.Int("body", 64, "origin body size in bytes")
	flagOut     = flag.String("out", "bench/purge-results.md", "markdown file to write (relative to the module root)")
	flagCaddy   = flag.String("caddy", "", "use this Caddy binary instead of building ./cmd/caddy")
	flagKeep    = flag.Bool("keep", false, "keep the work directory (logs, Caddyfile)")
)

// ---------------------------------------------------------------------------
// processes
// ---------------------------------------------------------------------------

// proc is a child process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	procsMu sync.Mutex
	procs   []*proc
	spawnCh = make(chan func())
)

// Children are forked from one OS thread that never exits, so Pdeathsig
// (which fires when the forking thread dies) means "when this program dies".
func init() {
	go func() {
		runtime.LockOSThread()
		for f := range spawnCh {
			f()
		}
	}()
}

func start(name, logPath string, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	done := make(chan error, 1)
	spawnCh <- func() { done <- cmd.Start() }
	if err := <-done; err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig, then SIGKILLs the process group after 10s.
func (p *proc) stop(sig syscall.Signal) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func stopAll() {
	procsMu.Lock()
	ps := append([]*proc(nil), procs...)
	procsMu.Unlock()
	for i := len(ps) - 1; i >= 0; i-- {
		sig := syscall.SIGTERM
		if ps[i].name == "caddy" {
			sig = syscall.SIGINT
		}
		ps[i].stop(sig)
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var workDir string

func fatal(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench/purge: "+format+"\n", a...)
	stopAll()
	if workDir != "" {
		fmt.Fprintf(os.Stderr, "bench/purge: logs kept in %s\n", workDir)
	}
	os.Exit(1)
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "[%s] "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

// moduleRoot walks up from the working directory to the go.mod of this module.
func moduleRoot() string {
	dir, _ := os.Getwd()
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/caddy-redis-cache/caddy-redis-cache") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			fatal("run me inside the caddy-redis-cache module")
		}
		dir = parent
	}
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

var client = &http.Client{
	Timeout: 30 * time.Second,
	Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		DisableCompression:  true,
	},
}

var adminClient = &http.Client{Timeout: 30 * time.Minute, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

func get(url string, headers ...string) (int, string, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", "", err
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Cache"), string(b), err
}

type purgeResult struct {
	Kind     string  `json:"kind"`
	Removed  int64   `json:"removed"`
	Stores   int     `json:"stores"`
	Duration float64 `json:"duration_ms"`
}

// purge posts a purge and returns the module's answer and the wall time
// the admin call took.
func purge(adminURL, body string) (purgeResult, time.Duration) {
	start := time.Now()
	resp, err := adminClient.Post(adminURL+"/redis_cache/purge", "application/json", strings.NewReader(body))
	if err != nil {
		fatal("purge %s: %v", body, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	took := time.Since(start)
	if resp.StatusCode != http.StatusOK {
		fatal("purge %s: status %d: %s", body, resp.StatusCode, b)
	}
	var res purgeResult
	if err := json.Unmarshal(b, &res); err != nil {
		fatal("purge %s: %v (%s)", body, err, b)
	}
	return res, took
}

// ---------------------------------------------------------------------------
// load
// ---------------------------------------------------------------------------

type sample struct {
	start time.Time
	dur   time.Duration
}

// hitLoad GETs the warm keys from conns goroutines until stop is closed. It
// fails on anything but a 200 HIT.
func hitLoad(base string, conns int, stop <-chan struct{}) []sample {
	var mu sync.Mutex
	var all []sample
	var bad atomic.Int64
	var firstBad atomic.Value
	var wg sync.WaitGroup
	for g := 0; g < conns; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			var local []sample
			for i := g; ; i++ {
				select {
				case <-stop:
					mu.Lock()
					all = append(all, local...)
					mu.Unlock()
					return
				default:
				}
				s := time.Now()
				code, xc, _, err := get(fmt.Sprintf("%s/hot/%d", base, i%hotKeys))
				d := time.Since(s)
				if err != nil || code != 200 || xc != "HIT" {
					if bad.Add(1) == 1 {
						firstBad.Store(fmt.Sprintf("status %d X-Cache %q err %v", code, xc, err))
					}
					continue
				}
				local = append(local, sample{start: s, dur: d})
			}
		}(g)
	}
	wg.Wait()
	if n := bad.Load(); n > 0 {
		fatal("%d hot requests were not a 200 HIT (first: %v)", n, firstBad.Load())
	}
	return all
}

type latStats struct {
	n             int
	rps           float64
	p50, p99, max time.Duration
}

func summarize(samples []sample, from, to time.Time) latStats {
	var ds []time.Duration
	for _, s := range samples {
		if !s.start.Before(from) && s.start.Before(to) {
			ds = append(ds, s.dur)
		}
	}
	if len(ds) == 0 {
		return latStats{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	pct := func(p float64) time.Duration {
		i := int(p*float64(len(ds))+0.5) - 1
		return ds[min(max(i, 0), len(ds)-1)]
	}
	return latStats{n: len(ds), rps: float64(len(ds)) / to.Sub(from).Seconds(), p50: pct(0.50), p99: pct(0.99), max: ds[len(ds)-1]}
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64)
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

func redisOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:                     addr,
		PoolSize:                 16,
		ReadTimeout:              time.Minute,
		WriteTimeout:             time.Minute,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
}

// bulkKey is an entry key of the module's shape: namespace, route, escaped
// key part, then 32 hex digits of hash.
func bulkKey(i int) string {
	sum := sha256.Sum256([]byte("bulk-" + strconv.Itoa(i)))
	return namespace + ":items:bulk:" + hex.EncodeToString(sum[:16])
}

// populate writes keys [from, to) with value, pipelined, from 4 goroutines.
func populate(rdb *redis.Client, value []byte, from, to int) {
	ctx := context.Background()
	const batch, workers = 1000, 4
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				lo := int(next.Add(batch)) - batch
				if lo >= to {
					return
				}
				hi := min(lo+batch, to)
				pipe := rdb.Pipeline()
				for i := lo; i < hi; i++ {
					pipe.Set(ctx, bulkKey(i), value, time.Hour)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		fatal("populate: %v", err)
	}
}

func usedMemory(rdb *redis.Client) string {
	raw, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(raw, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory_human:"); ok {
			return v
		}
	}
	return "?"
}

// perCall returns INFO commandstats calls and usec_per_call of a command.
func perCall(rdb *redis.Client, cmd string) (calls int64, usec float64) {
	raw, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(raw, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":")
		if !ok {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				calls, _ = strconv.ParseInt(v, 10, 64)
			}
			if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
				usec, _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	return calls, usec
}

// slowest returns how many commands SLOWLOG recorded (threshold set in
// main) and the longest one.
func slowest(rdb *redis.Client) (int, time.Duration, string) {
	entries, err := rdb.SlowLogGet(context.Background(), -1).Result()
	if err != nil {
		return 0, 0, ""
	}
	var worst time.Duration
	var what string
	for _, e := range entries {
		if e.Duration > worst {
			worst = e.Duration
			if len(e.Args) > 0 {
				what = strings.ToUpper(e.Args[0])
			}
		}
	}
	return len(entries), worst, what
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

type row struct {
	n                    int
	populate             time.Duration
	mem                  string
	routeMed, routeMax   time.Duration
	routeModule          float64 // module-reported median, ms
	patternTook          time.Duration
	patternModule        float64
	removed              int64
	before, during       latStats
	slowCount            int
	slowWorst            time.Duration
	slowWhat             string
	scanUS, unlinkUS     float64
	lookupUS             float64
	lookupCmd            string
	dbsizeBefore, dbsize int64
}

func main() {
	flag.Parse()
	var counts []int
	for _, f := range strings.Split(*flagEntries, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fatal("-entries %q: want positive integers", *flagEntries)
		}
		counts = append(counts, n)
	}
	sort.Ints(counts)
	root := moduleRoot()
	var err error
	workDir, err = os.MkdirTemp("", "redis-cache-purge-bench-")
	if err != nil {
		fatal("%v", err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() { <-sigs; fatal("interrupted") }()

	// Caddy
	caddyBin := *flagCaddy
	if caddyBin == "" {
		caddyBin = filepath.Join(workDir, "caddy")
		logf("building ./cmd/caddy")
		build := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			fatal("go build ./cmd/caddy: %v\n%s", err, out)
		}
	}

	// Redis
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		fatal("redis-server not found: %v", err)
	}
	rport := freePort()
	raddr := "127.0.0.1:" + strconv.Itoa(rport)
	rp, err := start("redis-server", filepath.Join(workDir, "redis.log"), redisBin,
		"--port", strconv.Itoa(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", workDir, "--slowlog-log-slower-than", "1000", "--slowlog-max-len", "10000")
	if err != nil {
		fatal("%v", err)
	}
	rdb := redis.NewClient(redisOptions(raddr))
	defer rdb.Close()
	if !waitFor(10*time.Second, func() bool { return rdb.Ping(context.Background()).Err() == nil }) || rp.exited() {
		fatal("redis-server did not start (see %s/redis.log)", workDir)
	}
	redisVersion := "?"
	if info, err := rdb.Info(context.Background(), "server").Result(); err == nil {
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				redisVersion = v
			}
		}
	}

	// Origin: small JSON bodies.
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal("%v", err)
	}
	var originCalls atomic.Int64
	go func() {
		_ = http.Serve(ol, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			originCalls.Add(1)
			body := fmt.Sprintf(`{"path":%q,"pad":""}`, r.URL.Path)
			if pad := *flagBody - len(body); pad > 0 {
				body = fmt.Sprintf(`{"path":%q,"pad":%q}`, r.URL.Path, strings.Repeat("x", pad))
			}
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = io.WriteString(w, body)
		}))
	}()

	httpPort, adminPort := freePort(), freePort()
	base := "http://127.0.0.1:" + strconv.Itoa(httpPort)
	adminURL := "http://127.0.0.1:" + strconv.Itoa(adminPort)
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	persist_config off
	default_bind 127.0.0.1
	log {
		level WARN
	}
}

%s {
	redis_cache {
		redis redis://%s
		namespace %s
		timeout 1s
		route hot /hot* 1h
		route items /items* 1h {
			key {http.request.header.X-User-Id}
		}
	}
	reverse_proxy %s
}
`, adminPort, base, raddr, namespace, ol.Addr().String())
	cfgPath := filepath.Join(workDir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(caddyfile), 0o644); err != nil {
		fatal("%v", err)
	}
	cp, err := start("caddy", filepath.Join(workDir, "caddy.log"), caddyBin, "run", "--config", cfgPath, "--adapter", "caddyfile")
	if err != nil {
		fatal("%v", err)
	}
	if !waitFor(60*time.Second, func() bool {
		resp, err := adminClient.Get(adminURL + "/config/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(httpPort), time.Second)
		if err == nil {
			c.Close()
		}
		return resp.StatusCode == 200 && err == nil
	}) || cp.exited() {
		fatal("caddy did not start (see %s/caddy.log)", workDir)
	}

	// Warm the hot keys, and store one real entry of the items route whose
	// encoded value the bulk entries reuse.
	for i := 0; i < hotKeys; i++ {
		u := fmt.Sprintf("%s/hot/%d", base, i)
		for try := 0; ; try++ {
			code, xc, _, err := get(u)
			if err == nil && code == 200 && xc == "HIT" {
				break
			}
			if try > 20 {
				fatal("GET %s: never a HIT (status %d X-Cache %q err %v)", u, code, xc, err)
			}
		}
	}
	sampleURL := base + "/items/sample"
	if code, xc, _, err := get(sampleURL, "X-User-Id: sample"); err != nil || code != 200 || xc != "MISS" {
		fatal("GET %s: status %d X-Cache %q err %v", sampleURL, code, xc, err)
	}
	var sampleKeys []string
	iter := rdb.Scan(context.Background(), 0, namespace+":items:sample:*", 100).Iterator()
	for iter.Next(context.Background()) {
		sampleKeys = append(sampleKeys, iter.Val())
	}
	if err := iter.Err(); err != nil || len(sampleKeys) != 1 {
		fatal("sample entry key: %v %v", sampleKeys, err)
	}
	template, err := rdb.Get(context.Background(), sampleKeys[0]).Bytes()
	if err != nil {
		fatal("sample entry: %v", err)
	}
	logf("real encoded entry: %d bytes (body %d bytes), key shape %s", len(template), *flagBody, bulkKey(0))

	var rows []row
	have := 0
	for _, n := range counts {
		// Fill the route up to n bulk entries (the pattern purge of the
		// previous round removed them, so this starts from zero).
		r := row{n: n}
		t0 := time.Now()
		populate(rdb, template, have, n)
		r.populate = time.Since(t0)
		have = n
		r.mem = usedMemory(rdb)
		r.dbsizeBefore = rdb.DBSize(context.Background()).Val()
		logf("N=%d: populated in %v (%.0f keys/s), dbsize %d, used_memory %s", n, r.populate.Round(time.Millisecond), float64(n)/r.populate.Seconds(), r.dbsizeBefore, r.mem)

		// 1. Route purge: one generation bump, whatever N is.
		var walls []time.Duration
		var mods []float64
		for i := 0; i < *flagRepeat; i++ {
			// A live entry of the route: it must be a MISS after the purge.
			if _, xc, _, err := get(sampleURL, "X-User-Id: sample"); err != nil || (xc != "HIT" && xc != "MISS") {
				fatal("sample GET: X-Cache %q %v", xc, err)
			}
			if _, xc, _, _ := get(sampleURL, "X-User-Id: sample"); xc != "HIT" {
				fatal("sample GET before route purge: X-Cache %q, want HIT", xc)
			}
			res, took := purge(adminURL, `{"route":"items"}`)
			walls = append(walls, took)
			mods = append(mods, res.Duration)
			if _, xc, _, _ := get(sampleURL, "X-User-Id: sample"); xc != "MISS" {
				fatal("sample GET after route purge: X-Cache %q, want MISS", xc)
			}
		}
		sort.Slice(walls, func(i, j int) bool { return walls[i] < walls[j] })
		sort.Float64s(mods)
		r.routeMed, r.routeMax, r.routeModule = walls[len(walls)/2], walls[len(walls)-1], mods[len(mods)/2]
		if size := rdb.DBSize(context.Background()).Val(); size < r.dbsizeBefore {
			fatal("route purges removed keys: dbsize %d → %d (a route purge must only bump a generation)", r.dbsizeBefore, size)
		}
		logf("N=%d: route purge median %v (module %.3f ms), max %v", n, r.routeMed, r.routeModule, r.routeMax)

		// 3a. Hit latency before the pattern purge.
		_ = rdb.SlowLogReset(context.Background()).Err()
		_ = rdb.ConfigResetStat(context.Background()).Err()
		stop := make(chan struct{})
		done := make(chan []sample, 1)
		go func() { done <- hitLoad(base, *flagConns, stop) }()
		time.Sleep(500 * time.Millisecond) // connections open
		beforeFrom := time.Now()
		time.Sleep(*flagBefore)
		beforeTo := time.Now()

		// 2. Pattern purge of all N bulk keys, under the same load.
		res, took := purge(adminURL, `{"pattern":"*:bulk:*"}`)
		purgeTo := time.Now()
		close(stop)
		samples := <-done
		r.patternTook, r.patternModule, r.removed = took, res.Duration, res.Removed
		r.before = summarize(samples, beforeFrom, beforeTo)
		r.during = summarize(samples, beforeTo, purgeTo)
		r.slowCount, r.slowWorst, r.slowWhat = slowest(rdb)
		_, r.scanUS = perCall(rdb, "scan")
		_, r.unlinkUS = perCall(rdb, "unlink")
		// The hits' lookups: MGET on a standalone Redis, or pipelined GETs.
		r.lookupCmd = "MGET"
		if calls, us := perCall(rdb, "mget"); calls > 0 {
			r.lookupUS = us
		} else {
			_, r.lookupUS = perCall(rdb, "get")
			r.lookupCmd = "GET"
		}
		r.dbsize = rdb.DBSize(context.Background()).Val()
		if res.Removed != int64(n) {
			fatal("pattern purge removed %d keys, want %d", res.Removed, n)
		}
		left := 0
		iter := rdb.Scan(context.Background(), 0, namespace+":*:bulk:*", 1000).Iterator()
		for iter.Next(context.Background()) {
			left++
		}
		if iter.Err() != nil || left != 0 {
			fatal("after the pattern purge %d bulk keys are left (%v)", left, iter.Err())
		}
		have = 0
		logf("N=%d: pattern purge %v (%.0f keys/s); hits before p50 %s p99 %s max %s ms, during p50 %s p99 %s max %s ms",
			n, took.Round(time.Millisecond), float64(res.Removed)/took.Seconds(),
			ms(r.before.p50), ms(r.before.p99), ms(r.before.max), ms(r.during.p50), ms(r.during.p99), ms(r.during.max))
		rows = append(rows, r)
	}

	// Every hot request was a HIT (hitLoad checks); the origin saw only the
	// warm-up and the sample requests.
	out := report(rows, redisVersion, originCalls.Load())
	fmt.Print(out)
	outPath := *flagOut
	if !filepath.IsAbs(outPath) {
		outPath = filepath.Join(root, outPath)
	}
	if err := os.WriteFile(outPath, []byte(out), 0o644); err != nil {
		fatal("write %s: %v", outPath, err)
	}
	logf("wrote %s", outPath)
	stopAll()
	if !*flagKeep {
		_ = os.RemoveAll(workDir)
	} else {
		logf("work directory kept: %s", workDir)
	}
}

func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func goVersion() string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimSpace(string(out))
}

func report(rows []row, redisVersion string, originCalls int64) string {
	var b strings.Builder
	w := bufio.NewWriter(&b)
	fmt.Fprintf(w, "# redis_cache purge benchmark\n\n")
	fmt.Fprintf(w, "`go run ./bench/purge -entries %s` on %s: %s, Redis %s, %d CPU cores shared by Redis, Caddy, the origin and the load (load average at the end: %s). "+
		"%d goroutines GET %d warm keys of another route through Caddy (keep-alive) for %v before the pattern purge and for as long as it runs. "+
		"Bulk entries are %s-byte bodies stored as the module's real encoded entry under `bench:items:bulk:<32 hex>`.\n\n",
		*flagEntries, time.Now().UTC().Format("2006-01-02 15:04 UTC"), goVersion(), redisVersion, runtime.NumCPU(), loadAvg(),
		*flagConns, hotKeys, *flagBefore, strconv.Itoa(*flagBody))
	fmt.Fprintf(w, "| entries in route | Redis memory | route purge (median / max of %d) | pattern purge | keys removed | pattern purge rate | hits before: p50 / p99 / max ms | hits during pattern purge: p50 / p99 / max ms | hit req/s before / during | Redis µs per SCAN / UNLINK / lookup | Redis commands ≥ 1 ms |\n", *flagRepeat)
	fmt.Fprintf(w, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rows {
		slow := "none"
		if r.slowCount > 0 {
			slow = fmt.Sprintf("%d (max %s ms, %s)", r.slowCount, ms(r.slowWorst), r.slowWhat)
		}
		fmt.Fprintf(w, "| %s | %s | %s / %s ms (module: %.3f ms) | %.2f s | %d | %s keys/s | %s / %s / %s | %s / %s / %s | %.0f / %.0f | %.1f / %.2f / %.2f (%s) | %s |\n",
			thousands(r.n), r.mem, ms(r.routeMed), ms(r.routeMax), r.routeModule,
			r.patternTook.Seconds(), r.removed, thousands(int(float64(r.removed)/r.patternTook.Seconds())),
			ms(r.before.p50), ms(r.before.p99), ms(r.before.max),
			ms(r.during.p50), ms(r.during.p99), ms(r.during.max),
			r.before.rps, r.during.rps, r.scanUS, r.unlinkUS, r.lookupUS, r.lookupCmd, slow)
	}
	fmt.Fprintf(w, "\n")
	fmt.Fprintf(w, "- Route purge: wall time of `POST /redis_cache/purge {\"route\":\"items\"}` as the client sees it (admin HTTP round trip included); \"module\" is the `duration_ms` the module reports. It is one generation bump, so it does not depend on the number of entries; after each purge a live entry of the route was checked to be a MISS.\n")
	fmt.Fprintf(w, "- Pattern purge: `{\"pattern\":\"*:bulk:*\"}` SCANs (COUNT 500) and UNLINKs in pipelined batches; time is the admin call's wall time, and the module's reported `removed` count was checked to equal the number of bulk keys.\n")
	fmt.Fprintf(w, "- Hits: every request was a 200 `X-Cache: HIT` (the run aborts otherwise); \"during\" covers requests started while the pattern purge ran. The origin answered %d requests in the whole run (warm-up and the route-purge checks only).\n", originCalls)
	fmt.Fprintf(w, "- Redis µs per call: INFO commandstats `usec_per_call` over the hit load and the pattern purge (SCAN with COUNT 500, one UNLINK per key, and the hits' lookup command: one MGET of the entry and its generations on a standalone Redis).\n")
	fmt.Fprintf(w, "- Redis commands ≥ 1 ms: SLOWLOG entries over the same period (`slowlog-log-slower-than 1000`). Redis times commands by the wall clock, so on a machine with more runnable processes than cores a command preempted midway is counted too: read it next to the per-call averages and the hit latencies.\n")
	fmt.Fprintf(w, "- All processes share the machine's cores, so absolute times depend on the machine and its load; compare rows of one run.\n")
	w.Flush()
	return b.String()
}

func thousands(n int) string {
	s := strconv.Itoa(n)
	var out []byte
	for i, c := range []byte(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, c)
	}
	return string(out)
}
