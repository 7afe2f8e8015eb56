#!/usr/bin/env bash
# Caddy's memory under slow readers (issue 12, finding 8): CLIENTS clients
# (default 300) each ask for a distinct cacheable ~4 MiB URL and read it
# slowly. Prints Caddy's resident memory growth for a plain reverse_proxy
# and for the cache (Redis store) in front of the same origin. Target: the
# cache's growth is at most 2x passthrough's plus inflight_budget.
#
#   bench/slow_readers.sh                       # defaults
#   CLIENTS=100 BUDGET=64MiB bench/slow_readers.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-300}
BUDGET=${BUDGET:-256MiB}
PAUSE=${PAUSE:-50ms}

log "building tools and Caddy"
(cd "$ROOT" && go build -o "$BIN/" ./bench/slowreaders ./bench/benchtool)
build_caddy
[[ $HAVE_MODULE == 1 ]] || { log "$MODULE_NOTE"; exit 1; }

start_redis
ORIGIN_PORT=$(freeport)
"$BIN/slowreaders" -origin "127.0.0.1:$ORIGIN_PORT" 2>"$WORK/logs/origin.log" &
PIDS+=("$!")
sleep 0.5

measure() { # measure NAME CADDYFILE_TEXT
	local name=$1
	CADDY_PORT=$(freeport)
	start_caddy "$name" "$(printf "$2" "$CADDY_PORT")"
	curl -s -o /dev/null "http://127.0.0.1:$CADDY_PORT/big/warm" # first request's allocations
	sleep 1
	printf '%-12s ' "$name"
	"$BIN/slowreaders" -url "http://127.0.0.1:$CADDY_PORT/big/$name-" -pid "$CADDY_PID" \
		-clients "$CLIENTS" -pause "$PAUSE"
	stop_caddy
}

global=$(caddy_global)
measure passthrough "$global
http://127.0.0.1:%s {
	reverse_proxy 127.0.0.1:$ORIGIN_PORT
}"
measure cache "$global
http://127.0.0.1:%s {
	redis_cache {
		redis redis://127.0.0.1:$REDIS_PORT
		namespace slow
		inflight_budget $BUDGET
		route big /big/* 5m
	}
	reverse_proxy 127.0.0.1:$ORIGIN_PORT
}"
