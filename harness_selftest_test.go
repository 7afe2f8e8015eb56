package rediscache

// Self-tests of the test harness (harness_test.go). They use only stock Caddy
// directives, so they also pass while the module itself is a stub.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHarnessRedis(t *testing.T) {
	t.Parallel()
	r := startRedis(t, "--maxmemory", "1mb")
	ctx := context.Background()
	c := r.Client()

	if r.Port == 6379 || r.Addr != fmt.Sprintf("127.0.0.1:%d", r.Port) || r.URL() != "redis://"+r.Addr {
		t.Fatalf("bad addressing: port=%d addr=%s url=%s", r.Port, r.Addr, r.URL())
	}
	if mm, err := c.ConfigGet(ctx, "maxmemory").Result(); err != nil || mm["maxmemory"] != "1048576" {
		t.Fatalf("extra args not applied: %v %v", mm, err)
	}
	if err := c.Set(ctx, "h:a", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "h:b", "2", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "other", "3", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got := r.Keys("h:*"); strings.Join(got, ",") != "h:a,h:b" {
		t.Fatalf("Keys = %v", got)
	}

	// CLIENT PAUSE blocks our client for about the pause duration.
	r.Pause(400 * time.Millisecond)
	start := time.Now()
	if err := c.Get(ctx, "h:a").Err(); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Fatalf("GET during CLIENT PAUSE took only %v", el)
	}

	r.Kill()
	if r.Running() {
		t.Fatal("still running after Kill")
	}
	if err := harnessRedisPing(r.Addr); err == nil {
		t.Fatal("PING answered after Kill")
	}
	if err := c.Get(ctx, "h:a").Err(); err == nil {
		t.Fatal("GET succeeded after Kill")
	}

	r.Restart()
	// Same port, empty data set, and the shared client reconnects by itself.
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Fatalf("after Restart: DBSIZE = %d, %v", n, err)
	}
	if mm, err := c.ConfigGet(ctx, "maxmemory").Result(); err != nil || mm["maxmemory"] != "1048576" {
		t.Fatalf("extra args not re-applied on Restart: %v %v", mm, err)
	}
}

func TestHarnessRedisCluster(t *testing.T) {
	t.Parallel()
	rc := startCluster(t)
	if len(rc.URLs()) != 3 {
		t.Fatalf("URLs = %v", rc.URLs())
	}
	ctx := context.Background()
	c := rc.Client()
	const n = 200
	for i := 0; i < n; i++ {
		if err := c.Set(ctx, fmt.Sprintf("hc:%d", i), i, 0).Err(); err != nil {
			t.Fatalf("SET %d: %v", i, err)
		}
	}
	for i := 0; i < n; i++ {
		if v, err := c.Get(ctx, fmt.Sprintf("hc:%d", i)).Int(); err != nil || v != i {
			t.Fatalf("GET %d = %d, %v", i, v, err)
		}
	}
	if got := rc.Keys("hc:*"); len(got) != n {
		t.Fatalf("cluster Keys: %d keys, want %d", len(got), n)
	}
	for _, node := range rc.Nodes {
		if k := node.Keys("hc:*"); len(k) == 0 {
			t.Errorf("node %s holds no keys; slots not spread?", node.Addr)
		}
	}
}

func TestHarnessUpstream(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	get := func(path string, hdr ...string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, u.URL+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sb strings.Builder
		buf := make([]byte, 512)
		for {
			k, err := resp.Body.Read(buf)
			sb.Write(buf[:k])
			if err != nil {
				break
			}
		}
		return resp.StatusCode, sb.String()
	}

	if !strings.HasPrefix(u.URL, "http://127.0.0.1:") {
		t.Fatalf("URL = %s", u.URL)
	}
	code, body := get("/a/b?x=1&y=<2>", "X-User-Id", "alice")
	if want := `{"path":"/a/b","query":"x=1&y=<2>","n":1,"user":"alice"}`; code != 200 || body != want {
		t.Fatalf("got %d %s, want %s", code, body, want)
	}
	_, body = get("/a/b")
	var b upstreamBody
	if err := json.Unmarshal([]byte(body), &b); err != nil || b.N != 2 || b.User != "" {
		t.Fatalf("second body %s (%v)", body, err)
	}

	u.Handle("/custom", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprint(w, "tea")
	})
	if code, body := get("/custom"); code != http.StatusTeapot || body != "tea" {
		t.Fatalf("custom handler: %d %s", code, body)
	}
	if u.Calls("GET", "/a/b") != 2 || u.Calls("GET", "/custom") != 1 || u.Total() != 3 {
		t.Fatalf("counts: ab=%d custom=%d total=%d", u.Calls("GET", "/a/b"), u.Calls("GET", "/custom"), u.Total())
	}
	if u.LastHeaders("GET", "/a/b") == nil {
		t.Fatal("LastHeaders nil")
	}

	u.Reset()
	if u.Total() != 0 || u.Calls("GET", "/a/b") != 0 {
		t.Fatal("Reset did not reset")
	}
	u.SetDelay(200 * time.Millisecond)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(u.URL + "/slow")
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("SetDelay ignored: %v", el)
	}
	if u.Calls("GET", "/slow") != 4 {
		t.Fatalf("slow calls = %d", u.Calls("GET", "/slow"))
	}
	u.SetDelay(0)
	// n keeps growing across Reset so bodies stay unique.
	_, body = get("/z")
	if !strings.Contains(body, `"n":8`) {
		t.Fatalf("n after Reset: %s", body)
	}
}

