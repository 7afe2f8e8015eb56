package rediscache

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// benchHandler provisions a handler outside a running Caddy, in front of a
// trivial upstream that answers body.
func benchHandler(b *testing.B, h *Handler, body []byte) (*Handler, caddyhttp.Handler) {
	b.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		b.Fatal(err)
	}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/json")
		_, err := w.Write(body)
		return err
	})
	return h, next
}

func benchRoutes() []*Route {
	return []*Route{{Name: "api", Path: "/api/*", TTL: caddy.Duration(time.Hour)}}
}

// discardRecorder is a minimal ResponseWriter, so the benchmark measures
// the handler rather than httptest's bookkeeping.
type discardRecorder struct {
	header http.Header
	status int
}

func (d *discardRecorder) Header() http.Header         { return d.header }
func (d *discardRecorder) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardRecorder) WriteHeader(code int)        { d.status = code }

func runHitBenchmark(b *testing.B, h *Handler, next caddyhttp.Handler) {
	req := httptest.NewRequest("GET", "http://example.com/api/dashboard?x=1", nil)
	warm := &discardRecorder{header: http.Header{}}
	if err := h.ServeHTTP(warm, req, next); err != nil {
		b.Fatal(err)
	}
	check := &discardRecorder{header: http.Header{}}
	if err := h.ServeHTTP(check, req, next); err != nil || check.header.Get("X-Cache") != resultHit {
		b.Fatalf("warm-up did not produce a hit: %v %v", err, check.header)
	}
	b.ReportAllocs()
	b.SetParallelism(16) // like 32 client connections on two cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardRecorder{header: make(http.Header, 16)}
		for pb.Next() {
			clear(w.header)
			if err := h.ServeHTTP(w, req, next); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

var benchBody = []byte(`{"data":"` + strings.Repeat("x", 1000) + `"}`)

func BenchmarkHitMemory(b *testing.B) {
	h, next := benchHandler(b, &Handler{Routes: benchRoutes()}, benchBody)
	runHitBenchmark(b, h, next)
}

func BenchmarkHitRedis(b *testing.B) {
	rs := startRedis(b)
	h, next := benchHandler(b, &Handler{Redis: []string{rs.URL()}, Routes: benchRoutes()}, benchBody)
	runHitBenchmark(b, h, next)
}

// BenchmarkHitRedisFullRead reads and decodes the whole entry on every hit,
// as without validated copies.
func BenchmarkHitRedisFullRead(b *testing.B) {
	rs := startRedis(b)
	h, next := benchHandler(b, &Handler{Redis: []string{rs.URL()}, ValidatedCopies: -1, Routes: benchRoutes()}, benchBody)
	runHitBenchmark(b, h, next)
}

func BenchmarkHitRedisLocalTier(b *testing.B) {
	rs := startRedis(b)
	h, next := benchHandler(b, &Handler{Redis: []string{rs.URL()}, LocalCache: 64 << 20, Routes: benchRoutes()}, benchBody)
	runHitBenchmark(b, h, next)
}

func BenchmarkBuildKey(b *testing.B) {
	rt := &Route{Name: "dash", Path: "/api/*", Vary: []string{"Accept-Language"}}
	h := testHandler(rt)
	req := httptest.NewRequest("GET", "http://example.com/api/dashboard?b=2&a=1", nil)
	b.ReportAllocs()
	for b.Loop() {
		p, _ := normalizedPath(req)
		_ = h.buildKey(req, rt, p, "user-123")
	}
}

func BenchmarkEntryEncode(b *testing.B) {
	e := sampleEntry()
	e.body = benchBody
	b.ReportAllocs()
	for b.Loop() {
		_ = e.encode()
	}
}

func BenchmarkEntryDecode(b *testing.B) {
	e := sampleEntry()
	e.body = benchBody
	raw := e.encode()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeEntry(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMissRedis stores a new entry on every request: lookup, upstream,
// buffering, encoding and the store write.
func BenchmarkMissRedis(b *testing.B) {
	rs := startRedis(b)
	h, next := benchHandler(b, &Handler{Redis: []string{rs.URL()}, Routes: benchRoutes()}, benchBody)
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardRecorder{header: make(http.Header, 16)}
		for pb.Next() {
			clear(w.header)
			req := httptest.NewRequest("GET", "http://example.com/api/x?n="+strconv.FormatInt(n.Add(1), 10), nil)
			if err := h.ServeHTTP(w, req, next); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkMemoryStoreLookupAfterPurges is a lookup on the embedded store
// after 50,000 purges of distinct URIs: with generations in the LRU, their
// number does not slow lookups or bumps down.
func BenchmarkMemoryStoreLookupAfterPurges(b *testing.B) {
	m := newMemoryStore(64 << 20)
	ctx := context.Background()
	for i := range 50000 {
		_ = m.bump(ctx, false, time.Hour, fmt.Sprintf("ns:_g:u:%032d", i))
	}
	_ = m.set(ctx, "ns:r:_:k", make([]byte, 1024), time.Hour)
	gens := []string{"ns:_g:all", "ns:_g:r:r", "ns:_g:u:x"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		_, _, _, _ = m.get(ctx, "ns:r:_:k", gens, nil)
		if i%10 == 0 {
			_ = m.bump(ctx, false, time.Hour, fmt.Sprintf("ns:_g:u:new%d", i))
		}
	}
}
