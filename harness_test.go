package rediscache

// Test harness: real redis-server processes (standalone and cluster), a
// counting upstream HTTP server, and a real Caddy binary built from
// ./cmd/caddy (with -race when the tests run with -race).
//
// All helpers register their own cleanup with t.Cleanup, fail the test with
// t.Fatalf on setup errors and dump the process logs when the test failed.
// Everything listens on 127.0.0.1 only; the shared Redis on 127.0.0.1:6379 is
// never used (ports are always picked fresh).
//
// Child processes are started with Pdeathsig=SIGKILL from a dedicated,
// never-exiting OS thread, so they die with the test binary even when it is
// killed (e.g. by the -timeout panic), and TestMain kills any leftovers.
//
// Environment knobs:
//   - REDISCACHE_CADDY_BIN=/path/to/caddy  use a prebuilt binary instead of
//     building ./cmd/caddy (it must have been built with -race iff the tests
//     run with -race if you want race reports from the Caddy process).
//   - REDISCACHE_REDIS_SERVER / REDISCACHE_REDIS_CLI  override the paths of
//     redis-server / redis-cli (default: looked up in $PATH, then /usr/bin).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// TestMain runs the tests, then kills any child process that is still alive
// (should not happen: every helper stops its processes in t.Cleanup) and
// removes the directory holding the Caddy binary built by caddyBinary.
func TestMain(m *testing.M) {
	code := m.Run()
	if n := harnessKillAll(); n > 0 {
		fmt.Fprintf(os.Stderr, "harness: killed %d leftover child process(es)\n", n)
	}
	harnessCaddyBuild.mu.Lock()
	if harnessCaddyBuild.dir != "" {
		_ = os.RemoveAll(harnessCaddyBuild.dir)
	}
	harnessCaddyBuild.mu.Unlock()
	os.Exit(code)
}

// ---------------------------------------------------------------------------
// Generic helpers
// ---------------------------------------------------------------------------

// harnessBuffer is a goroutine-safe bytes.Buffer used to capture process output.
type harnessBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *harnessBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *harnessBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harnessTail returns at most the last n bytes of s, prefixed with a marker when cut.
func harnessTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("[... %d bytes omitted ...]\n%s", len(s)-n, s[len(s)-n:])
}

const harnessLogLimit = 256 << 10

// harnessWaitUntil polls cond every 25ms until it returns true or timeout elapses.
func harnessWaitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(25 * time.Millisecond)
	}
}

var (
	harnessPortsMu    sync.Mutex
	harnessPortsTaken = map[int]bool{}
)

func harnessReservePort(p int) bool {
	harnessPortsMu.Lock()
	defer harnessPortsMu.Unlock()
	if harnessPortsTaken[p] {
		return false
	}
	harnessPortsTaken[p] = true
	return true
}

func harnessCanListen(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// freePort returns a free loopback TCP port. Ports are never handed out twice
// within one test process.
func freePort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("freePort: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if harnessReservePort(p) {
			return p
		}
	}
	t.Fatalf("freePort: could not find an unused port")
	return 0
}

// freeClusterPort returns a port P such that P and P+10000 (the Redis cluster
// bus port) are both free. Both are below the Linux ephemeral range so that
// outgoing connections cannot steal them.
func freeClusterPort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 1000; i++ {
		p := 10000 + rand.IntN(12000) // bus port in [20000, 32000)
		if !harnessCanListen(p) || !harnessCanListen(p+10000) {
			continue
		}
		if !harnessReservePort(p) {
			continue
		}
		if !harnessReservePort(p + 10000) {
			continue
		}
		return p
	}
	t.Fatalf("freeClusterPort: could not find a free port pair")
	return 0
}