func TestHarnessCaddy(t *testing.T) {
	u := newUpstream(t)
	c := startCaddyWith(t, caddyOptions{LogLevel: "DEBUG"}, fmt.Sprintf("\treverse_proxy %s", u.URL))

	resp, body := c.Get("/hello?q=1", "X-User-Id: bob")
	if resp.StatusCode != 200 || body != `{"path":"/hello","query":"q=1","n":1,"user":"bob"}` {
		t.Fatalf("proxied GET: %d %q", resp.StatusCode, body)
	}
	if u.Calls("GET", "/hello") != 1 {
		t.Fatalf("upstream calls = %d", u.Calls("GET", "/hello"))
	}
	if !c.WaitForLog(`"level":"debug"`, 5*time.Second) {
		t.Errorf("no debug logs with LogLevel DEBUG")
	}

	// Concurrent requests through the goroutine-safe variant.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, _, err := c.GetE("/par"); err != nil || resp.StatusCode != 200 {
				errs <- fmt.Errorf("GetE: %v %v", resp, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Redirects are not followed.
	if err := c.Reload("\tredir /old /new 301\n\trespond \"reloaded\""); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if resp, _ := c.Get("/old"); resp.StatusCode != 301 || resp.Header.Get("Location") != "/new" {
		t.Fatalf("redirect: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	req, _ := http.NewRequest(http.MethodHead, "/x", nil)
	if resp, _ := c.Do(req); resp.StatusCode != 200 {
		t.Fatalf("HEAD after reload: %d", resp.StatusCode)
	}
	if _, body := c.Get("/x"); body != "reloaded" {
		t.Fatalf("after reload: %q", body)
	}
	if err := c.Reload("\tnot_a_directive foo"); err == nil || !strings.Contains(err.Error(), "not_a_directive") {
		t.Fatalf("bad Reload error: %v", err)
	}
	if code, cfg := c.Admin("GET", "/config/apps/http/servers", ""); code != 200 || !strings.Contains(cfg, fmt.Sprint(c.HTTPPort)) {
		t.Fatalf("admin: %d %s", code, cfg)
	}
	if c.PID() <= 0 {
		t.Fatal("no PID")
	}

	out, err := caddyValidate(t, "\trespond ok")
	if err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("validate ok config: %v\n%s", err, out)
	}
	if out, err := caddyValidate(t, "\tnot_a_directive"); err == nil {
		t.Fatalf("validate accepted bad config:\n%s", out)
	}
	js, err := caddyAdapt(t, fmt.Sprintf("\treverse_proxy %s", u.URL))
	var parsed map[string]any
	if err != nil || json.Unmarshal([]byte(js), &parsed) != nil || !strings.Contains(js, `"reverse_proxy"`) {
		t.Fatalf("adapt: %v\n%s", err, js)
	}

	c.Stop()
	if !c.Exited() {
		t.Fatal("caddy still running after Stop")
	}
}

func TestHarnessCaddyFileAndJSON(t *testing.T) {
	f := startCaddyFile(t, `{
	admin 127.0.0.1:{{ADMIN_PORT}}
	auto_https off
	persist_config off
	default_bind 127.0.0.1
}
http://127.0.0.1:{{HTTP_PORT}} {
	respond "from file"
}
`)
	if _, body := f.Get("/"); body != "from file" {
		t.Fatalf("startCaddyFile: %q", body)
	}

	j := startCaddyJSON(t, `{
  "admin": {"listen": "127.0.0.1:{{ADMIN_PORT}}"},
  "apps": {"http": {"servers": {"s": {
    "listen": ["127.0.0.1:{{HTTP_PORT}}"],
    "routes": [{"handle": [{"handler": "static_response", "body": "from json"}]}]
  }}}}
}`)
	if _, body := j.Get("/"); body != "from json" {
		t.Fatalf("startCaddyJSON: %q", body)
	}
}
