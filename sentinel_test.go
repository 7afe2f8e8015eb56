package rediscache

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startSentinel runs a redis-server in Sentinel mode monitoring master as
// "mymaster", and returns its port.
func startSentinel(t *testing.T, master *redisServer) int {
	t.Helper()
	port := freePort(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\nsentinel down-after-milliseconds mymaster 1000\n", port, dir, master.Port)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := runRedisServer(t, "sentinel", conf, "--sentinel")
	if !harnessWaitUntil(15*time.Second, func() bool {
		out, err := exec.Command(harnessTool("REDISCACHE_REDIS_CLI", "redis-cli"), "-p", fmt.Sprint(port),
			"sentinel", "get-master-addr-by-name", "mymaster").Output()
		return err == nil && strings.Contains(string(out), fmt.Sprint(master.Port))
	}) {
		t.Fatalf("sentinel on %d never reported the master:\n%s", port, logs.String())
	}
	return port
}

// runRedisServer starts redis-server with args that the harness's
// startRedis cannot express (a config file first, TLS only), kills it when
// the test ends, and returns its log.
func runRedisServer(t *testing.T, what string, args ...string) *harnessBuffer {
	t.Helper()
	cmd := exec.Command(harnessTool("REDISCACHE_REDIS_SERVER", "redis-server"), args...)
	logs := &harnessBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", what, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		if t.Failed() {
			t.Logf("%s log:\n%s", what, logs.String())
		}
	})
	return logs
}

// A Sentinel master name makes the module find Redis through Sentinel.
func TestSentinelFailoverClient(t *testing.T) {
	master := startRedis(t)
	sentinelPort := startSentinel(t, master)
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`
	redis_cache {
		redis redis://127.0.0.1:%d
		sentinel_master mymaster
		namespace sent
		route api /api/* 1m
	}
	reverse_proxy %s`, sentinelPort, strings.TrimPrefix(up.URL, "http://")))

	res, body1 := c.Get("/api/x")
	if res.StatusCode != 200 || res.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("first request: %d X-Cache=%q", res.StatusCode, res.Header.Get("X-Cache"))
	}
	res, body2 := c.Get("/api/x")
	if res.Header.Get("X-Cache") != "HIT" || body2 != body1 {
		t.Fatalf("second request: X-Cache=%q body %q, want HIT with %q", res.Header.Get("X-Cache"), body2, body1)
	}
	if up.Calls("GET", "/api/x") != 1 {
		t.Errorf("upstream called %d times, want 1", up.Calls("GET", "/api/x"))
	}
	if keys := master.Keys("sent:api:*"); len(keys) != 1 {
		t.Errorf("master holds entry keys %v, want exactly one", keys)
	}
}
