#!/usr/bin/env bash
# bench/config.sh — configuration service vs etcd, one run, driven by `mortar bench config`
# (the same Rust async client stack for mortar and etcd's v3 JSON gateway):
#
#   a) single-key puts/s at concurrency 32, each worker on its own key:
#      mortar embedded (SQLite), mortar cluster mode (PostgreSQL), etcd (single member,
#      default durability). Targets: embedded ≥ 1.0× etcd; PostgreSQL ≥ 0.5× etcd.
#   b) watch delivery: one writer puts a value every 2 ms, each its send time; watchers
#      (mortar: SSE `…/watch?key=w`; etcd: `/v3/watch` through the gateway) record
#      receive − send. 1 watcher each, then 10 000 mortar SSE watchers (the server's RSS is
#      sampled: its growth over the idle server, per watcher).
#      Target: mortar p99 ≤ etcd's p99 (1 watcher); p99 ≤ 100 ms with many watchers.
#
# Appends one section to bench/RESULTS.md.
#
# Usage: bench/config.sh
# Env:   BENCH_DURATION (10s) BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/test)
#        BENCH_CONFIG_WATCHERS (1000) ETCD_BIN (etcd; apt-get install -y etcd-server if missing)
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EMBEDDED_PORT=18710
CLUSTER_PORT=18711
ETCD_CLIENT_PORT=23791
ETCD_PEER_PORT=23801
DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
WATCHERS="${BENCH_CONFIG_WATCHERS:-10000}"

bench_init
for port in "$EMBEDDED_PORT" "$CLUSTER_PORT" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"; do
    require_free_port "$port"
done
etcd_require
build_mortar
SECS="$(duration_seconds "$BENCH_DURATION")"

# drive <label> <args…>: one `mortar bench config` run; its summary lines into $OUT_<label>.
drive() {
    local label=$1
    shift
    log "mortar bench config $* (${label})"
    "$MORTAR_BIN" bench config "$@" >"$BENCH_TMP/$label.out" 2>&1 || die "$label failed: $(cat "$BENCH_TMP/$label.out")"
    cat "$BENCH_TMP/$label.out" >&2
}
rps() { sed -n 's/.*: \([0-9]*\) requests\/s.*/\1/p' "$BENCH_TMP/$1.out"; }
pct() { sed -n "s/.* $2 \([0-9.]*\).*/\1/p" "$BENCH_TMP/$1.out" | head -1; }
delivered() { sed -n 's/.*: \([0-9]* of [0-9]*\) deliveries.*/\1/p' "$BENCH_TMP/$1.out"; }

# ------------------------------------------------------------------ puts --
# Room for every watcher and the driver's own connections: at http.max_connections (10 000 by
# default) further clients wait unserved, which runs 3 and 4 counted as lost deliveries.
MORTAR_ENV=("MORTAR_HTTP__MAX_CONNECTIONS=$((WATCHERS + 1000))")
mortar_start "$EMBEDDED_PORT"
MORTAR_ENV=()
EMBEDDED_CMD=$MORTAR_CMD
EMBEDDED_PID=$MORTAR_PID
drive warm-embedded --url "http://127.0.0.1:$EMBEDDED_PORT" -c 32 -d 2
drive put-embedded --url "http://127.0.0.1:$EMBEDDED_PORT" -c 32 -d "$SECS"
EMBEDDED_RSS_KB="$(awk '/VmRSS/ { print $2 }' "/proc/$EMBEDDED_PID/status")"
drive watch-embedded --url "http://127.0.0.1:$EMBEDDED_PORT" --watch --watchers 1 --count 2000
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
BASE_RSS_KB="$(awk '/VmRSS/ { print $2 }' "/proc/$EMBEDDED_PID/status")"
( peak=0; while kill -0 "$EMBEDDED_PID" 2>/dev/null; do
    rss="$(awk '/VmRSS/ { print $2 }' "/proc/$EMBEDDED_PID/status" 2>/dev/null || echo 0)"
    ((rss > peak)) && peak=$rss && echo "$peak" >"$BENCH_TMP/peak-rss"
    sleep 0.1
  done ) &
SAMPLER=$!
drive watch-many --url "http://127.0.0.1:$EMBEDDED_PORT" --watch --watchers "$WATCHERS" --count 100 --interval-ms 50 --server-pid "$EMBEDDED_PID"
kill "$SAMPLER" 2>/dev/null || true
PEAK_RSS_KB="$(cat "$BENCH_TMP/peak-rss" 2>/dev/null || echo "$BASE_RSS_KB")"
PER_WATCHER_KB="$(awk -v p="$PEAK_RSS_KB" -v b="$BASE_RSS_KB" -v n="$WATCHERS" 'BEGIN { printf "%.1f", (p - b) / n }')"
IDLE_KB="$(sed -n 's/.*: \([0-9.]*\) KB per watcher.*/\1/p' "$BENCH_TMP/watch-many.out")"
stop_process "$EMBEDDED_PID"

