// Command mixload drives the write-mix and cold-start benchmarks (stdlib
// only). It runs its own origin, which counts its calls:
//
//	GET  /api/dashboard*, /api/messages*   JSON after -delay (default 800ms)
//	POST anything                          200 at once
//
// mixload writemix -origin ADDR -target URL [-users 20] [-d 10s] [-rates 0,1,5,20]
//
//	Users poll their keyed dashboards and messages (X-User-Id) while other
//	users POST to an unrelated route (content) at each rate in -rates, then
//	to campaigns (which invalidates dashboards) at 1 and 5 writes/s. Prints
//	one row per run: hit ratio and upstream calls.
//
// mixload burst -origin ADDR -targets URL,URL [-n 200]
//
//	Sends -n concurrent GETs of one cold URL spread over the targets (same
//	Host header) and prints the origin's call count.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type origin struct {
	delay time.Duration
	gets  sync.Map // path prefix -> *atomic.Int64
	posts atomic.Int64
	seq   atomic.Int64
}

func (o *origin) counter(prefix string) *atomic.Int64 {
	v, _ := o.gets.LoadOrStore(prefix, new(atomic.Int64))
	return v.(*atomic.Int64)
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		o.posts.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
		return
	}
	prefix := r.URL.Path
	for _, p := range []string{"/api/dashboard", "/api/messages", "/api/hot/ahead", "/api/hot/plain"} {
		if strings.HasPrefix(prefix, p) {
			prefix = p
		}
	}
	o.counter(prefix).Add(1)
	select {
	case <-time.After(o.delay):
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"path":%q,"user":%q,"n":%d,"pad":%q}`, r.URL.Path, r.Header.Get("X-User-Id"), o.seq.Add(1), strings.Repeat("x", 4000))
}

func serveOrigin(addr string, delay time.Duration) *origin {
	o := &origin{delay: delay}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mixload:", err)
		os.Exit(1)
	}
	go func() { _ = http.Serve(l, o) }()
	return o
}

var client = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true},
}

func get(url, user string) (xcache string, ok bool) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Host = "127.0.0.1"
	if user != "" {
		req.Header.Set("X-User-Id", user)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.Header.Get("X-Cache"), resp.StatusCode == http.StatusOK
}

func post(url, user string) bool {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
	req.Host = "127.0.0.1"
	req.Header.Set("X-User-Id", user)
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func waitReady(url string) {
	for i := 0; i < 300; i++ {
		if _, err := client.Get(url); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintln(os.Stderr, "mixload: target never answered:", url)
	os.Exit(1)
}

type tally struct{ hits, reads, failed atomic.Int64 }

func (t *tally) ratio() float64 {
	if n := t.reads.Load(); n > 0 {
		return float64(t.hits.Load()) / float64(n)
	}
	return 0
}

// pollUntil GETs url as user until stop closes, 50 ms apart, counting reads
// and failures in t and handing each answer's X-Cache and duration to seen.
func pollUntil(stop <-chan struct{}, url, user string, seen func(xcache string, took time.Duration), t *tally) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		start := time.Now()
		xc, ok := get(url, user)
		if !ok {
			t.failed.Add(1)
			continue
		}
		t.reads.Add(1)
		seen(xc, time.Since(start))
		time.Sleep(50 * time.Millisecond)
	}
}

// writemixRow runs readers and writers for d and prints one row.
func writemixRow(o *origin, target, label, writePath string, rate, users int, d time.Duration, run int) {
	var dash, msgs tally
	var writes, writeFail atomic.Int64
	dashCalls0, msgCalls0 := o.counter("/api/dashboard").Load(), o.counter("/api/messages").Load()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	poll := func(t *tally, url, user string) {
		defer wg.Done()
		pollUntil(stop, url, user, func(xc string, _ time.Duration) {
			if xc == "HIT" {
				t.hits.Add(1)
			}
		}, t)
	}
	for u := range users {
		user := "user-" + strconv.Itoa(u)
		wg.Add(2)
		go poll(&dash, fmt.Sprintf("%s/api/dashboard?run=%d", target, run), user)
		go poll(&msgs, fmt.Sprintf("%s/api/messages?platform=web&run=%d", target, run), user)
	}
	if rate > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / time.Duration(rate))
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				go func() {
					if post(fmt.Sprintf("%s%s/%d", target, writePath, i), "writer-"+strconv.Itoa(i%7)) {
						writes.Add(1)
					} else {
						writeFail.Add(1)
					}
				}()
			}
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	fmt.Printf("| %-28s | %5d | %6d | %5.3f | %6d | %5.3f | %6d | %d |\n", label, rate, writes.Load(),
		dash.ratio(), o.counter("/api/dashboard").Load()-dashCalls0,
		msgs.ratio(), o.counter("/api/messages").Load()-msgCalls0,
		dash.failed.Load()+msgs.failed.Load()+writeFail.Load())
}

func writemix(args []string) {
	fs := flag.NewFlagSet("writemix", flag.ExitOnError)
	addr := fs.String("origin", "127.0.0.1:0", "origin listen address")
	target := fs.String("target", "", "Caddy base URL")
	users := fs.Int("users", 20, "users polling a dashboard and their messages each")
	d := fs.Duration("d", 10*time.Second, "duration of each row")
	delay := fs.Duration("delay", 800*time.Millisecond, "origin delay")
	rates := fs.String("rates", "0,1,5,20", "writes per second to an unrelated route, one row each")
	_ = fs.Parse(args)
	o := serveOrigin(*addr, *delay)
	waitReady(*target + "/")
	fmt.Printf("| %-28s | %5s | %6s | %5s | %6s | %5s | %6s | %s |\n", "writes to", "w/s", "writes", "dash hit", "dash up", "msg hit", "msg up", "failed")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|--:|")
	run := 0
	for _, r := range strings.Split(*rates, ",") {
		rate, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil {
			fmt.Fprintln(os.Stderr, "mixload: bad rate", r)
			os.Exit(2)
		}
		run++
		writemixRow(o, *target, "content (unrelated route)", "/api/content", rate, *users, *d, run)
	}
	for _, rate := range []int{1, 5} {
		run++
		writemixRow(o, *target, "campaigns (invalidates dash)", "/api/marketing/campaigns", rate, *users, *d, run)
	}
	fmt.Println()
	fmt.Printf("| %-34s | %5s | %6s | %6s | %s |\n", "hot key, 3 s ttl", "hit", "up", "waited", "requests")
	fmt.Println("|---|--:|--:|--:|--:|")
	for _, path := range []string{"/api/hot/plain", "/api/hot/ahead"} {
		expiryRow(o, *target, path, *users, 3*(*d)/2)
	}
}

// expiryRow polls one shared hot key whose entries expire every few
// seconds and counts the requests that waited for the upstream (over half
// its delay): with refresh ahead, entries are renewed before they expire.
func expiryRow(o *origin, target, path string, users int, d time.Duration) {
	var t tally
	var waited atomic.Int64
	calls0 := o.counter(path).Load()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pollUntil(stop, target+path, "user-"+strconv.Itoa(u), func(xc string, took time.Duration) {
				if took > o.delay/2 {
					waited.Add(1)
				}
				if xc == "HIT" || xc == "STALE" {
					t.hits.Add(1)
				}
			}, &t)
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	label := path + " (refresh_ahead off)"
	if strings.HasSuffix(path, "ahead") {
		label = path + " (refresh_ahead default)"
	}
	fmt.Printf("| %-34s | %5.3f | %6d | %6d | %d |\n", label, t.ratio(), o.counter(path).Load()-calls0, waited.Load(), t.reads.Load())
}

func burst(args []string) {
	fs := flag.NewFlagSet("burst", flag.ExitOnError)
	addr := fs.String("origin", "127.0.0.1:0", "origin listen address")
	targets := fs.String("targets", "", "Caddy base URLs, comma-separated")
	n := fs.Int("n", 200, "concurrent requests")
	delay := fs.Duration("delay", 300*time.Millisecond, "origin delay")
	path := fs.String("path", "/api/dashboard?cold=1", "the cold URL")
	_ = fs.Parse(args)
	o := serveOrigin(*addr, *delay)
	urls := strings.Split(*targets, ",")
	for _, u := range urls {
		waitReady(u + "/")
	}
	before := o.counter("/api/dashboard").Load()
	start := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Int64
	statuses := sync.Map{}
	for i := range *n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			xc, ok := get(urls[i%len(urls)]+*path, "user-1")
			if !ok {
				failed.Add(1)
			}
			v, _ := statuses.LoadOrStore(xc, new(atomic.Int64))
			v.(*atomic.Int64).Add(1)
		}()
	}
	close(start)
	wg.Wait()
	var parts []string
	statuses.Range(func(k, v any) bool {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	fmt.Printf("upstream_calls=%d failed=%d x_cache=%s\n", o.counter("/api/dashboard").Load()-before, failed.Load(), strings.Join(parts, ","))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: mixload writemix|burst [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "writemix":
		writemix(os.Args[2:])
	case "burst":
		burst(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "mixload: unknown mode", os.Args[1])
		os.Exit(2)
	}
}