func harnessPortOpen(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 200*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func harnessTool(envVar, name string) string {
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return filepath.Join("/usr/bin", name)
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

// harnessProc is a running child process whose stdout+stderr go to a harnessBuffer.
type harnessProc struct {
	name string
	cmd  *exec.Cmd
	logs *harnessBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Wait result, valid after done is closed
}

var (
	harnessProcsMu sync.Mutex
	harnessProcs   = map[*harnessProc]struct{}{}

	harnessSpawnOnce sync.Once
	harnessSpawnCh   chan func()
)

// harnessSpawn runs f on a dedicated goroutine locked to an OS thread that never
// exits. Pdeathsig fires when the *thread* that forked the child exits, so
// forking from a permanent thread makes it mean "when the test binary dies".
func harnessSpawn(f func()) {
	harnessSpawnOnce.Do(func() {
		harnessSpawnCh = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives forever
			for fn := range harnessSpawnCh {
				fn()
			}
		}()
	})
	done := make(chan struct{})
	harnessSpawnCh <- func() { defer close(done); f() }
	<-done
}

// harnessStartProc starts cmd with output captured into logs.
func harnessStartProc(name string, cmd *exec.Cmd, logs *harnessBuffer) (*harnessProc, error) {
	cmd.Stdout = logs
	cmd.Stderr = logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	p := &harnessProc{name: name, cmd: cmd, logs: logs, done: make(chan struct{})}
	var err error
	harnessSpawn(func() { err = cmd.Start() })
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	harnessProcsMu.Lock()
	harnessProcs[p] = struct{}{}
	harnessProcsMu.Unlock()
	go func() {
		p.err = cmd.Wait()
		harnessProcsMu.Lock()
		delete(harnessProcs, p)
		harnessProcsMu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *harnessProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *harnessProc) exitStatus() string {
	if !p.exited() {
		return "running"
	}
	if p.err == nil {
		return "exit status 0"
	}
	return p.err.Error()
}

// stop sends sig, waits up to grace for the exit, then SIGKILLs (whole
// process group) and waits for the exit. Safe to call repeatedly.
func (p *harnessProc) stop(sig syscall.Signal, grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.kill()
}

func (p *harnessProc) kill() {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
	}
}

func harnessKillAll() int {
	harnessProcsMu.Lock()
	ps := make([]*harnessProc, 0, len(harnessProcs))
	for p := range harnessProcs {
		ps = append(ps, p)
	}
	harnessProcsMu.Unlock()
	for _, p := range ps {
		p.kill()
	}
	return len(ps)
}

// ---------------------------------------------------------------------------
// Redis (standalone)
// ---------------------------------------------------------------------------

// redisServer is a redis-server child process on 127.0.0.1:Port.
type redisServer struct {
	Port int
	Addr string // "127.0.0.1:<Port>"
	Dir  string // working directory (--dir)

	t    testing.TB
	args []string // full argument list (without the binary)
	logs *harnessBuffer

	mu     sync.Mutex
	proc   *harnessProc
	client *redis.Client
}

// startRedis starts `redis-server --port P --bind 127.0.0.1 --save ""
// --appendonly no --dir <tmp>` plus extraArgs and waits until it answers PING.
func startRedis(t testing.TB, extraArgs ...string) *redisServer {
	t.Helper()
	return startRedisWith(t, freePort, func(string) []string { return extraArgs })
}

func startRedisWith(t testing.TB, pickPort func(testing.TB) int, extra func(dir string) []string) *redisServer {
	t.Helper()
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := pickPort(t)
		r := &redisServer{
			Port: port,
			Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			Dir:  dir,
			t:    t,
			logs: &harnessBuffer{},
		}
		r.args = append([]string{
			"--port", strconv.Itoa(port),
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "no",
			"--dir", dir,
			"--daemonize", "no",
		}, extra(dir)...)
		err := r.start(10 * time.Second)
		if err == nil {
			t.Cleanup(func() {
				r.Stop()
				r.mu.Lock()
				if r.client != nil {
					_ = r.client.Close()
					r.client = nil
				}
				r.mu.Unlock()
				if t.Failed() {
					t.Logf("redis-server %s log:\n%s", r.Addr, harnessTail(r.logs.String(), harnessLogLimit))
				}
			})
			return r
		}
		lastErr = err
		if !strings.Contains(r.logs.String(), "Address already in use") {
			break
		}
	}
	t.Fatalf("startRedis: %v", lastErr)
	return nil
}

// start launches the process with r.args and waits for PING.
func (r *redisServer) start(timeout time.Duration) error {
	bin := harnessTool("REDISCACHE_REDIS_SERVER", "redis-server")
	fmt.Fprintf(r.logs, "=== harness: starting %s %s\n", bin, strings.Join(harnessQuoteArgs(r.args), " "))
	p, err := harnessStartProc("redis-server "+r.Addr, exec.Command(bin, r.args...), r.logs)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.proc = p
	r.mu.Unlock()
	deadline := time.Now().Add(timeout)
	var pingErr error
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("redis-server on %s exited early (%s); log:\n%s", r.Addr, p.exitStatus(), r.logs.String())
		}
		if pingErr = harnessRedisPing(r.Addr); pingErr == nil {
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	p.kill()
	return fmt.Errorf("redis-server on %s did not answer PING within %v (last error: %v); log:\n%s", r.Addr, timeout, pingErr, r.logs.String())
}

func harnessQuoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return out
}

// harnessRedisPing sends a raw RESP PING and expects +PONG.
func harnessRedisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// URL returns "redis://127.0.0.1:<Port>".
func (r *redisServer) URL() string { return "redis://" + r.Addr }

