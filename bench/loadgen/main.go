// Command loadgen is a small closed-loop HTTP/1.1 load generator for the
// redis_cache benchmarks. It uses only the standard library.
//
// Each of -c goroutines owns one keep-alive connection and sends requests back
// to back for -warmup + -d. Only requests that start after the warm-up and
// complete before the deadline are counted (the wrk model), so req/s is
// completed requests ÷ -d. Requests in flight at the deadline finish
// uncounted (they are not cancelled, so the server logs no aborts). It prints one JSON line:
//
//	{"requests":..,"rps":..,"latency_ms":{"p50":..,"p90":..,"p99":..,"max":..},
//	 "status":{"200":..},"errors":..,"bytes":..,"header":{"X-Cache":{"HIT":..}}}
//
// -url may contain {n}, replaced by a per-process request counter so every
// request has a distinct URL. -count-header NAME adds a histogram of that
// response header's values. -windows 10s adds per-window stats (by completion
// time) for failure tests.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-redis-cache/caddy-redis-cache/bench/internal/result"
)

// ---------------------------------------------------------------------------
// Log-linear latency histogram (HDR-like): exact below 128 µs, then 64
// sub-buckets per power of two, i.e. < 0.8% relative error, constant memory.

const (
	subBits   = 6
	subCount  = 1 << subBits // 64
	linearMax = 2 * subCount // values below this are stored exactly
	nBuckets  = linearMax + 64*subCount
)

type hist struct {
	counts [nBuckets]uint64
	n      uint64
	sum    uint64
	max    uint64
}

func bucketOf(v uint64) int {
	if v < linearMax {
		return int(v)
	}
	shift := bits.Len64(v) - (subBits + 1) // v>>shift is in [64,127]
	return linearMax + (shift-1)*subCount + int(v>>uint(shift)) - subCount
}

// bucketMid returns a representative value (the middle) of bucket i.
func bucketMid(i int) uint64 {
	if i < linearMax {
		return uint64(i)
	}
	j := i - linearMax
	shift := uint(j/subCount + 1)
	sub := uint64(j%subCount + subCount)
	lo := sub << shift
	return lo + (uint64(1)<<shift)/2
}

func (h *hist) record(us uint64) {
	h.counts[bucketOf(us)]++
	h.n++
	h.sum += us
	if us > h.max {
		h.max = us
	}
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	if o.max > h.max {
		h.max = o.max
	}
}

// quantile returns the q-quantile in µs.
func (h *hist) quantile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum >= rank {
			if cum == h.n {
				return h.max // the top bucket: its exact maximum is known
			}
			v := bucketMid(i)
			if v > h.max {
				v = h.max
			}
			return v
		}
	}
	return h.max
}

// ---------------------------------------------------------------------------

type stats struct {
	h          hist
	status     map[int]uint64
	hdr        map[string]uint64
	errors     uint64
	errSamples map[string]uint64
	bytes      uint64
}

func newStats() *stats {
	return &stats{status: map[int]uint64{}, hdr: map[string]uint64{}, errSamples: map[string]uint64{}}
}

func (s *stats) merge(o *stats) {
	s.h.merge(&o.h)
	for k, v := range o.status {
		s.status[k] += v
	}
	for k, v := range o.hdr {
		s.hdr[k] += v
	}
	s.errors += o.errors
	for k, v := range o.errSamples {
		if _, ok := s.errSamples[k]; ok || len(s.errSamples) < 10 {
			s.errSamples[k] += v
		}
	}
	s.bytes += o.bytes
}

func ms(us uint64) float64 { return math.Round(float64(us)/10) / 100 } // µs → ms, 2 decimals

func (s *stats) out(seconds float64, headerName string) result.Stats {
	o := result.Stats{
		Requests:   s.h.n,
		Status:     map[string]uint64{},
		Errors:     s.errors,
		ErrSamples: s.errSamples,
		Bytes:      s.bytes,
	}
	if seconds > 0 {
		o.RPS = math.Round(float64(s.h.n)/seconds*10) / 10
	}
	if s.h.n > 0 {
		o.Latency = result.Latency{
			P50:  ms(s.h.quantile(0.50)),
			P90:  ms(s.h.quantile(0.90)),
			P99:  ms(s.h.quantile(0.99)),
			Max:  ms(s.h.max),
			Mean: ms(s.h.sum / s.h.n),
		}
	}
	for k, v := range s.status {
		o.Status[strconv.Itoa(k)] = v
	}
	if headerName != "" {
		o.Header = map[string]map[string]uint64{headerName: s.hdr}
	}
	if len(o.ErrSamples) == 0 {
		o.ErrSamples = nil
	}
	return o
}

// ---------------------------------------------------------------------------

type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

