// Command benchtool holds the small helpers that bench/run.sh and
// bench/redis_outage.sh would otherwise need jq or python for (stdlib only):
//
//	benchtool freeport N              print N distinct free 127.0.0.1 TCP ports
//	benchtool table MANIFEST          markdown table from run.sh's manifest
//	benchtool windows LABEL=FILE...   per-window table from loadgen -windows output
//	benchtool attach-check RUN CHECK  RUN (wrk's JSON) with the statuses and
//	                                  X-Cache values of CHECK (a short loadgen
//	                                  run), printed as JSON
//
// table and windows exit with status 3 when a row has a non-200 status, a
// transport error, or an unexpected X-Cache value (the table says which).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/caddy-redis-cache/caddy-redis-cache/bench/internal/result"
)

func die(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "benchtool: "+format+"\n", a...)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		die("usage: benchtool freeport N | table MANIFEST | windows LABEL=FILE...")
	}
	switch os.Args[1] {
	case "freeport":
		n := 1
		if len(os.Args) > 2 {
			var err error
			if n, err = strconv.Atoi(os.Args[2]); err != nil || n < 1 {
				die("freeport: bad count %q", os.Args[2])
			}
		}
		freeports(n)
	case "table":
		if len(os.Args) != 3 {
			die("usage: benchtool table MANIFEST")
		}
		os.Exit(table(os.Args[2]))
	case "attach-check":
		if len(os.Args) != 4 {
			die("usage: benchtool attach-check RUN CHECK")
		}
		attachCheck(os.Args[2], os.Args[3])
	case "windows":
		if len(os.Args) < 3 {
			die("usage: benchtool windows LABEL=FILE...")
		}
		os.Exit(windows(os.Args[2:]))
	default:
		die("unknown command %q", os.Args[1])
	}
}

func freeports(n int) {
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			die("freeport: %v", err)
		}
		ls = append(ls, l)
	}
	for _, l := range ls {
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
}

func attachCheck(runPath, checkPath string) {
	run, err := readResult(runPath)
	if err != nil {
		die("%v", err)
	}
	check, err := readResult(checkPath)
	if err != nil {
		die("%v", err)
	}
	run.Check = &check.Stats
	run.Header = check.Header
	if err := json.NewEncoder(os.Stdout).Encode(run); err != nil {
		die("%v", err)
	}
}

func readResult(path string) (*result.Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r result.Run
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &r, nil
}

// hist renders {"200":5,"502":1} as "200×5 502×1", largest first.
func hist(m map[string]uint64) string {
	type kv struct {
		k string
		v uint64
	}
	var s []kv
	for k, v := range m {
		s = append(s, kv{k, v})
	}
	sort.Slice(s, func(i, j int) bool {
		if s[i].v != s[j].v {
			return s[i].v > s[j].v
		}
		return s[i].k < s[j].k
	})
	var parts []string
	for _, e := range s {
		parts = append(parts, fmt.Sprintf("%s×%d", e.k, e.v))
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, " ")
}

