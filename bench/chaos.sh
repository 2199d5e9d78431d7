#!/usr/bin/env bash
# bench/chaos.sh — Mortar under kill -9 and dependency outages (issue 19): the figures that
# say whether acknowledged work survives and failures stay fast and clean.
#
#   jobs       enqueues (single and batched) while the server is killed -9 and restarted,
#              embedded (SQLite) and cluster (2 nodes, fresh PostgreSQL database):
#              acked, lost, 5xx, latency
#   ratelimit  checks while a private Redis is killed, then frozen, for a few seconds:
#              checks, degraded answers, 5xx, latency, recovered without a restart
#   locks      2 nodes (PostgreSQL backend, then lock.backend = redis), acquire/release while
#              nodes are killed -9: grants, fencing-token regressions, 5xx, latency; and a
#              waiter queued through a node that dies: how long the next waiter waits
#   pg         enqueues while a private PostgreSQL is stopped for a few seconds:
#              503s and their latency, recovery time, acked jobs lost
#
# The load drivers are in bench/chaos.py (Python 3, standard library). Prints one table per
# scenario, appends a dated section to bench/RESULTS.md and exits 1 when an acknowledged job
# was lost, a fencing token went backwards, a 5xx came where none is allowed (a 503 naming its
# dependency during an outage is allowed, a 500 never), a dead node's waiter held up the line,
# or a dependency outage did not heal without a restart (see chaos.py's docstring).
#
# Usage: bench/chaos.sh [--quick] [jobs] [ratelimit] [locks] [pg]
#        --quick: a few seconds per scenario (about 2–3 minutes in all); default: about a
#        minute per scenario. No scenario named: all of them.
# Env:   BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/test) — an existing PostgreSQL;
#        fresh databases `mortar_chaos_<scenario>_<random>` are created there and dropped.
#        BENCH_REDIS_HOST (127.0.0.1) BENCH_REDIS_PORT (6379) — an existing Redis, only for
#        lock.backend = redis: keys under a fresh `mortar-bench:<random>:` prefix, deleted on exit.
#        CHAOS_LOCK_BACKENDS (postgres,redis) — the lock backends to run.
#        The ratelimit and pg scenarios start their own redis-server / PostgreSQL (initdb from
#        /usr/lib/postgresql/*/bin, run as the postgres user when root) on free ports.
#        CARGO_TARGET_DIR (~/.cache/mortar-target) BENCH_KEEP_TMP=1 keeps the scratch dir (node
#        logs: node-*/mortar.log); it is always kept on failure. RESULTS_FILE as for every script.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHAOS_CMD="bench/chaos.sh${*:+ $*}"
DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
QUICK=0
for a in "$@"; do
    case $a in
        --quick) QUICK=1 ;;
        jobs | ratelimit | locks | pg) ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$a' (scenarios: jobs ratelimit locks pg; option: --quick)" ;;
    esac
done

bench_init python3 psql redis-server
redis_require
require_free_port 18710 # node A (every scenario)
require_free_port 18711 # node B (jobs cluster mode, locks)
psql "$DATABASE_URL" -qtAc 'SELECT 1' >/dev/null || die "no PostgreSQL at $DATABASE_URL"
build_mortar
# Restarts must run the same binary even if someone rebuilds it meanwhile.
cp "$MORTAR_BIN" "$BENCH_TMP/mortar"
redis_prefix_new

# Fallback cleanup, should chaos.py die without its own: the processes it started (only those
# still running from this scratch dir), its private PostgreSQL, its databases.
chaos_cleanup() {
    local pid line bin data db
    if [[ -f "$BENCH_TMP/chaos-pids" ]]; then
        while read -r pid; do
            [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || continue
            if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$BENCH_TMP"; then
                kill -CONT "$pid" 2>/dev/null || true
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$BENCH_TMP/chaos-pids"
    fi
    if [[ -f "$BENCH_TMP/chaos-pgdata" ]]; then
        while read -r bin data; do
            [[ -f "$data/postmaster.pid" ]] || continue
            if ((EUID == 0)); then
                su postgres -s /bin/sh -c "$bin/pg_ctl -D $data -m immediate -w stop" >/dev/null 2>&1 || true
            else
                "$bin/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
            fi
        done <"$BENCH_TMP/chaos-pgdata"
    fi
    if [[ -f "$BENCH_TMP/chaos-dbs" ]]; then
        while read -r db; do
            [[ "$db" =~ ^mortar_chaos_[a-z]+_[0-9a-f]+$ ]] || continue
            psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
        done <"$BENCH_TMP/chaos-dbs"
    fi
}
on_exit chaos_cleanup

REPORT="$BENCH_TMP/chaos-report.md"
rc=0
run_fg python3 "$BENCH_DIR/chaos.py" --mortar "$BENCH_TMP/mortar" --tmp "$BENCH_TMP" \
    --database-url "$DATABASE_URL" --redis-url "$(redis_url)" --redis-prefix "$REDIS_PREFIX" \
    --lock-backends "${CHAOS_LOCK_BACKENDS:-postgres,redis}" --report "$REPORT" "$@" || rc=$?
[[ -s "$REPORT" ]] || die "chaos.py ended (exit $rc) without a report"

MODE="default run (about a minute per scenario)"
((QUICK)) && MODE="**--quick run** (a few seconds per scenario: a smoke test, not the full figures)"
results_append <<EOF
## chaos: kill -9 and outages — $(date -u +%Y-%m-%dT%H:%M:%SZ)

- $MODE; command: \`$CHAOS_CMD\`
- machine: $(machine_line); load drivers (Python threads), servers, PostgreSQL and Redis share it
- mortar: \`$MORTAR_VERSION\`, commit \`$MORTAR_COMMIT\`, release build; PostgreSQL $(psql "$DATABASE_URL" -qtAc 'SHOW server_version'), $(redis-server --version | awk '{ print $1, $2, $3 }')

$(cat "$REPORT")
EOF
((rc == 0)) || log "chaos: FAILED (exit $rc); node logs are in $BENCH_TMP (kept)"
exit "$rc"
