#!/usr/bin/env bash
# bench/jobs.sh — job queue: end-to-end no-op jobs/s and enqueue → start latency, mortar
# (embedded and PostgreSQL) side by side with BullMQ on the same Redis, in one run:
#
#   a) throughput: BENCH_JOBS no-op jobs enqueued in batches of BENCH_JOBS_BATCH (two batch
#      requests in flight) while one worker with concurrency BENCH_JOBS_CONCURRENCY drains the
#      queue; jobs/s = jobs / (first enqueue → last completion).
#      mortar: `mortar bench jobs` (the Rust worker library: batched leases, batched
#      completions). BullMQ: bench/jobs-bullmq.mjs (Queue.addBulk + its Worker, no-op
#      processor, same concurrency).
#      Targets: embedded ≥ 20 000 jobs/s, PostgreSQL ≥ 10 000 jobs/s, mortar ≥ 1.5× BullMQ.
#   b) latency: one job enqueued every 1/BENCH_JOBS_RATE s for BENCH_DURATION; latency = the
#      handler's start − the enqueue's send time (same clock, same machine).
#      Target: p99 < 20 ms at 1 000 jobs/s.
#
# Appends one section to bench/RESULTS.md.
#
# Usage: bench/jobs.sh
# Env:   BENCH_JOBS (100000) BENCH_JOBS_BATCH (1000) BENCH_JOBS_CONCURRENCY (64)
#        BENCH_JOBS_RATE (1000) BENCH_DURATION (10s, the latency runs)
#        BENCH_JOBS_ROUNDS (3) — throughput rounds per system, interleaved, averaged
#        BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/test) — an existing PostgreSQL;
#        the script creates a fresh database `mortar_bench_jobs_<random>` there and drops it.
#        BENCH_REDIS_HOST (127.0.0.1) BENCH_REDIS_PORT (6379) — an existing Redis for BullMQ;
#        its keys go under a fresh `mortar-bench:<random>` prefix, deleted on exit.
#        BULLMQ_DIR (~/.cache/mortar-bench/bullmq) — where `npm install bullmq@6 ioredis` goes (the issue's peer: BullMQ 6)
#        (outside the repository; installed when missing).
#        CARGO_TARGET_DIR (~/.cache/mortar-target) BENCH_KEEP_TMP=1 keeps the scratch dir.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MORTAR_EMBEDDED_PORT=18705
MORTAR_PG_PORT=18706
DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
JOBS="${BENCH_JOBS:-100000}"
BATCH="${BENCH_JOBS_BATCH:-1000}"
CONC="${BENCH_JOBS_CONCURRENCY:-64}"
RATE="${BENCH_JOBS_RATE:-1000}"
ROUNDS="${BENCH_JOBS_ROUNDS:-3}"
BULLMQ_DIR="${BULLMQ_DIR:-$HOME/.cache/mortar-bench/bullmq}"

bench_init
redis_require
for tool in jq node npm psql; do
    command -v "$tool" >/dev/null || die "required tool not found: $tool"
done
for port in "$MORTAR_EMBEDDED_PORT" "$MORTAR_PG_PORT"; do
    require_free_port "$port"
done
psql "$DATABASE_URL" -qtAc 'SELECT 1' >/dev/null || die "no PostgreSQL at $DATABASE_URL"

# BullMQ lives outside the repository, installed once with npm's ordinary client.
# (Re)installed when missing or not major version 6. BullMQ 6 leaves its Redis client,
# ioredis, to the application.
if [[ "$(jq -r .version "$BULLMQ_DIR/node_modules/bullmq/package.json" 2>/dev/null)" != 6.* ||
    ! -f "$BULLMQ_DIR/node_modules/ioredis/package.json" ]]; then
    log "installing bullmq@6 into $BULLMQ_DIR"
    mkdir -p "$BULLMQ_DIR"
    [[ -f "$BULLMQ_DIR/package.json" ]] || echo '{"name":"mortar-bench-bullmq","private":true}' >"$BULLMQ_DIR/package.json"
    run_fg npm install --prefix "$BULLMQ_DIR" --no-audit --no-fund bullmq@6 ioredis >&2 || die "npm install bullmq failed"
fi
BULLMQ_VERSION="$(jq -r .version "$BULLMQ_DIR/node_modules/bullmq/package.json")"
# Node resolves `bullmq` next to the script, so the driver runs from BULLMQ_DIR.
BULLMQ_SCRIPT="$BULLMQ_DIR/jobs-bullmq.mjs"
cp "$BENCH_DIR/jobs-bullmq.mjs" "$BULLMQ_SCRIPT"

build_mortar
SECS="$(duration_seconds "$BENCH_DURATION")"
MORTAR_LINE="\`$MORTAR_VERSION\`, commit \`$MORTAR_COMMIT\`, release build"

# mortar_jobs_bench <label> <port> [args...]: one `mortar bench jobs --json` run; prints its JSON.
mortar_jobs_bench() {
    local label=$1 port=$2 out
    shift 2
    out="$BENCH_TMP/$label.json"
    log "$label: mortar bench jobs $* -c $CONC"
    run_fg "$MORTAR_BIN" bench jobs --url "http://127.0.0.1:$port" --json -c "$CONC" "$@" >"$out" ||
        die "$label: mortar bench jobs failed"
    cat "$out"
}

