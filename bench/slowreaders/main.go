// Command slowreaders measures how much memory Caddy needs while many
// clients read large answers slowly.
//
//	slowreaders -origin 127.0.0.1:9000                 # serve 4 MiB bodies
//	slowreaders -url http://127.0.0.1:8080/big/run1- -pid 1234 -clients 300
//
// The client mode opens one connection per client, each with a small
// receive buffer, asks for a distinct URL (the prefix plus the client's
// number) and reads its answer at a limited rate, while it samples the
// resident memory of the process -pid. It prints the baseline, the peak and
// the growth, in MiB, and fails if any answer is incomplete.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	origin := flag.String("origin", "", "serve bodies on this address instead of reading them")
	size := flag.Int("size", 4<<20, "body size in bytes (origin)")
	rawURL := flag.String("url", "", "URL prefix; the client number is appended")
	pid := flag.Int("pid", 0, "process whose resident memory is sampled")
	clients := flag.Int("clients", 300, "concurrent slow clients")
	chunk := flag.Int("chunk", 16<<10, "bytes read per step")
	pause := flag.Duration("pause", 50*time.Millisecond, "pause between steps")
	flag.Parse()
	if *origin != "" {
		serve(*origin, *size)
		return
	}
	run(*rawURL, *pid, *clients, *chunk, *pause, *size)
}

// serve answers every path with a cacheable body of size bytes.
func serve(addr string, size int) {
	body := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	log.Fatal(http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Cache-Control", "max-age=300")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})))
}

func run(prefix string, pid, clients, chunk int, pause time.Duration, size int) {
	u, err := url.Parse(prefix)
	if err != nil {
		log.Fatal(err)
	}
	base := rss(pid)
	var peak atomic.Int64
	peak.Store(base)
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if v := rss(pid); v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	var failed, xcache sync.Map
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, xc, err := slowGet(u, prefix+strconv.Itoa(i), chunk, pause)
			if err == nil && n != int64(size) {
				err = fmt.Errorf("%d of %d bytes", n, size)
			}
			if err != nil {
				failed.Store(i, err)
			}
			c, _ := xcache.LoadOrStore(xc, new(atomic.Int64))
			c.(*atomic.Int64).Add(1)
		}()
	}
	wg.Wait()
	close(stop)
	var summary []string
	xcache.Range(func(k, v any) bool {
		summary = append(summary, fmt.Sprintf("%s=%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	nFailed := 0
	failed.Range(func(k, v any) bool {
		if nFailed < 3 {
			log.Printf("client %v: %v", k, v)
		}
		nFailed++
		return true
	})
	const mib = 1 << 20
	fmt.Printf("clients=%d took=%.1fs baseline_mib=%.0f peak_mib=%.0f growth_mib=%.0f x_cache=%s failed=%d\n",
		clients, time.Since(start).Seconds(), float64(base)/mib, float64(peak.Load())/mib,
		float64(peak.Load()-base)/mib, strings.Join(summary, ","), nFailed)
	if nFailed > 0 {
		os.Exit(1)
	}
}

// slowGet sends one GET on its own connection with a small receive buffer
// and reads the body chunk bytes at a time.
func slowGet(u *url.URL, target string, chunk int, pause time.Duration) (int64, string, error) {
	d := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
		})
	}}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	path := strings.TrimPrefix(target, u.Scheme+"://"+u.Host)
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, u.Host)
	br := bufio.NewReaderSize(conn, chunk)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var n int64
	buf := make([]byte, chunk)
	for {
		m, err := io.ReadFull(resp.Body, buf)
		n += int64(m)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return n, resp.Header.Get("X-Cache"), nil
		}
		if err != nil {
			return n, resp.Header.Get("X-Cache"), err
		}
		time.Sleep(pause)
	}
}

// rss is the resident memory of pid, in bytes (0 when unknown).
func rss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