// Logs returns everything the server printed so far (all incarnations).
func (r *redisServer) Logs() string { return r.logs.String() }

func (r *redisServer) currentProc() *harnessProc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc
}

// Running reports whether the process is alive.
func (r *redisServer) Running() bool {
	p := r.currentProc()
	return p != nil && !p.exited()
}

// Kill SIGKILLs the server and waits until its port refuses connections.
func (r *redisServer) Kill() {
	r.t.Helper()
	if p := r.currentProc(); p != nil {
		p.kill()
		if !p.exited() {
			r.t.Fatalf("redis %s: process did not exit after SIGKILL", r.Addr)
		}
	}
	if !harnessWaitUntil(10*time.Second, func() bool { return !harnessPortOpen(r.Port) }) {
		r.t.Fatalf("redis %s: port still accepts connections after Kill", r.Addr)
	}
}

// Stop shuts the server down gracefully (SIGTERM, SIGKILL after 5s).
// Safe to call repeatedly.
func (r *redisServer) Stop() {
	if p := r.currentProc(); p != nil {
		p.stop(syscall.SIGTERM, 5*time.Second)
	}
}

// Restart starts the server again on the same port with the same arguments
// (stopping it first if it is still running) and waits for PING. The data set
// is empty afterwards (no persistence), except cluster state in nodes.conf.
func (r *redisServer) Restart() {
	r.t.Helper()
	if r.Running() {
		r.Stop()
	}
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if err = r.start(10 * time.Second); err == nil {
			return
		}
		// The old socket may linger for a moment; retry on EADDRINUSE only.
		if !strings.Contains(err.Error(), "Address already in use") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.t.Fatalf("redis Restart: %v", err)
}

func harnessRedisOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:                     addr,
		DialTimeout:              2 * time.Second,
		ReadTimeout:              5 * time.Second,
		WriteTimeout:             5 * time.Second,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
}

// Client returns a go-redis client for this server (one per server, shared;
// closed on cleanup). It reconnects by itself after Kill/Restart.
func (r *redisServer) Client() *redis.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client == nil {
		r.client = redis.NewClient(harnessRedisOptions(r.Addr))
	}
	return r.client
}

// Pause runs CLIENT PAUSE <d> ALL through a separate short-lived connection.
func (r *redisServer) Pause(d time.Duration) {
	r.t.Helper()
	c := redis.NewClient(harnessRedisOptions(r.Addr))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Do(ctx, "CLIENT", "PAUSE", d.Milliseconds(), "ALL").Err(); err != nil {
		r.t.Fatalf("redis %s: CLIENT PAUSE: %v", r.Addr, err)
	}
}

// Keys returns all keys matching pattern (via SCAN), sorted.
func (r *redisServer) Keys(pattern string) []string {
	r.t.Helper()
	keys, err := harnessScanKeys(r.Client(), pattern)
	if err != nil {
		r.t.Fatalf("redis %s: SCAN %q: %v", r.Addr, pattern, err)
	}
	sort.Strings(keys)
	return keys
}

func harnessScanKeys(c *redis.Client, pattern string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seen := map[string]bool{}
	var out []string
	var cursor uint64
	for {
		keys, next, err := c.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
		if next == 0 {
			return out, nil
		}
		cursor = next
	}
}

// ---------------------------------------------------------------------------
// Redis cluster
// ---------------------------------------------------------------------------

// redisCluster is a three-master, zero-replica Redis cluster.
type redisCluster struct {
	Nodes []*redisServer

	t      testing.TB
	mu     sync.Mutex
	client *redis.ClusterClient
}

