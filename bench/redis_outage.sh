#!/usr/bin/env bash
# Redis outage under load: bash bench/redis_outage.sh [seconds]   (default 30)
#
# Runs a redis_cache Caddy against its own redis-server and puts a fixed load
# on it for [seconds]: 12 connections on one hot URL (HITs) and 4 connections
# on unique URLs (MISS + store). Redis is SIGKILLed at 1/3 of the run and
# restarted (empty, same port) at 2/3. Prints status codes, X-Cache values and
# p50/p99/max latency for the before / during / after windows. Every request
# must be a 200; the script exits non-zero otherwise.
#
# Environment: HOT_CONNS (default 12), MISS_CONNS (default 4), KEEP_WORK=1.
set -euo pipefail

TOTAL=${1:-30}
TOTAL=${TOTAL%s}
[[ "$TOTAL" =~ ^[0-9]+$ && $TOTAL -ge 3 ]] || { echo "usage: $0 [seconds ≥ 3]" >&2; exit 2; }
HOT_CONNS=${HOT_CONNS:-12}
MISS_CONNS=${MISS_CONNS:-4}
WIN=$((TOTAL / 3))
TOTAL=$((WIN * 3))

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log "building tools"
build_tools
build_caddy
if [[ $HAVE_MODULE != 1 ]]; then
	log "cannot run: $MODULE_NOTE"
	exit 1
fi

start_redis
start_origin
CADDY_PORT=$(freeport)
start_caddy outage "$(cache_site "$CADDY_PORT" "redis://127.0.0.1:$REDIS_PORT" "")"
BASE="http://127.0.0.1:$CADDY_PORT"
seen=$(warm_until_hit "$BASE/api/small") || log "WARNING: never saw X-Cache: HIT before the run (last: $seen)"
log "redis-server :$REDIS_PORT, origin :$ORIGIN_PORT, caddy :$CADDY_PORT; X-Cache after warming: $seen"
log "load for ${TOTAL}s ($HOT_CONNS hot + $MISS_CONNS unique-URL connections); SIGKILL Redis at ${WIN}s, restart at $((2 * WIN))s"

START=$(date +%s.%N)
"$BIN/loadgen" -url "$BASE/api/small" -c "$HOT_CONNS" -d "${TOTAL}s" -windows "${WIN}s" \
	-count-header X-Cache -label hot >"$WORK/res/hot.json" &
HOT_PID=$!
PIDS+=("$HOT_PID")
"$BIN/loadgen" -url "$BASE/api/small?n={n}&run=$$" -c "$MISS_CONNS" -d "${TOTAL}s" -windows "${WIN}s" \
	-count-header X-Cache -label unique >"$WORK/res/unique.json" &
MISS_PID=$!
PIDS+=("$MISS_PID")

sleep "$WIN"
log "SIGKILL redis-server (pid $REDIS_PID)"
kill -KILL "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
sleep "$WIN"
log "restarting redis-server on port $REDIS_PORT (empty)"
start_redis "$REDIS_PORT"
wait "$HOT_PID" "$MISS_PID"

rc=0
echo
"$BIN/benchtool" windows "hot /api/small=$WORK/res/hot.json" "unique URLs=$WORK/res/unique.json" || rc=$?
echo
echo "Caddy warnings/errors, seconds from the start of the load (expect one per state change):"
grep -E '"level":"(warn|error)"' "$WORK/logs/caddy-outage.log" |
	grep -vE 'admin endpoint disabled|HTTP/[23] skipped because|exiting; byeee' |
	sed -E 's/.*"ts":([0-9.]+).*"msg":"(([^"\\]|\\.)*)".*/\1 \2/' |
	awk -v t0="$START" '{ts=$1; $1=""; printf "  t=%6.2fs%s\n", ts-t0, $0}' >"$WORK/warnings.txt" || true
head -n 20 "$WORK/warnings.txt"
n=$(wc -l <"$WORK/warnings.txt")
[[ $n -gt 20 ]] && echo "  … $((n - 20)) more" || true
[[ $n -eq 0 ]] && echo "  (none)" || true
echo
if [[ $rc -ne 0 ]]; then
	log "FAIL: some requests were not 200"
	exit "$rc"
fi
log "OK: every request was a 200"
