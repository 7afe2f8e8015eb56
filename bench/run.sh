#!/usr/bin/env bash
# The redis_cache benchmark: bash bench/run.sh [duration]   (default 5s per row)
#
# Builds ./cmd/caddy, starts its own redis-server and a Go origin on free
# 127.0.0.1 ports, then runs one Caddy per row and measures it with
# bench/loadgen (a separate process). Prints a markdown table and writes it to
# bench/results.md. Only the ratios within one run mean anything: the load
# generator, Caddy, the origin and Redis share the machine's cores.
#
# Environment: ROWS (e.g. "proxy-unique:large miss:large memory": only those rows), BENCH_LOADER (wrk when installed, else loadgen), CONNS (default 32), WARMUP (default 1s, unmeasured, before each
# row), ROUNDS (default 1; with N > 1 every row is measured N times, rounds
# interleaved, and the table shows the median round), KEEP_WORK=1 keeps logs and raw JSON in the temp dir, BENCH_STOCK_CADDY=1
# builds stock Caddy (the cache rows print n/a) to test the harness itself.
set -euo pipefail

DUR=${1:-5s}
[[ "$DUR" =~ ^[0-9]+$ ]] && DUR="${DUR}s"
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-1}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
ROUND=1

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MANIFEST="$WORK/manifest"
: >"$MANIFEST"
RUN_ID=$(date +%s)$$
# The load generator: wrk when installed (it costs the shared cores far less
# per request than a Go client), else bench/loadgen. BENCH_LOADER=loadgen
# forces the latter.
LOADER=${BENCH_LOADER:-$(command -v wrk >/dev/null && echo wrk || echo loadgen)}
[[ $LOADER == wrk || $LOADER == loadgen ]] || { echo "BENCH_LOADER must be wrk or loadgen" >&2; exit 2; }

log "building tools"
build_tools
build_caddy
CADDY_VERSION=$("$BIN/caddy" version | cut -d' ' -f1)

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_redis
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
start_origin
log "redis-server :$REDIS_PORT, origin :$ORIGIN_PORT, $DUR per row, $CONNS connections, warm-up $WARMUP"

# na SCENARIO BODY NOTE: a row that could not run.
na() { echo "$1 $2 - 0 0 0 $CLK_TCK -1 - $3" >>"$MANIFEST"; }

