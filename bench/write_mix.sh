#!/usr/bin/env bash
# The seed's mixed load: bash bench/write_mix.sh [seconds-per-row]   (default 10)
#
# 20 users poll their keyed dashboards and messages (X-User-Id) from an
# 800 ms upstream, through one Caddy on its own redis-server, while other
# users POST to an unrelated route at 0, 1, 5 and 20 writes/s, then to
# campaigns (which invalidates dashboards) at 1 and 5 writes/s. One row per
# rate: hit ratios and upstream calls. Writes to unrelated routes must leave
# the dashboard hit ratio where the no-write row has it. Then the same users
# poll one hot key whose entries live 3 s, with refresh_ahead off and on:
# requests that waited for the upstream, and upstream calls.
#
# Environment: USERS (default 20), RATES (default 0,1,5,20), KEEP_WORK=1.
set -euo pipefail

ROW=${1:-10}
ROW=${ROW%s}

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_mixload_and_caddy
start_redis
ORIGIN_PORT=$(freeport)
CADDY_PORT=$(freeport)
start_caddy_nowait() {
	printf '%s\n' "$2" >"$WORK/$1.Caddyfile"
	XDG_DATA_HOME="$WORK/xdg" XDG_CONFIG_HOME="$WORK/xdg" \
		"$BIN/caddy" run --config "$WORK/$1.Caddyfile" --adapter caddyfile >"$WORK/logs/caddy-$1.log" 2>&1 &
	PIDS+=("$!")
}
start_caddy_nowait mix "$(caddy_global)
http://127.0.0.1:$CADDY_PORT {
	redis_cache {
		redis redis://127.0.0.1:$REDIS_PORT
		namespace mix
		route dashboard /api/dashboard* 5m {
			key {http.request.header.X-User-Id}
		}
		route campaigns /api/marketing/campaigns* 2m {
			invalidates dashboard
		}
		route messages /api/messages* 30s {
			key {http.request.header.X-User-Id}:{query.platform}
			key_optional {query.platform}
		}
		route content /api/content* 5m
		route hot_plain /api/hot/plain* 3s {
			refresh_ahead off
		}
		route hot_ahead /api/hot/ahead* 3s
	}
	reverse_proxy 127.0.0.1:$ORIGIN_PORT
}"
log "redis :$REDIS_PORT, origin :$ORIGIN_PORT, caddy :$CADDY_PORT; ${ROW}s per row"
"$BIN/mixload" writemix -origin "127.0.0.1:$ORIGIN_PORT" -target "http://127.0.0.1:$CADDY_PORT" \
	-users "${USERS:-20}" -d "${ROW}s" -rates "${RATES:-0,1,5,20}"
