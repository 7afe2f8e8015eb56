// Command origin is the upstream for the redis_cache benchmarks (stdlib only).
//
//	/api/small*      1 KiB JSON
//	/api/large*      64 KiB JSON
//	/api/dashboard*  4 KiB JSON after -delay (default 800ms), like an expensive aggregate
//	/api/doc*        4 KiB JSON at once (the Redis memory per entry measurement)
//	/_origin/stats   JSON count of requests served per route (not counted itself)
//
// `origin -print small|large|dashboard` writes the exact body to stdout so a
// bare Caddy `respond` baseline can serve the same bytes.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// makeBody builds a deterministic JSON document of exactly size bytes:
//
//	[["small",0,"item-0000",0,true],["small",1,"item-0001",7919,true],…,"xxxx"]
//
// It has no '{' or '}' on purpose: Caddy's `respond` runs its body through the
// placeholder replacer on every request, and an object-rich JSON body makes
// that baseline ~2.5× slower (one placeholder lookup per object), which would
// flatter the cache. Without braces `respond` writes the bytes as they are.
func makeBody(route string, size int) []byte {
	var b strings.Builder
	b.WriteString("[")
	const padOpen, padClose = `"`, `"]`
	for i := 0; ; i++ {
		item := fmt.Sprintf(`["%s",%d,"item-%04d",%d,true],`, route, i, i, (i*7919)%10007)
		if b.Len()+len(item)+len(padOpen)+len(padClose) > size {
			break
		}
		b.WriteString(item)
	}
	pad := size - b.Len() - len(padOpen) - len(padClose)
	b.WriteString(padOpen + strings.Repeat("x", pad) + padClose)
	return []byte(b.String())
}

var bodies = map[string][]byte{
	"small":     makeBody("small", 1024),
	"large":     makeBody("large", 64*1024),
	"dashboard": makeBody("dashboard", 4*1024),
	"doc":       makeBody("doc", 4*1024),
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	delay := flag.Duration("delay", 800*time.Millisecond, "delay before answering /api/dashboard")
	cacheControl := flag.String("cache-control", "", "Cache-Control header on /api/* responses (empty: none)")
	printBody := flag.String("print", "", "print the body for small|large|dashboard|doc and exit")
	flag.Parse()

	if *printBody != "" {
		b, ok := bodies[*printBody]
		if !ok {
			fmt.Fprintf(os.Stderr, "origin: unknown body %q\n", *printBody)
			os.Exit(2)
		}
		os.Stdout.Write(b)
		return
	}

	var counts struct{ small, large, dashboard, other atomic.Int64 }
	serve := func(name string, n *atomic.Int64, d time.Duration) http.HandlerFunc {
		body := bodies[name]
		clen := strconv.Itoa(len(body))
		return func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			if d > 0 {
				select {
				case <-time.After(d):
				case <-r.Context().Done():
					return
				}
			}
			h := w.Header()
			h.Set("Content-Type", "application/json")
			h.Set("Content-Length", clen)
			if *cacheControl != "" {
				h.Set("Cache-Control", *cacheControl)
			}
			if r.Method == http.MethodHead {
				return
			}
			w.Write(body)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/small", serve("small", &counts.small, 0))
	mux.HandleFunc("/api/large", serve("large", &counts.large, 0))
	mux.HandleFunc("/api/dashboard", serve("dashboard", &counts.dashboard, *delay))
	mux.HandleFunc("/api/doc", serve("doc", &counts.other, 0))
	mux.HandleFunc("/_origin/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]int64{
			"small":     counts.small.Load(),
			"large":     counts.large.Load(),
			"dashboard": counts.dashboard.Load(),
			"other":     counts.other.Load(),
		})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		counts.other.Add(1)
		http.NotFound(w, r)
	})

	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(os.Stderr, "origin: listening on %s (dashboard delay %s)\n", *addr, *delay)
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "origin:", err)
		os.Exit(1)
	}
}
