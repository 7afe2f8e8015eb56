package rediscache

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Issue 12: an attacker on the internet sends any request; the origin
// echoes what it received. Each test asserts what a victim sees: the
// origin's answer to the victim's own request, never one computed from the
// attacker's.

// hostileEnv is one Redis (unless embedded), one echoing origin and one
// Caddy that accepts every Host and speaks HTTP/1.1 and h2c.
type hostileEnv struct {
	r *redisServer
	u *upstream
	c *caddyProc
}

// hostileStart starts the environment with a redis_cache block made of
// settings (routes included). With embedded set, no Redis is used.
func hostileStart(t *testing.T, embedded bool, settings string) *hostileEnv {
	t.Helper()
	e := &hostileEnv{u: newUpstream(t)}
	store := ""
	if !embedded {
		e.r = startRedis(t)
		store = "redis " + e.r.URL() + "\n\t\ttimeout 2s\n"
	}
	e.c = startCaddyFile(t, `{
	admin 127.0.0.1:{{ADMIN_PORT}}
	auto_https off
	persist_config off
	grace_period 2s
	default_bind 127.0.0.1
	log {
		level INFO
	}
	servers {
		protocols h1 h2c
	}
}

http://:{{HTTP_PORT}} {
	redis_cache {
		`+store+`
		namespace hostile
`+settings+`
	}
	reverse_proxy `+strings.TrimPrefix(e.u.URL, "http://")+`
}
`)
	return e
}

// hostileEcho answers with everything it received, numbered so that a HIT
// is told from a MISS, with the given Cache-Control.
func hostileEcho(cacheControl string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var b strings.Builder
		fmt.Fprintf(&b, "n=%d\nmethod=%s\nhost=%s\nuri=%s\nbody=%q\n", rfcSeq.Add(1), r.Method, r.Host, r.RequestURI, body)
		names := make([]string, 0, len(r.Header))
		for name := range r.Header {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			fmt.Fprintf(&b, "h:%s=%q\n", name, r.Header.Values(name))
		}
		w.Header().Set("Cache-Control", cacheControl)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, b.String())
	}
}

// send makes one request with header lines "Name: value" (repeatable; an
// empty value is sent as an empty line) and returns the answer.
func (e *hostileEnv) send(t *testing.T, method, path string, lines ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, e.c.BaseURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range lines {
		name, value, _ := strings.Cut(line, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if strings.EqualFold(name, "Host") {
			req.Host = value
			continue
		}
		req.Header[http.CanonicalHeaderKey(name)] = append(req.Header[http.CanonicalHeaderKey(name)], value)
	}
	resp, body, err := e.c.DoE(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp, body
}

// victimSees fails unless the victim's answer contains every want and none
// of notWant, printing the Caddy log lines about the cache on failure.
func (e *hostileEnv) victimSees(t *testing.T, label string, resp *http.Response, body string, want []string, notWant []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Fatalf("%s: victim's answer lacks %q (X-Cache=%s Cache-Status=%q):\n%s", label, w, resp.Header.Get("X-Cache"), resp.Header.Values("Cache-Status"), body)
		}
	}
	for _, w := range notWant {
		if strings.Contains(body, w) {
			t.Fatalf("%s: victim's answer contains the attacker's %q (X-Cache=%s Cache-Status=%q):\n%s", label, w, resp.Header.Get("X-Cache"), resp.Header.Values("Cache-Status"), body)
		}
	}
}

// h2cClient speaks HTTP/2 without TLS to Caddy.
func h2cClient() *http.Client {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			Protocols:       &protocols,
			TLSClientConfig: &tls.Config{},
			DialContext:     (&net.Dialer{}).DialContext,
		},
	}
}