# measure SCENARIO BODY ROUTE URL EXPECT [NOTE]: warm-up run, then the measured
# run against the Caddy in CADDY_PID; appends a manifest line. With wrk, a
# 1 s loadgen run after the measured one checks statuses and X-Cache.
measure() {
	local scenario=$1 body=$2 route=$3 url=$4 expect=$5 note=${6:-}
	local out="$WORK/res/${scenario}__${body}__r$ROUND.json"
	local hdr=()
	[[ -n ${REQ_HEADER:-} ]] && hdr=(-H "$REQ_HEADER")
	"$BIN/loadgen" -url "$url" -c "$CONNS" -d "$WARMUP" -n-start 0 "${hdr[@]}" >/dev/null
	local cpu0 o0 cpu1 o1 rss r0 r1
	cpu0=$(cpu_ticks "$CADDY_PID")
	r0=$(cpu_ticks "$REDIS_PID")
	o0=$(origin_calls "$route")
	if [[ $LOADER == wrk ]]; then
		# wrk gets the URL itself, unless it must number the requests.
		local target=$url template=""
		if [[ $url == *"{n}"* ]]; then
			target="${url%%/api/*}/"
			template=${url#"${url%%/api/*}"}
		fi
		WRK_PATH=$template WRK_N_START=1000000000 WRK_OUT="$out.wrk" \
			wrk -t2 -c"$CONNS" -d"$DUR" -s "$BENCH_DIR/wrk.lua" ${REQ_HEADER:+-H "$REQ_HEADER"} "$target" >/dev/null
	else
		"$BIN/loadgen" -url "$url" -c "$CONNS" -d "$DUR" -n-start 1000000000 \
			-count-header X-Cache -label "$scenario/$body" "${hdr[@]}" >"$out"
	fi
	cpu1=$(cpu_ticks "$CADDY_PID")
	r1=$(cpu_ticks "$REDIS_PID")
	o1=$(origin_calls "$route")
	rss=$(vmhwm_kb "$CADDY_PID")
	if [[ $LOADER == wrk ]]; then
		"$BIN/loadgen" -url "$url" -c 4 -d 1s -n-start 5000000000 -count-header X-Cache "${hdr[@]}" >"$out.check"
		"$BIN/benchtool" attach-check "$out.wrk" "$out.check" >"$out"
	fi
	local warns
	warns=$(caddy_warnings "$WORK/logs/caddy-$scenario-$body.log")
	[[ -n "$warns" ]] && note="${note:+$note; }Caddy log (warm-up + run): $warns"
	echo "$scenario $body $out $rss $((cpu1 - cpu0)) $((r1 - r0)) $CLK_TCK $((o1 - o0)) $expect $note" >>"$MANIFEST"
	log "  $scenario/$body: $(sed -E 's/^[^}]*"rps":([0-9.]+),"latency_ms":\{"p50":([0-9.]+).*/\1 req\/s, p50 \2 ms/' "$out")"
}

# row SCENARIO BODY: start the right Caddy, check it, measure, stop it.
# ROWS="scenario:body ..." limits a run to those rows.
row() {
	local scenario=$1 body=$2
	if [[ -n ${ROWS:-} && " $ROWS " != *" $scenario:$body "* ]]; then
		return 0
	fi
	CADDY_PORT=$(freeport)
	local base="http://127.0.0.1:$CADDY_PORT"
	local path="/api/$body" route=$body site expect=- note="" url
	REQ_HEADER=""
	[[ $body == dashboard ]] && path=/api/dashboard
	url="$base$path"
	if [[ $ROUNDS -gt 1 ]]; then
		log "$scenario/$body (round $ROUND/$ROUNDS)"
	else
		log "$scenario/$body"
	fi
	case $scenario in
	respond)
		site=$(respond_site "$CADDY_PORT" "$body") ;;
	proxy | dashboard-proxy)
		site=$(proxy_site "$CADDY_PORT") ;;
	proxy-unique)
		site=$(proxy_site "$CADDY_PORT")
		url="$base$path?n={n}&run=$RUN_ID" ;;
	hit | dashboard-hit)
		site=$(cache_site "$CADDY_PORT" "$REDIS_URL" "") expect=HIT ;;
	hit-local)
		site=$(cache_site "$CADDY_PORT" "$REDIS_URL" "local_cache 64MiB") expect=HIT ;;
	hit-memory)
		site=$(cache_site "$CADDY_PORT" "" "") expect=HIT ;;
	miss)
		site=$(cache_site "$CADDY_PORT" "$REDIS_URL" "") expect=MISS
		url="$base$path?n={n}&run=$RUN_ID" ;;
	miss-memory)
		site=$(cache_site "$CADDY_PORT" "" "") expect=MISS
		url="$base$path?n={n}&run=$RUN_ID" ;;
	miss-off)
		site=$(cache_site "$CADDY_PORT" "$REDIS_URL" "compress off") expect=MISS
		url="$base$path?n={n}&run=$RUN_ID" ;;
	enc-proxy)
		site=$(encode_site "$CADDY_PORT" "") REQ_HEADER="Accept-Encoding: gzip" ;;
	enc-hit)
		site=$(encode_site "$CADDY_PORT" "$REDIS_URL") expect=HIT REQ_HEADER="Accept-Encoding: gzip" ;;
	gz-file)
		site=$(gzfile_site "$CADDY_PORT" "$body") REQ_HEADER="Accept-Encoding: gzip" ;;
	*)
		log "unknown scenario $scenario"; return 1 ;;
	esac
	case $scenario in
	hit | hit-local | hit-memory | miss | miss-memory | dashboard-hit | miss-off | enc-hit)
		if [[ $HAVE_MODULE != 1 ]]; then
			na "$scenario" "$body" "$MODULE_NOTE"
			return 0
		fi
		rcli flushall >/dev/null ;;
	esac
	if ! start_caddy "$scenario-$body" "$site"; then
		na "$scenario" "$body" "n/a: Caddy rejected the config: $CADDY_ERR"
		return 0
	fi
	# The bytes served must be the origin's bytes.
	local probe=${url//\{n\}/probe}
	if ! cmp -s <(curl -s --max-time 5 "$probe") <("$BIN/origin" -print "$body"); then
		note="⚠ the body differs from the origin's"
		log "  WARNING: $probe does not return the origin's body"
	fi
	case $scenario in
	hit | hit-local | hit-memory | dashboard-hit | enc-hit)
		local seen
		if seen=$(warm_until_hit "$url"); then
			log "  curl: X-Cache: HIT after warming"
		else
			log "  WARNING: never saw X-Cache: HIT (last: $seen)"
			note="${note:+$note; }⚠ curl never saw X-Cache: HIT after warming (last: $seen)"
		fi ;;
	esac
	measure "$scenario" "$body" "$route" "$url" "$expect" "$note"
	stop_caddy
}

# MEMORY_ONLY=1 runs only the Redis memory measurement below.
[[ ${MEMORY_ONLY:-} == 1 ]] && ROUNDS_LIST="" || ROUNDS_LIST=$(seq "$ROUNDS")
for ROUND in $ROUNDS_LIST; do
	for body in small large; do
		for scenario in respond proxy hit hit-local hit-memory proxy-unique miss miss-memory; do
			row "$scenario" "$body"
		done
	done
	row dashboard-proxy dashboard
	row dashboard-hit dashboard
	for scenario in miss-off gz-file enc-proxy enc-hit; do
		row "$scenario" large
	done
done