// startCluster starts three cluster-enabled redis-servers, joins them with
// `redis-cli --cluster create` and waits until the cluster is fully usable.
func startCluster(t testing.TB) *redisCluster {
	t.Helper()
	rc := &redisCluster{t: t}
	for i := 0; i < 3; i++ {
		n := startRedisWith(t, freeClusterPort, func(dir string) []string {
			return []string{
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
				"--cluster-node-timeout", "2000",
			}
		})
		rc.Nodes = append(rc.Nodes, n)
	}
	t.Cleanup(func() {
		rc.mu.Lock()
		if rc.client != nil {
			_ = rc.client.Close()
			rc.client = nil
		}
		rc.mu.Unlock()
	})

	args := []string{"--cluster", "create"}
	for _, n := range rc.Nodes {
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, harnessTool("REDISCACHE_REDIS_CLI", "redis-cli"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("startCluster: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}

	// Every node must agree that the cluster is complete.
	var lastInfo string
	ok := harnessWaitUntil(30*time.Second, func() bool {
		for _, n := range rc.Nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			info, err := n.Client().ClusterInfo(ctx).Result()
			cancel()
			if err != nil {
				lastInfo = fmt.Sprintf("%s: %v", n.Addr, err)
				return false
			}
			if !strings.Contains(info, "cluster_state:ok") ||
				!strings.Contains(info, "cluster_slots_ok:16384") ||
				!strings.Contains(info, "cluster_known_nodes:3") {
				lastInfo = n.Addr + ":\n" + info
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("startCluster: cluster did not become ready; last CLUSTER INFO %s\nredis-cli output:\n%s", lastInfo, out)
	}

	// And a cluster client must be able to use keys in slots of every node.
	c := rc.Client()
	var lastErr error
	ok = harnessWaitUntil(30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for i := 0; i < 20; i++ {
			k := fmt.Sprintf("harness:probe:%d", i)
			if err := c.Set(ctx, k, i, 0).Err(); err != nil {
				lastErr = fmt.Errorf("SET %s: %w", k, err)
				return false
			}
			v, err := c.Get(ctx, k).Int()
			if err != nil || v != i {
				lastErr = fmt.Errorf("GET %s = %d, %v", k, v, err)
				return false
			}
			if err := c.Del(ctx, k).Err(); err != nil {
				lastErr = fmt.Errorf("DEL %s: %w", k, err)
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("startCluster: cluster client not usable: %v", lastErr)
	}
	return rc
}

// URLs returns "redis://127.0.0.1:P" for every node.
func (rc *redisCluster) URLs() []string {
	out := make([]string, len(rc.Nodes))
	for i, n := range rc.Nodes {
		out[i] = n.URL()
	}
	return out
}

// Addrs returns "127.0.0.1:P" for every node.
func (rc *redisCluster) Addrs() []string {
	out := make([]string, len(rc.Nodes))
	for i, n := range rc.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Client returns a shared go-redis ClusterClient (closed on cleanup).
func (rc *redisCluster) Client() *redis.ClusterClient {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.client == nil {
		rc.client = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                    rc.Addrs(),
			DialTimeout:              2 * time.Second,
			ReadTimeout:              5 * time.Second,
			WriteTimeout:             5 * time.Second,
			DisableIdentity:          true,
			MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		})
	}
	return rc.client
}

// Keys SCANs every master and returns the sorted union of matching keys.
func (rc *redisCluster) Keys(pattern string) []string {
	rc.t.Helper()
	var out []string
	for _, n := range rc.Nodes {
		out = append(out, n.Keys(pattern)...)
	}
	sort.Strings(out)
	return out
}

// ---------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------

// upstream is a counting HTTP origin server on 127.0.0.1.
type upstream struct {
	URL string // "http://127.0.0.1:<port>"

	srv *httptest.Server

	mu       sync.Mutex
	calls    map[string]int // "METHOD path" -> count
	total    int
	seq      int // never reset: body "n" stays unique across Reset
	handlers map[string]http.HandlerFunc
	delay    time.Duration
	lastHdr  map[string]http.Header
}

// upstreamBody is the default JSON body; field order is part of the contract.
type upstreamBody struct {
	Path  string `json:"path"`
	Query string `json:"query"`
	N     int    `json:"n"`
	User  string `json:"user"`
}

// newUpstream starts the upstream; it is closed on cleanup.
func newUpstream(t testing.TB) *upstream {
	t.Helper()
	u := &upstream{
		calls:    map[string]int{},
		handlers: map[string]http.HandlerFunc{},
		lastHdr:  map[string]http.Header{},
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("newUpstream: %v", err)
	}
	u.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(u.serveHTTP)}}
	u.srv.Start()
	u.URL = u.srv.URL
	t.Cleanup(func() {
		u.srv.CloseClientConnections()
		u.srv.Close()
	})
	return u
}

func (u *upstream) serveHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Method + " " + r.URL.Path
	u.mu.Lock()
	u.total++
	u.seq++
	n := u.seq
	u.calls[key]++
	u.lastHdr[key] = r.Header.Clone()
	h := u.handlers[r.URL.Path]
	d := u.delay
	u.mu.Unlock()

	if d > 0 {
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return
		}
	}
	if h != nil {
		h(w, r)
		return
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(upstreamBody{Path: r.URL.Path, Query: r.URL.RawQuery, N: n, User: r.Header.Get("X-User-Id")})
	body := bytes.TrimRight(buf.Bytes(), "\n")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// Handle overrides the handler for an exact path (calls are still counted and
// SetDelay still applies).
func (u *upstream) Handle(pattern string, h http.HandlerFunc) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.handlers[pattern] = h
}

// SetDelay delays every response by d (0 disables).
func (u *upstream) SetDelay(d time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.delay = d
}

// Calls returns how many requests with this method and path arrived.
func (u *upstream) Calls(method, path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.calls[method+" "+path]
}

// Total returns the number of requests that arrived since start / Reset.
func (u *upstream) Total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.total
}

// LastHeaders returns a copy of the request headers of the latest request
// with this method and path (nil if none).
func (u *upstream) LastHeaders(method, path string) http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lastHdr[method+" "+path].Clone()
}

// Reset zeroes the call counters (the body "n" sequence keeps growing so a
// fresh body never equals one produced before the Reset).
func (u *upstream) Reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls = map[string]int{}
	u.lastHdr = map[string]http.Header{}
	u.total = 0
}