# bullmq_bench <label> <mode> <args...>: one BullMQ driver run; prints its JSON.
bullmq_bench() {
    local label=$1 out
    shift
    out="$BENCH_TMP/$label.json"
    log "$label: node jobs-bullmq.mjs $*"
    pushd "$BULLMQ_DIR" >/dev/null
    run_fg node "$BULLMQ_SCRIPT" "$@" >"$out" || die "$label: the BullMQ driver failed"
    popd >/dev/null
    cat "$out"
}

# field <json> <name>: a number from a driver's JSON, rounded for the table.
field() { jq -r ".$2 | if . >= 100 then floor else (. * 100 | round / 100) end" <<<"$1"; }

verdict() {
    if awk -v m="$1" -v p="$2" "BEGIN { exit !($3) }"; then echo met; else echo missed; fi
}

# miss <have> <want>: "by how much" for a minimum target.
miss() { awk -v h="$1" -v w="$2" 'BEGIN { printf "%.0f%%", (w - h) / w * 100 }'; }

# ------------------------------------------------------------------- servers --
# All three stay up for the whole run so the throughput rounds can interleave.
# Both mortar servers up at once: neither takes the default RESP port.
MORTAR_ENV=("MORTAR_CACHE__RESP_LISTEN=off")
mortar_start "$MORTAR_EMBEDDED_PORT"
EMBEDDED_CMD=$MORTAR_CMD
PG_DB="mortar_bench_jobs_$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
psql "$DATABASE_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null || die "cannot create database $PG_DB"
on_exit psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)"
PG_URL="${DATABASE_URL%/*}/$PG_DB"
MORTAR_ENV=("MORTAR_CACHE__RESP_LISTEN=off" "MORTAR_DATABASE_URL=$PG_URL")
mortar_start "$MORTAR_PG_PORT"
MORTAR_ENV=()
PG_CMD="${MORTAR_CMD//$PG_URL/postgres:\/\/…\/<fresh database>}"
PG_VERSION="$(psql "$DATABASE_URL" -qtAc 'SHOW server_version')"
BULL_PREFIX="mortar-bench:$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
on_exit redis_delete_prefix "$BULL_PREFIX:"
REDIS_VERSION="$(redis_cli info server | awk -F: '/^redis_version:/ { sub(/\r/, "", $2); print $2 }')"

# throughput <E|P|B> <label> <jobs>: one throughput run; prints its JSON.
throughput() {
    case $1 in
        E) mortar_jobs_bench "$2" "$MORTAR_EMBEDDED_PORT" -n "$3" --batch "$BATCH" ;;
        P) mortar_jobs_bench "$2" "$MORTAR_PG_PORT" -n "$3" --batch "$BATCH" ;;
        B) bullmq_bench "$2" throughput "$BENCH_REDIS_HOST" "$BENCH_REDIS_PORT" "$BULL_PREFIX" "$3" "$BATCH" "$CONC" ;;
    esac
}

for who in E P B; do
    throughput "$who" "$who-warmup" 20000 >/dev/null
done
# ROUNDS rounds in mirrored order (E P B, B P E, …); jobs/s is the mean over the rounds, so a
# slow moment of the machine does not decide a ratio.
declare -A T_SUM=() T_RUNS=() T_LAST=()
for ((k = 1; k <= ROUNDS; k++)); do
    order=(E P B)
    ((k % 2 == 0)) && order=(B P E)
    for who in "${order[@]}"; do
        j="$(throughput "$who" "$who-throughput-$k" "$JOBS")"
        r="$(field "$j" jobs_per_s)"
        T_SUM[$who]=$(awk -v a="${T_SUM[$who]:-0}" -v b="$r" 'BEGIN { print a + b }')
        T_RUNS[$who]="${T_RUNS[$who]:+${T_RUNS[$who]}, }$r"
        T_LAST[$who]=$j
    done
done
mean_rate() { awk -v s="${T_SUM[$1]}" -v n="$ROUNDS" 'BEGIN { printf "%.0f", s / n }'; }

E_L="$(mortar_jobs_bench E-latency "$MORTAR_EMBEDDED_PORT" --rate "$RATE" -d "$SECS")"
P_L="$(mortar_jobs_bench P-latency "$MORTAR_PG_PORT" --rate "$RATE" -d "$SECS")"
B_L="$(bullmq_bench B-latency latency "$BENCH_REDIS_HOST" "$BENCH_REDIS_PORT" "$BULL_PREFIX" "$RATE" "$SECS" "$CONC")"

