# Shared helpers for bench/run.sh and bench/redis_outage.sh (sourced, not run).
# Everything listens on 127.0.0.1 only, on free ports; every process started
# here is recorded in PIDS and stopped by the EXIT trap.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/redis-cache-bench.XXXXXX")
BIN="$WORK/bin"
mkdir -p "$BIN" "$WORK/logs" "$WORK/res" "$WORK/xdg"
PIDS=()
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

stop_pid() { # stop_pid PID: SIGTERM, then SIGKILL after 5 s
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? p
	trap - EXIT INT TERM
	for p in "${PIDS[@]}"; do
		stop_pid "$p"
	done
	if [[ -n "${KEEP_WORK:-}" || $rc -ne 0 ]]; then
		log "logs and raw results kept in $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
set -E
trap 'log "error: \"$BASH_COMMAND\" failed (exit $?) at ${BASH_SOURCE[0]##*/}:$LINENO"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

freeport() { "$BIN/benchtool" freeport 1; }

# build_tools: loadgen, origin, benchtool (stdlib only, fast).
build_tools() {
	(cd "$ROOT" && go build -o "$BIN/" ./bench/loadgen ./bench/origin ./bench/benchtool)
}

# build_mixload_and_caddy: the write-mix and cold-start tools, and Caddy with
# the module; exits when the module is missing.
build_mixload_and_caddy() {
	log "building tools"
	(cd "$ROOT" && go build -o "$BIN/" ./bench/mixload ./bench/benchtool)
	build_caddy
	if [[ $HAVE_MODULE != 1 ]]; then
		log "cannot run: $MODULE_NOTE"
		exit 1
	fi
}

# build_caddy: ./cmd/caddy into $BIN/caddy. If it does not compile, fall back
# to stock Caddy so the respond/proxy rows still run. Sets HAVE_MODULE=1|0 and
# MODULE_NOTE.
build_caddy() {
	HAVE_MODULE=0
	MODULE_NOTE=""
	if [[ -n "${BENCH_STOCK_CADDY:-}" ]]; then
		MODULE_NOTE="n/a: BENCH_STOCK_CADDY is set (stock Caddy, no module)"
		log "building stock Caddy (BENCH_STOCK_CADDY is set)"
		(cd "$ROOT" && go build -o "$BIN/caddy" github.com/caddyserver/caddy/v2/cmd/caddy)
		log "$MODULE_NOTE"
		return 0
	fi
	log "building ./cmd/caddy (first build of Caddy can take minutes; later ones are cached)"
	if (cd "$ROOT" && go build -o "$BIN/caddy" ./cmd/caddy) >"$WORK/logs/build.log" 2>&1; then
		# Capture first: grep -q closing the pipe early would fail the
		# pipeline under pipefail.
		local modules
		modules=$("$BIN/caddy" list-modules 2>/dev/null || true)
		if grep -qx 'http.handlers.redis_cache' <<<"$modules"; then
			HAVE_MODULE=1
		else
			MODULE_NOTE="n/a: ./cmd/caddy builds but has no http.handlers.redis_cache module"
		fi
	else
		log "./cmd/caddy does not compile; falling back to stock Caddy:"
		tail -n 15 "$WORK/logs/build.log" | sed 's/^/    /' >&2
		MODULE_NOTE="n/a: ./cmd/caddy does not compile"
		(cd "$ROOT" && go build -o "$BIN/caddy" github.com/caddyserver/caddy/v2/cmd/caddy)
	fi
	[[ -n "$MODULE_NOTE" ]] && log "$MODULE_NOTE" || true
}

# wait_http URL PID NAME: wait (≤ 15 s) until URL answers; fail if PID dies.
wait_http() {
	local url=$1 pid=$2 name=$3 i
	for i in $(seq 150); do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "$name exited during start-up"
			return 1
		fi
		if curl -s -o /dev/null --max-time 1 "$url"; then
			return 0
		fi
		sleep 0.1
	done
	log "$name did not answer $url within 15 s"
	return 1
}

# start_redis: own redis-server on a free port (never the shared 6379).
# Sets REDIS_PORT and REDIS_PID. start_redis [PORT] reuses a port (restart).
start_redis() {
	REDIS_PORT=${1:-$(freeport)}
	redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
		--maxmemory 2gb --maxmemory-policy allkeys-lru --daemonize no \
		--dir "$WORK" --logfile "$WORK/logs/redis.log" &
	REDIS_PID=$!
	PIDS+=("$REDIS_PID")
	local i
	for i in $(seq 100); do
		if [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; then
			return 0
		fi
		kill -0 "$REDIS_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "redis-server on port $REDIS_PORT did not start"; tail -n 5 "$WORK/logs/redis.log" >&2
	return 1
}

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# start_origin [ARGS...]: sets ORIGIN_PORT and ORIGIN_PID.
start_origin() {
	ORIGIN_PORT=$(freeport)
	"$BIN/origin" -addr "127.0.0.1:$ORIGIN_PORT" "$@" 2>"$WORK/logs/origin.log" &
	ORIGIN_PID=$!
	PIDS+=("$ORIGIN_PID")
	wait_http "http://127.0.0.1:$ORIGIN_PORT/_origin/stats" "$ORIGIN_PID" origin
}

# origin_calls small|large|dashboard: requests the origin has served on that route.
origin_calls() {
	curl -s --max-time 2 "http://127.0.0.1:$ORIGIN_PORT/_origin/stats" |
		sed -n 's/.*"'"$1"'":\([0-9]*\).*/\1/p'
}

# start_caddy NAME CADDYFILE_TEXT: runs Caddy on $CADDY_PORT (set it first).
# Sets CADDY_PID. On failure returns 1 and leaves the reason in CADDY_ERR.
start_caddy() {
	local name=$1 text=$2
	local cf="$WORK/$name.Caddyfile"
	printf '%s\n' "$text" >"$cf"
	CADDY_ERR=""
	XDG_DATA_HOME="$WORK/xdg" XDG_CONFIG_HOME="$WORK/xdg" \
		"$BIN/caddy" run --config "$cf" --adapter caddyfile >"$WORK/logs/caddy-$name.log" 2>&1 &
	CADDY_PID=$!
	PIDS+=("$CADDY_PID")
	if ! wait_http "http://127.0.0.1:$CADDY_PORT/" "$CADDY_PID" "caddy ($name)"; then
		CADDY_ERR=$(caddy_log_msg "$WORK/logs/caddy-$name.log" '"level":"(error|fatal)"' | tail -n 1 | cut -c1-200)
		[[ -n "$CADDY_ERR" ]] || CADDY_ERR=$(tail -n 1 "$WORK/logs/caddy-$name.log" | cut -c1-200)
		log "caddy ($name) failed: $CADDY_ERR"
		stop_pid "$CADDY_PID"
		return 1
	fi
}

stop_caddy() { stop_pid "$CADDY_PID"; }

# caddy_log_msg FILE REGEX: the "msg" (and "error") of Caddy's JSON log lines matching REGEX.
caddy_log_msg() {
	grep -E "$2" "$1" 2>/dev/null | sed -E 's/.*"msg":"(([^"\\]|\\.)*)"(.*"error":"(([^"\\]|\\.)*)")?.*/\1: \4/; s/\\"/"/g; s/: $//' || true
}

# caddy_warnings FILE: "N× message" for warn/error lines other than Caddy's
# usual start-up notes (admin off, no HTTP/2 and HTTP/3 without TLS, exit).
caddy_warnings() {
	caddy_log_msg "$1" '"level":"(warn|error)"' |
		grep -vE '^(admin endpoint disabled|HTTP/[23] skipped because it requires TLS|exiting; byeee)' |
		sed -E 's/(read|write|dial) tcp [0-9.:]+->[0-9.:]+/\1 tcp/' | sort | uniq -c | sort -rn |
		awk '{n=$1; $1=""; printf "%s%d×%s", (NR>1?"; ":""), n, $0}' || true
}

# Caddyfile pieces.
caddy_global() {
	printf '{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tdefault_bind 127.0.0.1\n}\n'
}

# cache_site PORT REDIS_URL|"" EXTRA_LINE|"": the module config from the brief.
cache_site() {
	local port=$1 redis=$2 extra=$3
	caddy_global
	printf 'http://127.0.0.1:%s {\n\tredis_cache {\n' "$port"
	[[ -n "$redis" ]] && printf '\t\tredis %s\n' "$redis"
	printf '\t\tnamespace bench\n'
	[[ -n "$extra" ]] && printf '\t\t%s\n' "$extra"
	printf '\t\troute small /api/small* 5m\n\t\troute large /api/large* 5m\n\t\troute dashboard /api/dashboard* 5m\n\t\troute doc /api/doc* 5m\n\t}\n'
	printf '\treverse_proxy 127.0.0.1:%s\n}\n' "$ORIGIN_PORT"
}

# encode_site PORT REDIS_URL|"": `encode zstd gzip` in front of
# reverse_proxy, with redis_cache between them when a Redis URL is given
# (the order the README recommends: encode outside the cache).
encode_site() {
	local port=$1 redis=$2
	caddy_global
	printf 'http://127.0.0.1:%s {\n\troute {\n\t\tencode zstd gzip\n' "$port"
	if [[ -n "$redis" ]]; then
		printf '\t\tredis_cache {\n\t\t\tredis %s\n\t\t\tnamespace bench\n\t\t\troute large /api/large* 5m\n\t\t\troute small /api/small* 5m\n\t\t}\n' "$redis"
	fi
	printf '\t\treverse_proxy 127.0.0.1:%s\n\t}\n}\n' "$ORIGIN_PORT"
}

# gzfile_site PORT BODYNAME: a bare file_server of the body and its gzip
# form (precompressed), the baseline for serving stored gzip bytes: a
# respond body cannot hold binary bytes.
gzfile_site() {
	local dir="$WORK/www/api"
	mkdir -p "$dir"
	"$BIN/origin" -print "$2" >"$dir/$2"
	gzip -1 -c "$dir/$2" >"$dir/$2.gz"
	caddy_global
	printf 'http://127.0.0.1:%s {\n\troot * %s\n\theader Content-Type application/json\n\tfile_server {\n\t\tprecompressed gzip\n\t}\n}\n' "$1" "$WORK/www"
}

proxy_site() {
	caddy_global
	printf 'http://127.0.0.1:%s {\n\treverse_proxy 127.0.0.1:%s\n}\n' "$1" "$ORIGIN_PORT"
}

# respond_site PORT BODYNAME: bare `respond` of the origin's exact bytes.
respond_site() {
	local body
	body=$("$BIN/origin" -print "$2")
	caddy_global
	printf 'http://127.0.0.1:%s {\n\theader Content-Type application/json\n\trespond `%s` 200\n}\n' "$1" "$body"
}

# xcache URL: the X-Cache value of one GET (empty if none).
xcache() {
	curl -s -o /dev/null -D - --max-time 5 "$1" | tr -d '\r' | sed -n 's/^[Xx]-[Cc]ache: *//p' | head -n 1
}

# warm_until_hit URL: GET until X-Cache: HIT (≤ ~5 s). Prints the last value seen.
warm_until_hit() {
	local url=$1 v="" i
	for i in $(seq 50); do
		v=$(xcache "$url")
		if [[ "$v" == HIT ]]; then
			echo HIT
			return 0
		fi
		sleep 0.1
	done
	echo "${v:-none}"
	return 1
}

vmhwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