// ---------------------------------------------------------------------------
// Caddy binary
// ---------------------------------------------------------------------------

var harnessCaddyBuild struct {
	once sync.Once
	mu   sync.Mutex
	dir  string
	path string
	err  error
	took time.Duration
}

// caddyBinary builds ./cmd/caddy (with -race when the tests run with -race)
// once per test process and returns the binary path.
func caddyBinary(t testing.TB) string {
	t.Helper()
	harnessCaddyBuild.once.Do(func() {
		if p := os.Getenv("REDISCACHE_CADDY_BIN"); p != "" {
			harnessCaddyBuild.path = p
			if _, err := os.Stat(p); err != nil {
				harnessCaddyBuild.err = fmt.Errorf("REDISCACHE_CADDY_BIN: %w", err)
			}
			return
		}
		dir, err := os.MkdirTemp("", "rediscache-caddy-bin-")
		if err != nil {
			harnessCaddyBuild.err = err
			return
		}
		harnessCaddyBuild.mu.Lock()
		harnessCaddyBuild.dir = dir
		harnessCaddyBuild.mu.Unlock()
		gobin, err := exec.LookPath("go")
		if err != nil {
			if gr := os.Getenv("GOROOT"); gr != "" {
				gobin, err = filepath.Join(gr, "bin", "go"), nil
			}
		}
		if err != nil {
			harnessCaddyBuild.err = fmt.Errorf("go command not found: %w", err)
			return
		}
		out := filepath.Join(dir, "caddy")
		args := []string{"build"}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "-o", out, "./cmd/caddy")
		cmd := exec.Command(gobin, args...)
		cmd.Dir = harnessModuleRoot()
		start := time.Now()
		output, err := cmd.CombinedOutput()
		harnessCaddyBuild.took = time.Since(start)
		if err != nil {
			harnessCaddyBuild.err = fmt.Errorf("go %s (in %s): %v\n%s", strings.Join(args, " "), cmd.Dir, err, output)
			return
		}
		harnessCaddyBuild.path = out
		t.Logf("caddyBinary: built %s (race=%v) in %v", out, raceEnabled, harnessCaddyBuild.took.Round(time.Millisecond))
	})
	if harnessCaddyBuild.err != nil {
		t.Fatalf("caddyBinary: %v", harnessCaddyBuild.err)
	}
	return harnessCaddyBuild.path
}

// harnessModuleRoot is the directory of this package (the test's working directory).
func harnessModuleRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		return "."
	}
	return wd
}

// ---------------------------------------------------------------------------
// Caddy process
// ---------------------------------------------------------------------------

// caddyOptions tunes the generated Caddyfile wrapper / process.
type caddyOptions struct {
	// LogLevel for the global `log` block; "" means INFO. Use "DEBUG" to see
	// the module's debug logs.
	LogLevel string
	// ExtraGlobal is inserted verbatim into the global options block.
	ExtraGlobal string
	// Env holds extra "K=V" environment entries for the process.
	Env []string
}

// caddyProc is a running `caddy run` process.
type caddyProc struct {
	HTTPPort, AdminPort int
	BaseURL             string // "http://127.0.0.1:<HTTPPort>"
	AdminURL            string // "http://127.0.0.1:<AdminPort>"

	t      testing.TB
	opts   caddyOptions
	dir    string
	logs   *harnessBuffer
	proc   *harnessProc
	client *http.Client
}