// Finding 1: a chunked answer that completes around the 1 s stream window
// made the stream timer flush a finished response, and the panic, on a
// timer goroutine, killed Caddy.
func TestHostileStreamTimerStress(t *testing.T) {
	const requests, concurrency = 2000, 200
	e := hostileStart(t, true, `
		route slow /slow 300s`)
	e.u.Handle("/slow", func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(r.URL.Query().Get("i"))
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Cache-Control", "max-age=300")
		fmt.Fprintf(w, "begin %d;", i)
		w.(http.Flusher).Flush()
		// Spread over 0.9-1.1 s, around the stream window.
		time.Sleep(900*time.Millisecond + time.Duration(i*7919%200)*time.Millisecond)
		fmt.Fprintf(w, "end %d.", i)
	})
	client := &http.Client{Timeout: 45 * time.Second, Transport: &http.Transport{MaxConnsPerHost: concurrency, MaxIdleConnsPerHost: concurrency}}
	defer client.CloseIdleConnections()
	var next atomic.Int64
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= requests {
					return
				}
				want := fmt.Sprintf("begin %d;end %d.", i, i)
				resp, err := client.Get(e.c.BaseURL + "/slow?i=" + strconv.Itoa(i))
				var body []byte
				if err == nil {
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				if err != nil || string(body) != want {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("request %d: err=%v body=%q", i, err, body))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	logs := e.c.Logs()
	if e.c.Exited() || strings.Contains(logs, "panic") {
		t.Fatalf("Caddy died or panicked under a chunked upstream finishing near the stream window; log tail:\n%s", harnessTail(logs, 4000))
	}
	if len(failures) > 0 {
		t.Fatalf("%d of %d answers incomplete, e.g.:\n%s", len(failures), requests, strings.Join(failures[:min(5, len(failures))], "\n"))
	}
}

// Finding 2: a request that names a field in Connection makes
// reverse_proxy drop it, so the key, the variant and the credential bucket
// must not be computed from it.
func TestHostileConnectionNamedHeaders(t *testing.T) {
	e := hostileStart(t, false, `
		route user /user/* 300s {
			key {http.request.header.X-User-Id}
		}
		route lang /lang/* 300s {
			vary Accept-Language
		}
		route auth /auth/* 300s`)
	e.u.Handle("/user/me", hostileEcho("max-age=300"))
	e.u.Handle("/lang/page", hostileEcho("max-age=300"))
	e.u.Handle("/auth/page", hostileEcho("public, max-age=300"))

	t.Run("identity", func(t *testing.T) {
		e.send(t, "GET", "/user/me", "X-User-Id: victim", "Connection: close, X-User-Id")
		resp, body := e.send(t, "GET", "/user/me", "X-User-Id: victim")
		e.victimSees(t, "victim's own page", resp, body, []string{`h:X-User-Id=["victim"]`}, nil)
	})
	t.Run("vary variant", func(t *testing.T) {
		e.send(t, "GET", "/lang/page", "Accept-Language: fr", "Connection: Accept-Language")
		resp, body := e.send(t, "GET", "/lang/page", "Accept-Language: fr")
		e.victimSees(t, "French variant", resp, body, []string{`h:Accept-Language=["fr"]`}, nil)
	})
	t.Run("authorization bucket", func(t *testing.T) {
		e.send(t, "GET", "/auth/page", "Authorization: junk", "Connection: authorization")
		resp, body := e.send(t, "GET", "/auth/page", "Authorization: Bearer victim")
		e.victimSees(t, "authenticated page", resp, body, []string{`h:Authorization=["Bearer victim"]`}, nil)
	})
	t.Run("several Connection lines", func(t *testing.T) {
		e.send(t, "GET", "/user/me?two", "X-User-Id: victim2", "Connection: keep-alive", "Connection: x-user-id")
		resp, body := e.send(t, "GET", "/user/me?two", "X-User-Id: victim2")
		e.victimSees(t, "victim's own page", resp, body, []string{`h:X-User-Id=["victim2"]`}, nil)
	})
}

// Finding 3: on HTTP/2 a GET may carry a body without Content-Length.
func TestHostileFatGetHTTP2(t *testing.T) {
	e := hostileStart(t, false, `
		route fat /fat/* 300s`)
	e.u.Handle("/fat/x", hostileEcho("max-age=300"))
	client := h2cClient()
	defer client.CloseIdleConnections()
	req, _ := http.NewRequest("GET", e.c.BaseURL+"/fat/x", io.NopCloser(strings.NewReader("attacker-body")))
	req.ContentLength = -1
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("attacker's request went over %s, want HTTP/2", resp.Proto)
	}
	resp, body := e.send(t, "GET", "/fat/x")
	e.victimSees(t, "victim without a body", resp, body, []string{`body=""`}, []string{"attacker-body"})
}

