#!/usr/bin/env bash
# Cold start: bash bench/cold_start.sh [runs]   (default 10)
#
# For each run, starts two fresh Caddys with `coalesce` on one redis-server,
# sends 200 concurrent GETs of one cold URL spread over both (same Host),
# and prints the upstream calls. The target is 1 call in every run.
set -euo pipefail

RUNS=${1:-10}

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_mixload_and_caddy
start_redis
fails=0
for run in $(seq "$RUNS"); do
	ORIGIN_PORT=$(freeport)
	pids=()
	targets=()
	for name in a b; do
		CADDY_PORT=$(freeport)
		start_caddy "cold-$run-$name" "$(caddy_global)
http://127.0.0.1:$CADDY_PORT {
	redis_cache {
		redis redis://127.0.0.1:$REDIS_PORT
		namespace cold
		coalesce
		route dashboard /api/dashboard* 5m
	}
	reverse_proxy 127.0.0.1:$ORIGIN_PORT
}" || true
		pids+=("$CADDY_PID")
		targets+=("http://127.0.0.1:$CADDY_PORT")
	done
	out=$("$BIN/mixload" burst -origin "127.0.0.1:$ORIGIN_PORT" -targets "${targets[0]},${targets[1]}" -n 200 -path "/api/dashboard?cold=$run-$$")
	echo "run $run: $out"
	[[ "$out" == upstream_calls=1\ * ]] || fails=$((fails + 1))
	for p in "${pids[@]}"; do stop_pid "$p"; done
done
echo "$((RUNS - fails)) of $RUNS runs made exactly 1 upstream call"
[[ $fails -eq 0 ]]