// harnessCaddyfile renders the standard Caddyfile around siteBody.
func harnessCaddyfile(opts caddyOptions, httpPort, adminPort int, siteBody string) string {
	level := opts.LogLevel
	if level == "" {
		level = "INFO"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tgrace_period 2s\n\tdefault_bind 127.0.0.1\n", adminPort)
	fmt.Fprintf(&b, "\tlog {\n\t\tlevel %s\n\t}\n", level)
	if opts.ExtraGlobal != "" {
		b.WriteString(opts.ExtraGlobal)
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "}\n\nhttp://127.0.0.1:%d {\n%s\n}\n", httpPort, siteBody)
	return b.String()
}

func harnessSubstPorts(text string, httpPort, adminPort int) string {
	return strings.NewReplacer(
		"{{HTTP_PORT}}", strconv.Itoa(httpPort),
		"{{ADMIN_PORT}}", strconv.Itoa(adminPort),
	).Replace(text)
}

// startCaddy runs Caddy with the standard wrapper Caddyfile (INFO logs).
func startCaddy(t testing.TB, siteBody string) *caddyProc {
	t.Helper()
	return startCaddyWith(t, caddyOptions{}, siteBody)
}

// startCaddyWith is startCaddy with options (e.g. LogLevel: "DEBUG").
func startCaddyWith(t testing.TB, opts caddyOptions, siteBody string) *caddyProc {
	t.Helper()
	return harnessLaunchCaddy(t, opts, "Caddyfile", "caddyfile", true, func(httpPort, adminPort int) string {
		return harnessCaddyfile(opts, httpPort, adminPort, siteBody)
	})
}

// startCaddyFile runs Caddy with a complete Caddyfile in which {{HTTP_PORT}}
// and {{ADMIN_PORT}} are substituted. It must contain
// `admin 127.0.0.1:{{ADMIN_PORT}}`; the HTTP port is awaited only if
// {{HTTP_PORT}} occurs.
func startCaddyFile(t testing.TB, fullCaddyfile string) *caddyProc {
	t.Helper()
	if !strings.Contains(fullCaddyfile, "{{ADMIN_PORT}}") {
		t.Fatalf("startCaddyFile: the Caddyfile must set `admin 127.0.0.1:{{ADMIN_PORT}}`")
	}
	return harnessLaunchCaddy(t, caddyOptions{}, "Caddyfile", "caddyfile", strings.Contains(fullCaddyfile, "{{HTTP_PORT}}"), func(httpPort, adminPort int) string {
		return harnessSubstPorts(fullCaddyfile, httpPort, adminPort)
	})
}

// startCaddyJSON runs Caddy with a JSON config in which {{HTTP_PORT}} and
// {{ADMIN_PORT}} are substituted (admin.listen must use {{ADMIN_PORT}}).
func startCaddyJSON(t testing.TB, jsonConfig string) *caddyProc {
	t.Helper()
	if !strings.Contains(jsonConfig, "{{ADMIN_PORT}}") {
		t.Fatalf(`startCaddyJSON: the config must set "admin": {"listen": "127.0.0.1:{{ADMIN_PORT}}"}`)
	}
	return harnessLaunchCaddy(t, caddyOptions{}, "caddy.json", "", strings.Contains(jsonConfig, "{{HTTP_PORT}}"), func(httpPort, adminPort int) string {
		return harnessSubstPorts(jsonConfig, httpPort, adminPort)
	})
}

func harnessCaddyEnv(dir string, extra []string) []string {
	env := append(os.Environ(),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
	)
	return append(env, extra...)
}

func harnessLaunchCaddy(t testing.TB, opts caddyOptions, fileName, adapter string, waitHTTP bool, render func(httpPort, adminPort int) string) *caddyProc {
	t.Helper()
	bin := caddyBinary(t)
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		c := &caddyProc{t: t, opts: opts, dir: dir, logs: &harnessBuffer{}}
		c.HTTPPort = freePort(t)
		c.AdminPort = freePort(t)
		c.BaseURL = fmt.Sprintf("http://127.0.0.1:%d", c.HTTPPort)
		c.AdminURL = fmt.Sprintf("http://127.0.0.1:%d", c.AdminPort)
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = nil
		tr.DisableCompression = true // tests see exactly the encoding Caddy sends
		tr.MaxIdleConnsPerHost = 64
		c.client = &http.Client{
			Transport:     tr,
			Timeout:       10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}

		cfg := filepath.Join(dir, fileName)
		if err := os.WriteFile(cfg, []byte(render(c.HTTPPort, c.AdminPort)), 0o644); err != nil {
			t.Fatalf("startCaddy: %v", err)
		}
		args := []string{"run", "--config", cfg}
		if adapter != "" {
			args = append(args, "--adapter", adapter)
		}
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		cmd.Env = harnessCaddyEnv(dir, opts.Env)
		p, err := harnessStartProc("caddy", cmd, c.logs)
		if err != nil {
			t.Fatalf("startCaddy: %v", err)
		}
		c.proc = p
		lastErr = c.waitReady(60*time.Second, waitHTTP)
		if lastErr == nil {
			t.Cleanup(c.cleanup)
			return c
		}
		p.kill()
		tr.CloseIdleConnections()
		if !strings.Contains(c.logs.String(), "address already in use") {
			break
		}
	}
	t.Fatalf("startCaddy: %v", lastErr)
	return nil
}