# ------------------------------------------------------------------- results --
ET="$(mean_rate E)" PT="$(mean_rate P)" BT="$(mean_rate B)"
E_RATIO="$(ratio "$ET" "$BT")" P_RATIO="$(ratio "$PT" "$BT")"
E_V="$(verdict "$ET" 20000 'm >= p')" P_V="$(verdict "$PT" 10000 'm >= p')"
ER_V="$(verdict "$ET" "$BT" 'm >= 1.5 * p')" PR_V="$(verdict "$PT" "$BT" 'm >= 1.5 * p')"
E99="$(field "$E_L" p99_ms)" P99="$(field "$P_L" p99_ms)" B99="$(field "$B_L" p99_ms)"
EL_V="$(verdict "$E99" 20 'm < p')" PL_V="$(verdict "$P99" 20 'm < p')"
how() { # how <verdict> <have> <want> [max]: "met" or "missed by N%"
    if [[ $1 == met ]]; then echo met; elif [[ ${4:-} == max ]]; then
        echo "missed ($(awk -v h="$2" -v w="$3" 'BEGIN { printf "%.1f×", h / w }') the limit)"
    else echo "missed by $(miss "$2" "$3")"; fi
}
row() { # row <label> <json> [jobs/s]: the jobs/s column is [jobs/s] when given
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$(field "$2" jobs)" "$(field "$2" seconds)" \
        "${3:-$(field "$2" jobs_per_s)}" "$(field "$2" enqueue_per_s)" "$(field "$2" p50_ms)" "$(field "$2" p99_ms)" "$(field "$2" errors)"
}

results_append <<EOF
## jobs: mortar (embedded, PostgreSQL) vs BullMQ $BULLMQ_VERSION — $(date -u +%Y-%m-%dT%H:%M:%SZ)

- machine: $(machine_line); driver, server and database/Redis share it
- mortar: $MORTAR_LINE
- embedded: \`$EMBEDDED_CMD\` (SQLite, WAL)
- PostgreSQL: \`$PG_CMD\` (PostgreSQL $PG_VERSION, local, a fresh database)
- BullMQ: bullmq $BULLMQ_VERSION (npm, in \`$BULLMQ_DIR\`, outside the repo), node $(node --version), Redis $REDIS_VERSION at $BENCH_REDIS_HOST:$BENCH_REDIS_PORT (keys under a fresh \`mortar-bench:<random>\` prefix, obliterated afterwards); default job options (completed jobs kept, as mortar keeps them)
- throughput: \`mortar bench jobs -n $JOBS --batch $BATCH -c $CONC\` / \`node bench/jobs-bullmq.mjs throughput … $JOBS $BATCH $CONC\` — enqueue in batches of $BATCH (two requests in flight) while one worker at concurrency $CONC runs a no-op handler; jobs/s = jobs ÷ (first enqueue → last completion); after a 20 000-job warm-up run of each, $ROUNDS rounds in mirrored order (embedded, PostgreSQL, BullMQ, then the reverse, …), all three servers up throughout
- latency: \`mortar bench jobs --rate $RATE -d $SECS -c $CONC\` / \`node bench/jobs-bullmq.mjs latency … $RATE $SECS $CONC\` — one single-job enqueue every 1/$RATE s; latency = handler start − enqueue sent

| run | jobs | s | jobs/s end to end | enqueue jobs/s | p50 ms | p99 ms | errors |
|---|---:|---:|---:|---:|---:|---:|---:|
$(row "mortar embedded, throughput (mean of $ROUNDS)" "${T_LAST[E]}" "$ET")
$(row "mortar PostgreSQL, throughput (mean of $ROUNDS)" "${T_LAST[P]}" "$PT")
$(row "BullMQ, throughput (mean of $ROUNDS)" "${T_LAST[B]}" "$BT")
$(row "mortar embedded, latency @ $RATE/s" "$E_L")
$(row "mortar PostgreSQL, latency @ $RATE/s" "$P_L")
$(row "BullMQ, latency @ $RATE/s" "$B_L")

throughput rounds (jobs/s, in run order): embedded ${T_RUNS[E]}; PostgreSQL ${T_RUNS[P]}; BullMQ ${T_RUNS[B]} (the other throughput columns: the last round)

ratio jobs/s: embedded/BullMQ ${E_RATIO}x, PostgreSQL/BullMQ ${P_RATIO}x

targets:
- embedded ≥ 20 000 jobs/s — $(how "$E_V" "$ET" 20000) ($ET)
- PostgreSQL ≥ 10 000 jobs/s — $(how "$P_V" "$PT" 10000) ($PT)
- ≥ 1.5× BullMQ — embedded $(how "$ER_V" "$E_RATIO" 1.5) (${E_RATIO}x), PostgreSQL $(how "$PR_V" "$P_RATIO" 1.5) (${P_RATIO}x)
- enqueue → start p99 < 20 ms at $RATE jobs/s — embedded $(how "$EL_V" "$E99" 20 max) ($E99 ms), PostgreSQL $(how "$PL_V" "$P99" 20 max) ($P99 ms); BullMQ: $B99 ms
EOF

log "throughput jobs/s: embedded $ET, PostgreSQL $PT, BullMQ $BT (${E_RATIO}x, ${P_RATIO}x)"
log "latency p99 @ $RATE/s: embedded $E99 ms, PostgreSQL $P99 ms, BullMQ $B99 ms"