func ms(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// statusProblems says what is wrong with a run's statuses and errors ("" if
// all 200, or all 2xx/3xx as far as wrk can tell).
func statusProblems(s result.Stats) string {
	var p []string
	for k, v := range s.Status {
		if k != "200" && k != "2xx/3xx" && v > 0 {
			p = append(p, fmt.Sprintf("%d×%s", v, k))
		}
	}
	sort.Strings(p)
	if s.Errors > 0 {
		p = append(p, fmt.Sprintf("%d transport errors (%s)", s.Errors, hist(s.ErrSamples)))
	}
	if s.Requests == 0 && s.Errors == 0 {
		p = append(p, "no requests completed")
	}
	return strings.Join(p, ", ")
}

// ---------------------------------------------------------------------------
// table

// A manifest line (written by run.sh, whitespace separated):
//
//	scenario body result.json rss_kb caddy_cpu_ticks redis_cpu_ticks clk_tck origin_calls expect_xcache [note...]
//
// result.json "-" means the row did not run; the note says why.
type row struct {
	scenario, body, file string
	rssKB, cpuTicks      int64
	redisTicks           int64
	clkTck               int64
	originCalls          int64
	expect               string
	note                 string
	r                    *result.Run
	rounds               []*row    // every measurement of this scenario/body
	spread               []float64 // req/s of each round, when there are several
}

func pickMedian(rounds []*row) *row {
	var ok []*row
	var notes []string
	seen := map[string]bool{}
	for _, rw := range rounds {
		if rw.r != nil {
			ok = append(ok, rw)
		}
		if rw.note != "" && !seen[rw.note] {
			seen[rw.note] = true
			notes = append(notes, rw.note)
		}
	}
	if len(ok) == 0 {
		return rounds[0]
	}
	sort.Slice(ok, func(i, j int) bool { return ok[i].r.RPS < ok[j].r.RPS })
	med := *ok[(len(ok)-1)/2]
	res := *med.r
	res.Status = map[string]uint64{}
	res.Header = map[string]map[string]uint64{}
	res.ErrSamples = map[string]uint64{}
	res.Errors = 0
	for _, rw := range ok {
		med.spread = append(med.spread, rw.r.RPS)
		for k, v := range rw.r.Status {
			res.Status[k] += v
		}
		for h, m := range rw.r.Header {
			if res.Header[h] == nil {
				res.Header[h] = map[string]uint64{}
			}
			for k, v := range m {
				res.Header[h][k] += v
			}
		}
		res.Errors += rw.r.Errors
		for k, v := range rw.r.ErrSamples {
			res.ErrSamples[k] += v
		}
	}
	if len(ok) < len(rounds) {
		notes = append(notes, fmt.Sprintf("only %d of %d rounds ran", len(ok), len(rounds)))
	}
	med.r = &res
	med.note = strings.Join(notes, "; ")
	return &med
}

func key(scenario, body string) string { return scenario + "/" + body }

func table(manifest string) int {
	f, err := os.Open(manifest)
	if err != nil {
		die("%v", err)
	}
	defer f.Close()
	var rows []*row
	byKey := map[string]*row{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) < 9 {
			die("manifest: short line %q", line)
		}
		rw := &row{scenario: fs[0], body: fs[1], file: fs[2], expect: fs[8]}
		rw.rssKB, _ = strconv.ParseInt(fs[3], 10, 64)
		rw.cpuTicks, _ = strconv.ParseInt(fs[4], 10, 64)
		rw.redisTicks, _ = strconv.ParseInt(fs[5], 10, 64)
		rw.clkTck, _ = strconv.ParseInt(fs[6], 10, 64)
		rw.originCalls, _ = strconv.ParseInt(fs[7], 10, 64)
		rw.note = strings.Join(fs[9:], " ")
		if rw.file != "-" {
			if rw.r, err = readResult(rw.file); err != nil {
				rw.note = strings.TrimSpace(rw.note + " unreadable result: " + err.Error())
				rw.r = nil
			}
		}
		k := key(rw.scenario, rw.body)
		if prev := byKey[k]; prev != nil {
			prev.rounds = append(prev.rounds, rw)
			continue
		}
		rw.rounds = []*row{rw}
		rows = append(rows, rw)
		byKey[k] = rw
	}
	if err := sc.Err(); err != nil {
		die("%v", err)
	}
	// With ROUNDS > 1 a row was measured several times: show the round with
	// the median req/s, but the status and X-Cache histograms and the notes of
	// all rounds, so a problem in any round stays visible.
	for i, rw := range rows {
		if len(rw.rounds) > 1 {
			rows[i] = pickMedian(rw.rounds)
			byKey[key(rw.scenario, rw.body)] = rows[i]
		}
	}

	rps := func(scenario, body string) float64 {
		if rw := byKey[key(scenario, body)]; rw != nil && rw.r != nil {
			return rw.r.RPS
		}
		return 0
	}
	// Which proxy row each scenario is compared with.
	proxyRef := func(rw *row) (string, string) {
		switch rw.scenario {
		case "miss", "miss-memory", "miss-off":
			return "proxy-unique", rw.body
		case "enc-hit":
			return "enc-proxy", rw.body
		case "dashboard-hit":
			return "dashboard-proxy", "dashboard"
		case "proxy", "dashboard-proxy":
			return "", ""
		}
		return "proxy", rw.body
	}

	bad := 0
	// Footnotes, one per distinct note text, listing the rows that carry it.
	var footnotes []string
	var footRows [][]string
	footIdx := map[string]int{}
	footnote := func(rw *row) string {
		i, ok := footIdx[rw.note]
		if !ok {
			i = len(footnotes)
			footIdx[rw.note] = i
			footnotes = append(footnotes, rw.note)
			footRows = append(footRows, nil)
		}
		footRows[i] = append(footRows[i], key(rw.scenario, rw.body))
		return fmt.Sprintf(" [%d]", i+1)
	}
	var b strings.Builder
	b.WriteString("| scenario | body | req/s | p50 ms | p99 ms | max ms | vs respond | vs proxy | Caddy CPU µs/req | Redis CPU µs/req | peak RSS | origin calls | status | X-Cache |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|\n")
	for _, rw := range rows {
		if rw.r == nil {
			fmt.Fprintf(&b, "| %s | %s | n/a | | | | | | | | | | |%s |\n", rw.scenario, rw.body, footnote(rw))
			continue
		}
		r := rw.r
		vsRespond := "—"
		switch rw.scenario {
		case "respond":
		case "enc-hit", "enc-proxy":
			// Compared with serving the same precompressed bytes bare.
			vsRespond = ratio(r.RPS, rps("gz-file", rw.body)) + " (vs gz-file)"
		default:
			vsRespond = ratio(r.RPS, rps("respond", rw.body))
		}
		vsProxy := "—"
		if ps, pb := proxyRef(rw); ps != "" {
			vsProxy = ratio(r.RPS, rps(ps, pb))
			if ps != "proxy" {
				vsProxy += " (vs " + ps + ")"
			}
		}
		perReq := func(ticks int64) string {
			if rw.clkTck <= 0 || r.Requests == 0 || ticks <= 0 {
				return "—"
			}
			return fmt.Sprintf("%.0f", float64(ticks)/float64(rw.clkTck)*1e6/float64(r.Requests))
		}
		cpu, redisCPU := perReq(rw.cpuTicks), "—"
		if usesRedis(rw.scenario) {
			redisCPU = perReq(rw.redisTicks)
		}
		rss := "—"
		if rw.rssKB > 0 {
			rss = fmt.Sprintf("%.0f MiB", float64(rw.rssKB)/1024)
		}
		origin := "—"
		if rw.originCalls >= 0 {
			origin = strconv.FormatInt(rw.originCalls, 10)
		}
		status := hist(r.Status)
		if p := statusProblems(r.Stats); p != "" {
			status = "**⚠ " + status + "; " + p + "**"
			bad++
		}
		if r.Check != nil {
			if p := statusProblems(*r.Check); p != "" {
				status += " **⚠ check: " + hist(r.Check.Status) + "; " + p + "**"
				bad++
			}
		}
		xc := "—"
		if h, ok := r.Header["X-Cache"]; ok {
			xc = hist(h)
			if r.Check != nil {
				xc += " (check)"
			}
			if rw.expect != "-" {
				for k, v := range h {
					if k != rw.expect && v > 0 {
						xc = "**⚠ " + xc + " (expected all " + rw.expect + ")**"
						bad++
						break
					}
				}
			}
		}
		if rw.note != "" {
			xc += footnote(rw)
		}
		reqs := fmt.Sprintf("%.0f", r.RPS)
		if len(rw.spread) > 1 {
			lo, hi := rw.spread[0], rw.spread[len(rw.spread)-1]
			reqs += fmt.Sprintf(" (%.0f–%.0f)", lo, hi)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			rw.scenario, rw.body, reqs, ms(r.Latency.P50), ms(r.Latency.P99), ms(r.Latency.Max),
			vsRespond, vsProxy, cpu, redisCPU, rss, origin, status, xc)
	}

	// Headline numbers under the table.
	var notes []string
	for _, body := range []string{"small", "large"} {
		if h, r := rps("hit", body), rps("respond", body); h > 0 && r > 0 {
			notes = append(notes, fmt.Sprintf("- HIT (Redis) %s: %.0f req/s = %.0f%% of bare `respond` (%.0f req/s), %.2f× plain `reverse_proxy`.",
				body, h, 100*h/r, r, h/maxf(rps("proxy", body), 1e-9)))
		}
		if m, p := byKey[key("miss", body)], byKey[key("proxy-unique", body)]; m != nil && p != nil && m.r != nil && p.r != nil {
			notes = append(notes, fmt.Sprintf("- MISS+store %s: %.0f req/s vs %.0f uncached (%.0f%%); p50 %s ms vs %s ms (+%s ms).",
				body, m.r.RPS, p.r.RPS, 100*m.r.RPS/maxf(p.r.RPS, 1e-9), ms(m.r.Latency.P50), ms(p.r.Latency.P50),
				ms(m.r.Latency.P50-p.r.Latency.P50)))
		}
		if m, p := byKey[key("miss-memory", body)], byKey[key("proxy-unique", body)]; m != nil && p != nil && m.r != nil && p.r != nil {
			notes = append(notes, fmt.Sprintf("- MISS+store, embedded store (the handler's own cost, no Redis) %s: %.0f req/s vs %.0f uncached (%.0f%%).",
				body, m.r.RPS, p.r.RPS, 100*m.r.RPS/maxf(p.r.RPS, 1e-9)))
		}
	}
	if m, o, p := rps("miss", "large"), rps("miss-off", "large"), rps("proxy-unique", "large"); m > 0 && o > 0 && p > 0 {
		notes = append(notes, fmt.Sprintf("- MISS+store large, compressed (default) vs `compress off`: %.0f vs %.0f req/s = %.2f× vs %.2f× uncached `reverse_proxy`.", m, o, m/p, o/p))
	}
	if h, e, f := rps("enc-hit", "large"), rps("enc-proxy", "large"), rps("gz-file", "large"); h > 0 && e > 0 && f > 0 {
		notes = append(notes, fmt.Sprintf("- gzip client, `encode` + cache HIT large: %.0f req/s = %.2f× `encode` without the cache, %.2f× a bare `file_server` of the precompressed bytes.", h, h/e, h/f))
	}
	if h, u := byKey[key("dashboard-hit", "dashboard")], byKey[key("dashboard-proxy", "dashboard")]; h != nil && u != nil && h.r != nil && u.r != nil && u.r.RPS > 0 && h.r.Latency.P50 > 0 {
		notes = append(notes, fmt.Sprintf("- Dashboard (800 ms upstream): cached %.0f req/s ÷ uncached %.1f req/s = **%.0f× throughput**; p50 %s ms → %s ms = **%.0f× lower latency**.",
			h.r.RPS, u.r.RPS, h.r.RPS/u.r.RPS, ms(u.r.Latency.P50), ms(h.r.Latency.P50), u.r.Latency.P50/h.r.Latency.P50))
	}
	if bad > 0 {
		notes = append(notes, fmt.Sprintf("- **⚠ %d row(s) with non-200 statuses, transport errors or unexpected X-Cache values (marked above).**", bad))
	}
	if len(footnotes) > 0 {
		b.WriteString("\nNotes:\n\n")
		for i, text := range footnotes {
			fmt.Fprintf(&b, "%d. %s: %s\n", i+1, strings.Join(footRows[i], ", "), text)
		}
	}
	if len(notes) > 0 {
		b.WriteString("\n" + strings.Join(notes, "\n") + "\n")
	}
	fmt.Print(b.String())
	if bad > 0 {
		return 3
	}
	return 0
}