func (c *caddyProc) waitReady(timeout time.Duration, waitHTTP bool) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if c.proc.exited() {
			return fmt.Errorf("caddy exited early (%s); config:\n%s\nlogs:\n%s", c.proc.exitStatus(), c.configText(), c.logs.String())
		}
		code, body, err := c.admin(http.MethodGet, "/config/", "")
		switch {
		case err != nil:
			last = "admin: " + err.Error()
		case code != http.StatusOK:
			last = fmt.Sprintf("admin: GET /config/ = %d %s", code, body)
		case waitHTTP && !harnessPortOpen(c.HTTPPort):
			last = fmt.Sprintf("HTTP port %d not accepting connections", c.HTTPPort)
		default:
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("caddy not ready after %v (%s); config:\n%s\nlogs:\n%s", timeout, last, c.configText(), c.logs.String())
}

func (c *caddyProc) configText() string {
	for _, name := range []string{"Caddyfile", "caddy.json"} {
		if b, err := os.ReadFile(filepath.Join(c.dir, name)); err == nil {
			return string(b)
		}
	}
	return "(none)"
}

func (c *caddyProc) cleanup() {
	c.Stop()
	c.client.CloseIdleConnections()
	logs := c.logs.String()
	if strings.Contains(logs, "WARNING: DATA RACE") {
		c.t.Errorf("caddy process reported a DATA RACE (see logs below)")
	}
	if c.t.Failed() {
		c.t.Logf("caddy (pid %d, %s) config:\n%s\ncaddy logs:\n%s", c.PID(), c.proc.exitStatus(), c.configText(), harnessTail(logs, harnessLogLimit))
	}
}

// Logs returns everything Caddy printed so far (stdout+stderr).
func (c *caddyProc) Logs() string { return c.logs.String() }

// WaitForLog waits until the logs contain substr; reports whether they did.
func (c *caddyProc) WaitForLog(substr string, timeout time.Duration) bool {
	return harnessWaitUntil(timeout, func() bool { return strings.Contains(c.logs.String(), substr) })
}

// PID returns the process id.
func (c *caddyProc) PID() int { return c.proc.cmd.Process.Pid }

// Exited reports whether the process has exited.
func (c *caddyProc) Exited() bool { return c.proc.exited() }

// HTTPClient returns the client used by Get/Do (no redirects, no transparent
// gzip, 10s timeout); safe for concurrent use.
func (c *caddyProc) HTTPClient() *http.Client { return c.client }

// Stop sends SIGINT, waits up to 10s, then kills. Safe to call repeatedly.
func (c *caddyProc) Stop() {
	c.proc.stop(syscall.SIGINT, 10*time.Second)
}

// NewRequest builds a request for path (relative to BaseURL unless it is an
// absolute URL) with "Name: value" headers. A "Host: x" header sets req.Host.
func (c *caddyProc) NewRequest(method, path string, body io.Reader, headers ...string) (*http.Request, error) {
	u := path
	if !strings.HasPrefix(path, "http://") && !strings.HasPrefix(path, "https://") {
		u = c.BaseURL + path
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return nil, fmt.Errorf("bad header %q (want \"Name: value\")", h)
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if strings.EqualFold(name, "Host") {
			req.Host = value
			continue
		}
		req.Header.Add(name, value)
	}
	return req, nil
}

// GetE is Get returning errors instead of failing; safe in any goroutine.
func (c *caddyProc) GetE(path string, headers ...string) (*http.Response, string, error) {
	req, err := c.NewRequest(http.MethodGet, path, nil, headers...)
	if err != nil {
		return nil, "", err
	}
	return c.DoE(req)
}

// DoE is Do returning errors instead of failing; safe in any goroutine. A
// request with a relative URL is resolved against BaseURL. The returned
// response's Body is already read (it is replaced by an in-memory copy).
func (c *caddyProc) DoE(req *http.Request) (*http.Response, string, error) {
	if req.URL.Host == "" {
		base, err := req.URL.Parse(c.BaseURL)
		if err != nil {
			return nil, "", err
		}
		req.URL.Scheme, req.URL.Host = base.Scheme, base.Host
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(b))
	if err != nil {
		return resp, string(b), fmt.Errorf("reading body: %w", err)
	}
	return resp, string(b), nil
}