// Finding 4: key templates of several placeholders.
func TestHostileKeyParts(t *testing.T) {
	e := hostileStart(t, false, `
		route messages /api/messages* 300s {
			key {http.request.header.X-User-Id}:{query.platform}
		}
		route inbox /api/inbox* 300s {
			key {http.request.header.X-User-Id}:{http.request.header.X-Platform}
		}`)
	e.u.Handle("/api/messages", hostileEcho("max-age=300"))
	e.u.Handle("/api/inbox", hostileEcho("max-age=300"))

	t.Run("empty identity part", func(t *testing.T) {
		e.send(t, "GET", "/api/messages?platform=web", "Cookie: session=alice")
		resp, body := e.send(t, "GET", "/api/messages?platform=web", "Cookie: session=bob")
		e.victimSees(t, "Bob", resp, body, []string{"session=bob"}, []string{"alice"})
		resp, body = e.send(t, "GET", "/api/messages?platform=web", "Authorization: Bearer carol")
		e.victimSees(t, "Carol", resp, body, []string{"Bearer carol"}, []string{"alice"})
	})
	t.Run("values do not collide", func(t *testing.T) {
		e.send(t, "GET", "/api/inbox", "X-User-Id: a:b", "X-Platform: c")
		resp, body := e.send(t, "GET", "/api/inbox", "X-User-Id: a", "X-Platform: b:c")
		e.victimSees(t, "user a", resp, body, []string{`h:X-User-Id=["a"]`}, []string{`"a:b"`})
	})
	t.Run("identity in several lines", func(t *testing.T) {
		// Caddy's placeholder joins the lines with commas; an origin may
		// read only the first.
		e.send(t, "GET", "/api/inbox", "X-User-Id: vic", "X-User-Id: tim", "X-Platform: web")
		resp, body := e.send(t, "GET", "/api/inbox", "X-User-Id: vic,tim", "X-Platform: web")
		e.victimSees(t, "user vic,tim", resp, body, []string{`h:X-User-Id=["vic,tim"]`}, nil)
	})
}

// Finding 4, the option: an optional part may be empty; a required one may
// not, and anonymous and signed-in callers never share.
func TestHostileKeyOptional(t *testing.T) {
	e := hostileStart(t, false, `
		route messages /api/messages* 300s {
			key {http.request.header.X-User-Id}:{query.platform}
			key_optional {query.platform}
		}`)
	e.u.Handle("/api/messages", hostileEcho("max-age=300"))
	resp, _ := e.send(t, "GET", "/api/messages", "X-User-Id: alice")
	if !strings.Contains(strings.Join(resp.Header.Values("Cache-Status"), ","), "stored") {
		t.Fatalf("optional platform absent: want stored, got %q", resp.Header.Values("Cache-Status"))
	}
	resp, body := e.send(t, "GET", "/api/messages", "X-User-Id: alice")
	if resp.Header.Get("X-Cache") != "HIT" {
		t.Fatalf("second request: X-Cache %q, want HIT", resp.Header.Get("X-Cache"))
	}
	e.victimSees(t, "alice", resp, body, []string{`h:X-User-Id=["alice"]`}, nil)
	resp, _ = e.send(t, "GET", "/api/messages?platform=web", "Cookie: session=anon")
	if !strings.Contains(strings.Join(resp.Header.Values("Cache-Status"), ","), "detail=empty-key") {
		t.Fatalf("no identity: want detail=empty-key, got %q", resp.Header.Values("Cache-Status"))
	}
}

// Finding 5: the forwarding family never reaches the origin unkeyed.
func TestHostileForwardingHeaders(t *testing.T) {
	e := hostileStart(t, false, `
		route links /links/* 300s
		route prefixed /prefixed/* 300s {
			vary X-Forwarded-Prefix
		}`)
	e.u.Handle("/links/home", hostileEcho("max-age=300"))
	e.u.Handle("/prefixed/home", hostileEcho("max-age=300"))
	evil := []string{"Forwarded: host=evil.example;proto=https", "X-Forwarded-Port: 6666", "X-Forwarded-Prefix: /evil",
		"X-Forwarded-Uri: /evil-uri", "X-Forwarded-Path: /evil-path", "X-Original-Host: evil.example"}
	e.send(t, "GET", "/links/home", evil...)
	got := e.u.LastHeaders("GET", "/links/home")
	for _, line := range evil {
		name, _, _ := strings.Cut(line, ":")
		if vals := got.Values(name); len(vals) > 0 {
			t.Errorf("origin received %s: %q", name, vals)
		}
	}
	resp, body := e.send(t, "GET", "/links/home")
	e.victimSees(t, "plain request", resp, body, nil, []string{"evil", "6666"})

	// A route that keys on one of them passes it on.
	e.send(t, "GET", "/prefixed/home", "X-Forwarded-Prefix: /tenant")
	resp, body = e.send(t, "GET", "/prefixed/home", "X-Forwarded-Prefix: /tenant")
	e.victimSees(t, "keyed prefix", resp, body, []string{`h:X-Forwarded-Prefix=["/tenant"]`}, nil)
}