// usesRedis: the scenarios whose Caddy talks to Redis (the others leave it idle).
func usesRedis(scenario string) bool {
	switch scenario {
	case "hit", "hit-local", "miss", "dashboard-hit", "miss-off", "enc-hit":
		return true
	}
	return false
}

func maxf(a, b float64) float64 {
	if a > b {
		return a
	}
	return b
}

// ---------------------------------------------------------------------------
// windows

func windows(args []string) int {
	type named struct {
		label string
		r     *result.Run
	}
	var rs []named
	for _, a := range args {
		label, file, ok := strings.Cut(a, "=")
		if !ok {
			die("windows: want LABEL=FILE, got %q", a)
		}
		r, err := readResult(file)
		if err != nil {
			die("%v", err)
		}
		rs = append(rs, named{label, r})
	}
	names := []string{"before", "during", "after"}
	bad := 0
	var b strings.Builder
	b.WriteString("| window | stream | requests | req/s | p50 ms | p99 ms | max ms | status | X-Cache |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|---|---|\n")
	n := 0
	for _, x := range rs {
		if len(x.r.Windows) > n {
			n = len(x.r.Windows)
		}
	}
	for i := 0; i < n; i++ {
		for _, x := range rs {
			if i >= len(x.r.Windows) {
				continue
			}
			w := x.r.Windows[i]
			name := fmt.Sprintf("%g–%gs", w.StartS, w.EndS)
			if n == len(names) {
				name = names[i] + " (" + name + ")"
			}
			status := hist(w.Status)
			if p := statusProblems(w.Stats); p != "" {
				status = "**⚠ " + status + "; " + p + "**"
				bad++
			}
			xc := "—"
			if h, ok := w.Header["X-Cache"]; ok {
				xc = hist(h)
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %.0f | %s | %s | %s | %s | %s |\n",
				name, x.label, w.Requests, w.RPS, ms(w.Latency.P50), ms(w.Latency.P99), ms(w.Latency.Max), status, xc)
		}
	}
	fmt.Print(b.String())
	if bad > 0 {
		fmt.Printf("\n**⚠ %d window(s) with non-200 statuses or transport errors.**\n", bad)
		return 3
	}
	return 0
}