// Get performs a GET of path (e.g. "/api?x=1") with "Name: value" headers and
// returns the response (body already read) and the body. It fails the test on
// transport errors, so call it from the test goroutine only; use GetE from
// other goroutines.
func (c *caddyProc) Get(path string, headers ...string) (*http.Response, string) {
	c.t.Helper()
	resp, body, err := c.GetE(path, headers...)
	if err != nil {
		c.t.Fatalf("GET %s: %v", path, err)
	}
	return resp, body
}

// Do sends req (see DoE); fails the test on transport errors (test goroutine
// only).
func (c *caddyProc) Do(req *http.Request) (*http.Response, string) {
	c.t.Helper()
	resp, body, err := c.DoE(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	return resp, body
}

// Reload replaces the config with the standard wrapper around siteBody (same
// ports and options) via POST /load.
func (c *caddyProc) Reload(siteBody string) error {
	return c.load("text/caddyfile", harnessCaddyfile(c.opts, c.HTTPPort, c.AdminPort, siteBody))
}

// ReloadFile loads a complete Caddyfile ({{HTTP_PORT}}/{{ADMIN_PORT}}
// substituted) via POST /load.
func (c *caddyProc) ReloadFile(fullCaddyfile string) error {
	return c.load("text/caddyfile", harnessSubstPorts(fullCaddyfile, c.HTTPPort, c.AdminPort))
}

// ReloadJSON loads a JSON config ({{HTTP_PORT}}/{{ADMIN_PORT}} substituted).
func (c *caddyProc) ReloadJSON(jsonConfig string) error {
	return c.load("application/json", harnessSubstPorts(jsonConfig, c.HTTPPort, c.AdminPort))
}

func (c *caddyProc) load(contentType, cfg string) error {
	req, err := http.NewRequest(http.MethodPost, c.AdminURL+"/load", strings.NewReader(cfg))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", contentType)
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("POST /load: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /load: status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return nil
}

// Admin calls the admin API and returns status code and body. A non-empty
// body is sent as application/json. Transport errors fail the test.
func (c *caddyProc) Admin(method, path, body string) (int, string) {
	c.t.Helper()
	code, b, err := c.admin(method, path, body)
	if err != nil {
		c.t.Fatalf("admin %s %s: %v", method, path, err)
	}
	return code, b
}

func (c *caddyProc) admin(method, path, body string) (int, string, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.AdminURL+path, rd)
	if err != nil {
		return 0, "", err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// ---------------------------------------------------------------------------
// caddy validate / adapt
// ---------------------------------------------------------------------------

func harnessCaddyTool(t testing.TB, siteBody string, sub string) (stdout, stderr string, err error) {
	t.Helper()
	bin := caddyBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "Caddyfile")
	// Ports are not bound by validate/adapt; fresh ones keep the text realistic.
	text := harnessCaddyfile(caddyOptions{}, freePort(t), freePort(t), siteBody)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatalf("caddy %s: %v", sub, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, sub, "--config", cfg, "--adapter", "caddyfile")
	cmd.Dir = dir
	cmd.Env = harnessCaddyEnv(dir, nil)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return so.String(), se.String(), err
}

// caddyValidate writes the wrapper Caddyfile around siteBody and runs
// `caddy validate`; it returns the combined output and the exit error.
func caddyValidate(t testing.TB, siteBody string) (string, error) {
	t.Helper()
	so, se, err := harnessCaddyTool(t, siteBody, "validate")
	out := so + se
	if err != nil {
		return out, fmt.Errorf("caddy validate: %w\n%s", err, out)
	}
	return out, nil
}

// caddyAdapt writes the wrapper Caddyfile around siteBody and runs
// `caddy adapt`; it returns the JSON (stdout). On failure the error contains
// stderr.
func caddyAdapt(t testing.TB, siteBody string) (string, error) {
	t.Helper()
	so, se, err := harnessCaddyTool(t, siteBody, "adapt")
	if err != nil {
		return so, fmt.Errorf("caddy adapt: %w\n%s", err, se)
	}
	return strings.TrimSpace(so), nil
}

// harnessLoad runs workers goroutines that call one(worker, iteration) in a
// loop, 5 ms apart, until stop is called; stop (idempotent) returns every
// sample.
func harnessLoad[S any](workers int, one func(w, i int) S) (stop func() []S) {
	var (
		mu      sync.Mutex
		samples []S
		wg      sync.WaitGroup
		done    = make(chan struct{})
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				s := one(w, i)
				mu.Lock()
				samples = append(samples, s)
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}(w)
	}
	var once sync.Once
	return func() []S {
		once.Do(func() { close(done) })
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return append([]S(nil), samples...)
	}
}