// strip_request_headers extends the list of fields removed from cacheable
// requests.
func TestHostileStripRequestHeadersOption(t *testing.T) {
	e := hostileStart(t, false, `
		strip_request_headers X-Tenant-Host
		route links /links/* 300s`)
	e.u.Handle("/links/home", hostileEcho("max-age=300"))
	e.send(t, "GET", "/links/home", "X-Tenant-Host: evil.example", "Forwarded: for=evil")
	if got := e.u.LastHeaders("GET", "/links/home"); len(got.Values("X-Tenant-Host")) > 0 || len(got.Values("Forwarded")) > 0 {
		t.Fatalf("origin received X-Tenant-Host %q, Forwarded %q", got.Values("X-Tenant-Host"), got.Values("Forwarded"))
	}
	resp, body := e.send(t, "GET", "/links/home")
	e.victimSees(t, "plain request", resp, body, nil, []string{"evil"})
}

// Finding 6: Host reaches the origin normalised, as it is keyed.
func TestHostileHostCase(t *testing.T) {
	e := hostileStart(t, false, `
		route site /site/* 300s`)
	e.u.Handle("/site/page", func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := strings.Cut(r.Host, ":")
		if host != "app.test" {
			// A case-sensitive virtual host lookup.
			w.Header().Set("Cache-Control", "max-age=300")
			http.Error(w, "unknown host "+r.Host, http.StatusNotFound)
			return
		}
		hostileEcho("max-age=300")(w, r)
	})
	port := strconv.Itoa(e.c.HTTPPort)
	for _, attack := range []string{"APP.test", "app.test.", "App.Test."} {
		e.send(t, "GET", "/site/page?"+attack, "Host: "+attack+":"+port)
		resp, body := e.send(t, "GET", "/site/page?"+attack, "Host: app.test:"+port)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("after Host %q, the victim got %d: %s", attack, resp.StatusCode, body)
		}
		e.victimSees(t, "app.test", resp, body, []string{"host=app.test:" + port}, nil)
	}
}

// Finding 7: every line of a field counts, and trailers are not fields.
func TestHostileHeaderLines(t *testing.T) {
	e := hostileStart(t, false, `
		route lines /lines/* 300s`)
	e.u.Handle("/lines/cookie", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Set-Cookie"] = []string{"", "session=attacker-" + strconv.FormatInt(rfcSeq.Add(1), 10)}
		hostileEcho("max-age=300")(w, r)
	})
	e.u.Handle("/lines/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Set-Cookie")
		hostileEcho("max-age=300")(w, r)
		w.Header().Set("Set-Cookie", "session=attacker-trailer-"+strconv.FormatInt(rfcSeq.Add(1), 10))
	})
	e.u.Handle("/lines/echo", hostileEcho("max-age=300"))

	t.Run("Set-Cookie after an empty line", func(t *testing.T) {
		first, _ := e.send(t, "GET", "/lines/cookie")
		resp, _ := e.send(t, "GET", "/lines/cookie")
		for _, c := range resp.Header.Values("Set-Cookie") {
			for _, a := range first.Header.Values("Set-Cookie") {
				if a != "" && c == a {
					t.Fatalf("victim got the first caller's cookie %q (X-Cache=%s)", c, resp.Header.Get("X-Cache"))
				}
			}
		}
	})
	t.Run("Set-Cookie as a trailer", func(t *testing.T) {
		client := h2cClient()
		defer client.CloseIdleConnections()
		get := func() (*http.Response, http.Header) {
			resp, err := client.Get(e.c.BaseURL + "/lines/trailer")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			all := resp.Header.Clone()
			for k, v := range resp.Trailer {
				all[k] = append(all[k], v...)
			}
			return resp, all
		}
		_, first := get()
		resp, second := get()
		for _, c := range second.Values("Set-Cookie") {
			if strings.Contains(strings.Join(first.Values("Set-Cookie"), ","), c) {
				t.Fatalf("victim got the first caller's trailer cookie %q (X-Cache=%s)", c, resp.Header.Get("X-Cache"))
			}
		}
		for name := range second {
			if strings.HasPrefix(name, http.TrailerPrefix) {
				t.Fatalf("a trailer was served as a field: %q", name)
			}
		}
	})
	t.Run("Cookie after an empty line", func(t *testing.T) {
		e.send(t, "GET", "/lines/echo?c", "Cookie: ", "Cookie: session=alice")
		resp, body := e.send(t, "GET", "/lines/echo?c")
		e.victimSees(t, "anonymous", resp, body, nil, []string{"alice"})
	})
	t.Run("Authorization after an empty line", func(t *testing.T) {
		e.send(t, "GET", "/lines/echo?a", "Authorization: ", "Authorization: Bearer alice")
		resp, body := e.send(t, "GET", "/lines/echo?a")
		e.victimSees(t, "anonymous", resp, body, nil, []string{"alice"})
	})
}