PG_DB="mortar_bench_config_$$"
psql "$DATABASE_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
CLUSTER_URL="${DATABASE_URL%/*}/$PG_DB"
MORTAR_ENV=("MORTAR_DATABASE_URL=$CLUSTER_URL")
mortar_start "$CLUSTER_PORT" --resp-listen off
MORTAR_ENV=()
CLUSTER_CMD=$MORTAR_CMD
drive warm-pg --url "http://127.0.0.1:$CLUSTER_PORT" -c 32 -d 2
drive put-pg --url "http://127.0.0.1:$CLUSTER_PORT" -c 32 -d "$SECS"
stop_process "$MORTAR_PID"
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null || true

etcd_start "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"
drive warm-etcd --etcd "$ETCD_URL" -c 32 -d 2
drive put-etcd --etcd "$ETCD_URL" -c 32 -d "$SECS"
drive watch-etcd --etcd "$ETCD_URL" --watch --watchers 1 --count 2000
stop_process "$ETCD_PID"

E=$(rps put-embedded) P=$(rps put-pg) D=$(rps put-etcd)
verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo missed; fi; }
# all <label>: 1 when every expected delivery arrived (a run that delivered nothing is no pass).
all() { delivered "$1" | awk '{ print ($1 == $3 && $1 > 0) ? 1 : 0 }'; }
results_append <<EOF
## config puts and watch delivery: mortar vs etcd — $(date -u +%Y-%m-%dT%H:%M:%SZ)

- machine: $(machine_line)
- mortar: \`$MORTAR_VERSION\`, commit \`$MORTAR_COMMIT\`, release build; embedded: \`$EMBEDDED_CMD\`; cluster: \`$CLUSTER_CMD\` (a fresh PostgreSQL database)
- etcd: ${ETCD_VERSION:-unknown}, \`$ETCD_CMD\` (single member, default durability), driven through its v3 JSON gateway
- puts: \`mortar bench config -c 32 -d $SECS [--etcd URL]\` after a 2 s warm-up; each worker puts its own key back to back (mortar \`PUT /v1/config/bench/base/k<w>\` with the counter as the JSON body; etcd \`POST /v3/kv/put\`)
- watch: \`mortar bench config --watch --watchers N --count C\`: one writer, a put every 2 ms (every 50 ms, 100 puts, with many watchers) carrying its send time; watchers on SSE \`/v1/config/bench/base/watch?key=w\` or etcd \`POST /v3/watch\`; the driver (its watchers included) shares the 2 CPUs with the server

| what | mortar embedded | mortar PostgreSQL | etcd |
|---|---:|---:|---:|
| puts/s (c=32) | $E | $P | $D |
| put p50 / p99 ms | $(pct put-embedded p50) / $(pct put-embedded p99) | $(pct put-pg p50) / $(pct put-pg p99) | $(pct put-etcd p50) / $(pct put-etcd p99) |
| watch delivery p50 / p99 ms (1 watcher) | $(pct watch-embedded p50) / $(pct watch-embedded p99) ($(delivered watch-embedded)) | — | $(pct watch-etcd p50) / $(pct watch-etcd p99) ($(delivered watch-etcd)) |
| watch delivery p50 / p99 ms ($WATCHERS SSE watchers, one process) | $(pct watch-many p50) / $(pct watch-many p99) ($(delivered watch-many)) | — | — |

ratios: embedded/etcd puts $(ratio "$E" "$D")x, PostgreSQL/etcd puts $(ratio "$P" "$D")x; mortar RSS after the embedded puts: ${EMBEDDED_RSS_KB} KB; with $WATCHERS SSE watchers connected: peak ${PEAK_RSS_KB} KB, ${PER_WATCHER_KB} KB per watcher over the ${BASE_RSS_KB} KB before while changes flow; ${IDLE_KB} KB per watcher once all are connected and idle

targets: embedded ≥ 1.0× etcd puts — $(verdict "$E >= $D"); PostgreSQL ≥ 0.5× etcd — $(verdict "$P >= 0.5 * $D"); watch p99 ≤ etcd's — $(verdict "$(all watch-embedded) && $(all watch-etcd) && $(pct watch-embedded p99) <= $(pct watch-etcd p99)"); $WATCHERS watchers p99 ≤ 100 ms — $(verdict "$(all watch-many) && $(pct watch-many p99) <= 100"); memory per idle watcher ≤ 16 KB — $(verdict "${IDLE_KB:-999} <= 16")
EOF