// errKey shortens an error to something groupable (no unique URLs in it).
func errKey(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne *net.OpError
	if errors.As(err, &ne) && ne.Err != nil {
		s := ne.Op + ": " + ne.Err.Error()
		return s
	}
	s := err.Error()
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

func main() {
	var (
		rawURL      = flag.String("url", "", "target URL; {n} is replaced by a per-request counter")
		conns       = flag.Int("c", 32, "connections (one goroutine each)")
		dur         = flag.Duration("d", 10*time.Second, "measured duration")
		warmup      = flag.Duration("warmup", 0, "unmeasured warm-up before -d")
		method      = flag.String("method", http.MethodGet, "HTTP method")
		body        = flag.String("body", "", "request body (sent with every request)")
		countHeader = flag.String("count-header", "", "response header whose values are counted (e.g. X-Cache)")
		windows     = flag.Duration("windows", 0, "also report stats per window of this length (by completion time)")
		timeout     = flag.Duration("timeout", 30*time.Second, "per-request timeout")
		nStart      = flag.Uint64("n-start", 0, "first value of {n}")
		label       = flag.String("label", "", "label copied into the JSON output")
		headers     headerFlags
	)
	flag.Var(&headers, "H", "request header 'Name: value' (repeatable)")
	flag.Parse()
	if *rawURL == "" {
		fmt.Fprintln(os.Stderr, "loadgen: -url is required")
		os.Exit(2)
	}
	if *conns < 1 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "loadgen: -c must be ≥ 1 and -d > 0")
		os.Exit(2)
	}
	probe := strings.ReplaceAll(*rawURL, "{n}", "0")
	if u, err := url.Parse(probe); err != nil || u.Host == "" {
		fmt.Fprintf(os.Stderr, "loadgen: bad -url %q\n", *rawURL)
		os.Exit(2)
	}
	hdr := http.Header{}
	host := ""
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			fmt.Fprintf(os.Stderr, "loadgen: bad -H %q (want 'Name: value')\n", h)
			os.Exit(2)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if strings.EqualFold(k, "Host") {
			host = v
			continue
		}
		hdr.Add(k, v)
	}

	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        *conns,
		MaxIdleConnsPerHost: *conns,
		MaxConnsPerHost:     *conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		TLSNextProto:        nil,
	}
	client := &http.Client{
		Transport: tr,
		Timeout:   *timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}

	templated := strings.Contains(*rawURL, "{n}")
	var counter atomic.Uint64
	counter.Store(*nStart)

	start := time.Now()
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*dur)
	// Requests still in flight at the deadline are allowed to finish (and are
	// not counted) rather than cancelled, so the server sees no aborted
	// connections; -timeout bounds how long that can take.
	ctx := context.Background()

	nWin := 1
	if *windows > 0 {
		nWin = int((*dur + *windows - 1) / *windows)
	}
	perWorker := make([][]*stats, *conns)
	var wg sync.WaitGroup
	for w := 0; w < *conns; w++ {
		ws := make([]*stats, nWin)
		for i := range ws {
			ws[i] = newStats()
		}
		perWorker[w] = ws
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32*1024)
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				u := *rawURL
				if templated {
					u = strings.ReplaceAll(u, "{n}", strconv.FormatUint(counter.Add(1)-1, 10))
				}
				var rb io.Reader
				if *body != "" {
					rb = strings.NewReader(*body)
				}
				req, err := http.NewRequestWithContext(ctx, *method, u, rb)
				if err != nil {
					fmt.Fprintln(os.Stderr, "loadgen:", err)
					os.Exit(2)
				}
				for k, v := range hdr {
					req.Header[k] = v
				}
				if host != "" {
					req.Host = host
				}
				resp, err := client.Do(req)
				var n int64
				var status int
				var hv string
				if err == nil {
					status = resp.StatusCode
					if *countHeader != "" {
						hv = resp.Header.Get(*countHeader)
					}
					n, err = io.CopyBuffer(io.Discard, resp.Body, buf)
					resp.Body.Close()
				}
				t1 := time.Now()
				if t0.Before(measureFrom) || !t1.Before(end) {
					if err != nil && t1.Before(end) {
						time.Sleep(10 * time.Millisecond)
					}
					continue // warm-up, or cut off by the deadline
				}
				wi := 0
				if *windows > 0 {
					wi = int(t1.Sub(measureFrom) / *windows)
					if wi >= nWin {
						wi = nWin - 1
					}
				}
				s := ws[wi]
				if err != nil {
					s.errors++
					s.errSamples[errKey(err)]++
					time.Sleep(10 * time.Millisecond) // don't spin on a dead server
					continue
				}
				s.h.record(uint64(t1.Sub(t0).Microseconds()))
				s.status[status]++
				if *countHeader != "" {
					if hv == "" {
						hv = "(none)"
					}
					s.hdr[hv]++
				}
				s.bytes += uint64(n)
			}
		}()
	}
	wg.Wait()
	tr.CloseIdleConnections()

	total := newStats()
	winStats := make([]*stats, nWin)
	for i := range winStats {
		winStats[i] = newStats()
	}
	for _, ws := range perWorker {
		for i, s := range ws {
			winStats[i].merge(s)
			total.merge(s)
		}
	}
	out := result.Run{
		Label:       *label,
		URL:         *rawURL,
		Method:      *method,
		Connections: *conns,
		DurationS:   dur.Seconds(),
		WarmupS:     warmup.Seconds(),
		Stats:       total.out(dur.Seconds(), *countHeader),
	}
	if *windows > 0 {
		for i, s := range winStats {
			from := time.Duration(i) * *windows
			to := from + *windows
			if to > *dur {
				to = *dur
			}
			out.Windows = append(out.Windows, result.Window{
				StartS: from.Seconds(),
				EndS:   to.Seconds(),
				Stats:  s.out((to - from).Seconds(), *countHeader),
			})
		}
	}
	// encoding/json sorts map keys, so the line is stable.
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