// Interim responses: the fields of a 103 must not end up in the final
// answer (and so, through it, in the entry served to everyone).
func TestHostileInterimFields(t *testing.T) {
	e := hostileStart(t, false, `
		route early /early/* 300s`)
	e.u.Handle("/early/x", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Early-Only", "hint")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("X-Early-Only")
		hostileEcho("max-age=300")(w, r)
	})
	for i := range 2 {
		resp, _ := e.send(t, "GET", "/early/x")
		if v := resp.Header.Values("X-Early-Only"); len(v) > 0 {
			t.Fatalf("answer %d (X-Cache=%s) carries the 103's field: %q", i, resp.Header.Get("X-Cache"), v)
		}
	}
}

// Finding 8: past the in-flight budget, answers stream through unstored
// and complete.
func TestHostileInflightBudget(t *testing.T) {
	e := hostileStart(t, false, `
		inflight_budget 1MiB
		max_entry_size 8MiB
		route big /big/* 300s`)
	big := bytes.Repeat([]byte("0123456789abcdef"), 2<<20/16) // 2 MiB
	e.u.Handle("/big/sized", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		_, _ = w.Write(big)
	})
	e.u.Handle("/big/chunked", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		for off := 0; off < len(big); off += 64 << 10 {
			_, _ = w.Write(big[off : off+64<<10])
		}
	})
	e.u.Handle("/big/small", hostileEcho("max-age=300"))
	for _, p := range []string{"/big/sized", "/big/chunked"} {
		for i := range 2 {
			resp, body := e.send(t, "GET", p)
			if body != string(big) {
				t.Fatalf("%s #%d: body of %d bytes, want %d", p, i, len(body), len(big))
			}
			if cs := strings.Join(resp.Header.Values("Cache-Status"), ","); !strings.Contains(cs, "detail=budget") {
				t.Fatalf("%s #%d: Cache-Status %q, want detail=budget", p, i, cs)
			}
		}
	}
	e.send(t, "GET", "/big/small")
	if resp, _ := e.send(t, "GET", "/big/small"); resp.Header.Get("X-Cache") != "HIT" {
		t.Fatalf("a body within the budget was not stored: X-Cache %q", resp.Header.Get("X-Cache"))
	}
}

// A mutation's Host is normalised as a GET's is: a POST whose Host has a
// trailing dot (or another case) purges the entry the GET stored, for the
// target URI and for a same-origin Location alike. On the old code the
// mutation bumped the generation of "app.test." while the entry recorded
// "app.test", and the purge was lost.
func TestHostileHostMutationPurge(t *testing.T) {
	e := hostileStart(t, false, `
		route site /site/* 300s {
			purge uri
		}`)
	e.u.Handle("/site/page", hostileEcho("max-age=300"))
	e.u.Handle("/site/other", hostileEcho("max-age=300"))
	port := strconv.Itoa(e.c.HTTPPort)
	e.u.Handle("/site/form", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "http://App.Test.:"+port+"/site/other")
		w.WriteHeader(http.StatusCreated)
	})
	canonical := "Host: app.test:" + port
	warm := func(path string) {
		t.Helper()
		e.send(t, "GET", path, canonical)
		if resp, _ := e.send(t, "GET", path, canonical); resp.Header.Get("X-Cache") != "HIT" {
			t.Fatalf("GET %s: X-Cache %q, want HIT before the mutation", path, resp.Header.Get("X-Cache"))
		}
	}
	for _, host := range []string{"app.test.", "APP.test."} {
		warm("/site/page")
		warm("/site/other")
		if resp, _ := e.send(t, "POST", "/site/page", "Host: "+host+":"+port); resp.StatusCode != http.StatusOK {
			t.Fatalf("POST with Host %q: %d", host, resp.StatusCode)
		}
		if resp, _ := e.send(t, "POST", "/site/form", "Host: "+host+":"+port); resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST /site/form with Host %q: %d", host, resp.StatusCode)
		}
		for _, path := range []string{"/site/page", "/site/other"} {
			if resp, _ := e.send(t, "GET", path, canonical); resp.Header.Get("X-Cache") != "MISS" {
				t.Fatalf("GET %s after a POST with Host %q: X-Cache %q, want MISS (the purge was lost)", path, host, resp.Header.Get("X-Cache"))
			}
		}
	}
}