# memory_row COMPRESS: Redis memory per stored 4 KiB JSON entry (used_memory
# delta over the entries that MEMORY_DUR of distinct URLs stored, at least
# 10,000 on an idle machine, and MEMORY USAGE averaged over up to 200 entry
# keys), with the given compress setting. The delta includes each URL's own
# generation key, which every entry gets, compressed or not.
MEMORY_DUR=${MEMORY_DUR:-5s}
MEMORY_ROWS=""
memory_row() {
	local setting=$1 raw
	raw=$("$BIN/origin" -print doc | wc -c)
	[[ $HAVE_MODULE == 1 ]] || return 0
	CADDY_PORT=$(freeport)
	rcli flushall >/dev/null
	start_caddy "memory-$setting" "$(cache_site "$CADDY_PORT" "$REDIS_URL" "compress $setting")" || return 0
	curl -s -o /dev/null "http://127.0.0.1:$CADDY_PORT/api/doc?warm=1"
	local before after keys usage entries
	before=$(rcli info memory | tr -d '\r' | sed -n 's/^used_memory://p')
	local n0
	n0=$(rcli --scan --pattern 'bench:*' | grep -vc '^bench:_' || true)
	"$BIN/loadgen" -url "http://127.0.0.1:$CADDY_PORT/api/doc?m={n}" -c 8 -d "$MEMORY_DUR" -n-start 1 >/dev/null
	sleep 1
	after=$(rcli info memory | tr -d '\r' | sed -n 's/^used_memory://p')
	entries=$(( $(rcli --scan --pattern 'bench:*' | grep -vc '^bench:_' || true) - n0 ))
	((entries > 0)) || entries=1
	ENTRIES=$entries
	keys=$(rcli --scan --pattern 'bench:*' | awk '!/^bench:_/ && n++ < 200')
	usage=$(for k in $keys; do rcli memory usage "$k"; done | awk '{s += $1; n++} END {if (n) printf "%.0f", s / n; else print 0}')
	stop_caddy
	MEMORY_ROWS="$MEMORY_ROWS| compress $setting | $raw B | $entries | $(( (after - before) / ENTRIES )) B | $(awk -v a=$(( (after - before) / ENTRIES )) -v r="$raw" 'BEGIN {printf "%.2f×", a / r}') | $usage B | $(awk -v a="$usage" -v r="$raw" 'BEGIN {printf "%.2f×", a / r}') |
"
	log "  memory, compress $setting: $(( (after - before) / ENTRIES )) B per entry (used_memory delta), MEMORY USAGE $usage B"
}
log "Redis memory per 4 KiB JSON entry, $MEMORY_DUR of distinct URLs per setting"
for setting in off gzip zstd; do
	[[ -z ${ROWS:-} || " $ROWS " == *" memory "* || ${MEMORY_ONLY:-} == 1 ]] && memory_row "$setting"
done
if [[ ${MEMORY_ONLY:-} == 1 ]]; then
	echo "| setting | raw body | entries | used_memory delta per entry | vs raw | MEMORY USAGE (avg of ≤200 entry keys) | vs raw |"
	echo "|---|--:|--:|--:|--:|--:|--:|"
	printf '%s' "$MEMORY_ROWS"
	exit 0
fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
ROUNDS_NOTE=""
if [[ $ROUNDS -gt 1 ]]; then
	ROUNDS_NOTE=", $ROUNDS interleaved rounds (req/s: median (min–max); the other columns come from the median round, status and X-Cache are summed over all rounds)"
fi
rc=0
TABLE=$("$BIN/benchtool" table "$MANIFEST") || rc=$?
ABOUT="\`bash bench/run.sh $DUR\` on $(date -u +'%Y-%m-%d %H:%M UTC'): Caddy $CADDY_VERSION, $(go version | cut -d' ' -f3), $(nproc) cores shared by the load generator ($LOADER$([[ $LOADER == wrk ]] && echo " -t2; statuses and X-Cache from a 1 s loadgen check after each row")), Caddy, origin and Redis ($(redis-server --version | cut -d' ' -f3)), $CONNS keep-alive connections, $DUR per row after a $WARMUP warm-up$ROUNDS_NOTE. Load average before/after: $LOAD_START / $LOAD_END. Compare ratios within this table only; absolute numbers depend on the machine."
if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
	ABOUT="$ABOUT **The machine was already busy when the run started (load average ${LOAD_START%% *}), so rows measured at different moments saw different contention: treat the ratios as rough.**"
fi
{
	echo "# redis_cache benchmark results"
	echo
	echo "$ABOUT"
	echo
	echo "$TABLE"
	echo
	echo "Columns: see bench/README.md."
	if [[ -n $MEMORY_ROWS ]]; then
		echo
		echo "Redis memory per stored 4 KiB JSON entry (\`/api/doc\`, distinct URLs for $MEMORY_DUR per setting, default level of each codec):"
		echo
		echo "| setting | raw body | entries | used_memory delta per entry | vs raw | MEMORY USAGE (avg of ≤200 entry keys) | vs raw |"
		echo "|---|--:|--:|--:|--:|--:|--:|"
		printf '%s' "$MEMORY_ROWS"
	fi
} >"$BENCH_DIR/results.md"
echo
echo "$ABOUT"
echo
echo "$TABLE"
echo
log "table written to bench/results.md"
if [[ $rc -ne 0 ]]; then
	log "some rows have non-200 statuses, errors or unexpected X-Cache values (marked ⚠)"
	exit "$rc"
fi
