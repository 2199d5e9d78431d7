#!/usr/bin/env bash
# bench/lock.sh — distributed lock: acquire + release pairs per second and contended
# hand-off latency, three comparisons in one run, all driven by `mortar bench lock` (the same
# Rust async client stack for mortar and its peers, same number of workers, same duration):
#
#   a) cluster mode on Redis: `mortar serve` with PostgreSQL + Redis and lock.backend = redis
#      vs raw Redis (SET key id NX PX 10000 + a compare-and-delete EVAL per pair).
#      Target: mortar ≥ 0.5× raw Redis pairs/s.
#   b) embedded mode (no env: memory + SQLite fencing counters) vs etcd's v3 lock API through
#      its JSON gateway (lease grant, lock, unlock, lease revoke per pair) on a private etcd.
#      Target: mortar ≥ 5× etcd pairs/s.
#   c) contended hand-off, embedded mode: every worker queues on one lock; release → next
#      grant latency. Target: p99 < 5 ms.
#
# Appends one section per comparison to bench/RESULTS.md.
#
# Usage: bench/lock.sh
# Env:   BENCH_LOCK_CONCURRENCY (32, `-c`) BENCH_DURATION (10s, `-d`) BENCH_WARMUP (2s)
#        CARGO_TARGET_DIR (~/.cache/mortar-target)
#        BENCH_REDIS_HOST (127.0.0.1) BENCH_REDIS_PORT (6379) — an existing Redis; mortar's
#        keys go under a fresh `mortar-bench:<random>:` prefix, the raw driver's keys are
#        `bench-<worker>-<driver pid>`; both are deleted on exit.
#        BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/test) — an existing
#        PostgreSQL for cluster mode (mortar runs its migrations there).
#        ETCD_BIN (etcd; installed with `apt-get install -y etcd-server` when missing)
#        BENCH_KEEP_TMP=1 keeps the scratch dir (logs, raw driver output, etcd data).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MORTAR_CLUSTER_PORT=18703
MORTAR_EMBEDDED_PORT=18704
ETCD_CLIENT_PORT=23790
ETCD_PEER_PORT=23800
DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

bench_init
redis_require
command -v jq >/dev/null || die "required tool not found: jq"
for port in "$MORTAR_CLUSTER_PORT" "$MORTAR_EMBEDDED_PORT" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"; do
    require_free_port "$port" # fail before the (slow) build, not after
done
etcd_require
build_mortar

SECS="$(duration_seconds "$BENCH_DURATION")"
WARM="$(duration_seconds "$BENCH_WARMUP")"
MORTAR_LINE="\`$MORTAR_VERSION\`, commit \`$MORTAR_COMMIT\`, release build"
LOAD_LINE="each driver run: ${BENCH_LOCK_CONCURRENCY} workers for ${SECS} s after a ${WARM} s warm-up run with the same arguments (not recorded); every worker has its own connection (HTTP keep-alive, or its own multiplexed Redis connection) and runs one pair at a time"

# status_mode <port>: `mode` from /v1/status (embedded or cluster).
status_mode() {
    curl -sf "http://127.0.0.1:$1/v1/status" | jq -r .mode
}

# lock_probe <port> <name>: one acquire + release over HTTP, like a bench worker; prints the
# fencing token.
lock_probe() {
    local port=$1 name=$2 out lease status
    out="$(curl -sS --fail-with-body -X POST -H 'Content-Type: application/json' \
        -d '{"ttl_ms":10000,"owner":"bench-probe","wait_ms":0}' \
        "http://127.0.0.1:$port/v1/locks/$name/acquire")" ||
        die "acquire $name on 127.0.0.1:$port failed: $out"
    lease="$(jq -r .lease_id <<<"$out")"
    status="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        -d "{\"lease_id\":\"$lease\"}" "http://127.0.0.1:$port/v1/locks/$name/release")"
    [[ "$status" == 204 ]] || die "release $name on 127.0.0.1:$port answered $status, want 204"
    jq -r .fencing_token <<<"$out"
}

# verdict <expression>: "met" when the awk expression (with m, p set) holds.
verdict() {
    if awk -v m="$1" -v p="$2" "BEGIN { exit !($3) }"; then echo met; else echo missed; fi
}

# errors_line <text>: a results paragraph when something went wrong.
errors_line() {
    [[ -z "$1" ]] || printf '\n\nerrors — %s' "$1"
}

# grants_check <port> <before> <label> <pairs>: mortar granted at least one lock per pair
# counted by the driver (mortar_lock_grants_total); sets GRANTS and appends to CHECK_ERR.
grants_check() {
    GRANTS=$(($(mortar_metric_sum "$1" mortar_lock_grants_total) - $2))
    if ((GRANTS < $4)); then
        log "$3: WARNING: mortar_lock_grants_total +$GRANTS < $4 pairs"
        CHECK_ERR+="${CHECK_ERR:+; }$3: mortar_lock_grants_total +$GRANTS < $4 pairs"
    fi
}

# --------------------------------------- a) cluster mode on Redis vs raw Redis --

CHECK_ERR=""
redis_prefix_new # sets REDIS_PREFIX; its keys are deleted on exit
MORTAR_ENV=("MORTAR_DATABASE_URL=$DATABASE_URL" "MORTAR_REDIS_URL=$(redis_url)"
    "MORTAR_REDIS_PREFIX=$REDIS_PREFIX" "MORTAR_LOCK__BACKEND=redis")
mortar_start "$MORTAR_CLUSTER_PORT"
MORTAR_ENV=()
CLUSTER_CMD=$MORTAR_CMD
[[ "$(status_mode "$MORTAR_CLUSTER_PORT")" == cluster ]] || die "mortar on $MORTAR_CLUSTER_PORT is not in cluster mode"
# The lock must live in Redis: after one pair its fencing counter is there, under our prefix.
PROBE="bench-probe-$$"
TOKEN="$(lock_probe "$MORTAR_CLUSTER_PORT" "$PROBE")"
[[ "$(redis_cli exists "${REDIS_PREFIX}lock:{$PROBE}:fence")" == 1 ]] ||
    die "no ${REDIS_PREFIX}lock:{$PROBE}:fence in Redis after a pair: is lock.backend = redis?"
log "cluster probe: acquire + release $PROBE -> fencing token $TOKEN, counter in Redis"

lock_bench_warmup mortar-redis --url "http://127.0.0.1:$MORTAR_CLUSTER_PORT"
GRANTS_BEFORE="$(mortar_metric_sum "$MORTAR_CLUSTER_PORT" mortar_lock_grants_total)"
EVALSHA_BEFORE="$(redis_cmdstat evalsha)"
lock_bench_measure mortar-redis --url "http://127.0.0.1:$MORTAR_CLUSTER_PORT"
EVALSHA_AFTER="$(redis_cmdstat evalsha)"
C_RATE=$LB_RATE C_PAIRS=$LB_PAIRS C_ERR=$LB_ERRORS C_P50=$LB_P50 C_P99=$LB_P99 C_MAX=$LB_MAX
C_CMD="$(lock_bench_cmd "$SECS" --url "http://127.0.0.1:PORT")"
grants_check "$MORTAR_CLUSTER_PORT" "$GRANTS_BEFORE" mortar-redis "$C_PAIRS"
# Redis calls per pair and Redis's own time per call (INFO commandstats is server-wide).
read -r CALLS_B USEC_B <<<"$EVALSHA_BEFORE"
read -r CALLS_A USEC_A <<<"$EVALSHA_AFTER"
C_CALLS_PER_PAIR="$(ratio $((CALLS_A - CALLS_B)) "$C_PAIRS")"
C_USEC="$(redis_usec_per_call "$EVALSHA_BEFORE" "$EVALSHA_AFTER")"
stop_process "$MORTAR_PID"

lock_bench_warmup redis --target "$(redis_url)"
SET_BEFORE="$(redis_cmdstat set)"
EVALSHA_BEFORE="$(redis_cmdstat evalsha)"
lock_bench_measure redis --target "$(redis_url)"
SET_AFTER="$(redis_cmdstat set)"
EVALSHA_AFTER="$(redis_cmdstat evalsha)"
R_RATE=$LB_RATE R_PAIRS=$LB_PAIRS R_ERR=$LB_ERRORS R_P50=$LB_P50 R_P99=$LB_P99 R_MAX=$LB_MAX R_CMD=$LB_CMD
R_SET_USEC="$(redis_usec_per_call "$SET_BEFORE" "$SET_AFTER")"
R_EVAL_USEC="$(redis_usec_per_call "$EVALSHA_BEFORE" "$EVALSHA_AFTER")"
# Every pair deletes its own key; nothing of the driver's may stay behind.
R_LEFT="$(redis_lock_bench_keys "$LB_PID" | wc -l)"
((R_LEFT == 0)) || CHECK_ERR+="${CHECK_ERR:+; }raw Redis: $R_LEFT bench-*-<pid> key(s) left after the run (deleted)"
redis_delete_lock_bench_keys "$LB_PID"

A_RATIO="$(ratio "$C_RATE" "$R_RATE")"
A_P99_RATIO="$(ratio "$C_P99" "$R_P99")"
A_VERDICT="$(verdict "$C_RATE" "$R_RATE" 'm >= 0.5 * p')"
A_ERR=""
((C_ERR == 0 && R_ERR == 0)) || A_ERR="driver errors: mortar $C_ERR, raw Redis $R_ERR"
[[ -z "$CHECK_ERR" ]] || A_ERR+="${A_ERR:+; }$CHECK_ERR"

results_append <<EOF
## lock acquire+release, cluster mode on Redis: mortar vs raw Redis — $(date -u +%Y-%m-%dT%H:%M:%SZ)

- machine: $(machine_line)
- redis: $(redis_cli info server | awk -F: '/^redis_version:/ { sub(/\r/, "", $2); print "redis " $2 }') at $BENCH_REDIS_HOST:$BENCH_REDIS_PORT (shared, already running; mortar's keys under a fresh \`mortar-bench:<random>:\` prefix, deleted afterwards; the raw driver's \`bench-<worker>-<pid>\` keys are deleted by each pair — $R_LEFT left after the run)
- mortar: $MORTAR_LINE
- mortar: \`$CLUSTER_CMD\` (PostgreSQL shared, used for migrations only: the locks live in Redis)
- load: $LOAD_LINE; mortar first, then raw Redis
- mortar: \`$C_CMD\` — per pair \`POST /v1/locks/bench-<worker>-<pid>/acquire\` \`{"ttl_ms":10000,"owner":"bench","wait_ms":0}\` + \`POST …/release\` \`{"lease_id":…}\`
- peer: \`$R_CMD\` — per pair \`SET bench-<worker>-<pid> <id> NX PX 10000\` + \`EVALSHA\` of \`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end\`

| client → server | pairs/s | p50 ms | p99 ms | max ms | pairs | errors |
|---|---:|---:|---:|---:|---:|---:|
| driver → redis (SET NX PX + compare-and-delete) | $R_RATE | $R_P50 | $R_P99 | $R_MAX | $R_PAIRS | $R_ERR |
| driver → mortar → redis (lock.backend = redis) | $C_RATE | $C_P50 | $C_P99 | $C_MAX | $C_PAIRS | $C_ERR |

ratio (mortar/raw Redis) pairs/s: ${A_RATIO}x, p99: ${A_P99_RATIO}x

Redis (INFO commandstats around the measured runs; server-wide, so other clients of the shared Redis count too): mortar made ${C_CALLS_PER_PAIR} script calls (EVALSHA) per pair at ${C_USEC} µs each; raw Redis: SET ${R_SET_USEC} µs, compare-and-delete EVALSHA ${R_EVAL_USEC} µs

target: ≥ 0.5× raw Redis pairs/s — $A_VERDICT$(errors_line "$A_ERR")
EOF

# ------------------------------------------------ b) embedded mode vs etcd --

CHECK_ERR=""
mortar_start "$MORTAR_EMBEDDED_PORT"
EMBEDDED_CMD=$MORTAR_CMD
[[ "$(status_mode "$MORTAR_EMBEDDED_PORT")" == embedded ]] || die "mortar on $MORTAR_EMBEDDED_PORT is not in embedded mode"
TOKEN="$(lock_probe "$MORTAR_EMBEDDED_PORT" "$PROBE")"
log "embedded probe: acquire + release $PROBE -> fencing token $TOKEN"

lock_bench_warmup mortar-embedded --url "http://127.0.0.1:$MORTAR_EMBEDDED_PORT"
GRANTS_BEFORE="$(mortar_metric_sum "$MORTAR_EMBEDDED_PORT" mortar_lock_grants_total)"
lock_bench_measure mortar-embedded --url "http://127.0.0.1:$MORTAR_EMBEDDED_PORT"
E_RATE=$LB_RATE E_PAIRS=$LB_PAIRS E_ERR=$LB_ERRORS E_P50=$LB_P50 E_P99=$LB_P99 E_MAX=$LB_MAX
E_CMD="$(lock_bench_cmd "$SECS" --url "http://127.0.0.1:PORT")"
grants_check "$MORTAR_EMBEDDED_PORT" "$GRANTS_BEFORE" mortar-embedded "$E_PAIRS"

etcd_start "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"
# The driver does not look at the gateway's answers, so check the four calls once by hand.
ETCD_PROBE="$(curl -sf -X POST "$ETCD_URL/v3/lease/grant" -d '{"TTL":10}' | jq -r '.ID // empty')"
[[ -n "$ETCD_PROBE" ]] || die "etcd: POST /v3/lease/grant gave no lease ID (gateway prefix?)"
ETCD_KEY="$(curl -sf -X POST "$ETCD_URL/v3/lock/lock" \
    -d "{\"name\":\"$(printf '%s' "$PROBE" | base64)\",\"lease\":\"$ETCD_PROBE\"}" | jq -r '.key // empty')"
[[ -n "$ETCD_KEY" ]] || die "etcd: POST /v3/lock/lock gave no key"
curl -sf -X POST "$ETCD_URL/v3/lock/unlock" -d "{\"key\":\"$ETCD_KEY\"}" >/dev/null || die "etcd: unlock failed"
curl -sf -X POST "$ETCD_URL/v3/lease/revoke" -d "{\"ID\":\"$ETCD_PROBE\"}" >/dev/null || die "etcd: revoke failed"
log "etcd probe: lease $ETCD_PROBE, lock key $(base64 -d <<<"$ETCD_KEY"), unlocked, revoked"

lock_bench_warmup etcd --target "$ETCD_URL"
REV_BEFORE="$(etcd_revision "$ETCD_URL")"
lock_bench_measure etcd --target "$ETCD_URL"
REV_AFTER="$(etcd_revision "$ETCD_URL")"
D_RATE=$LB_RATE D_PAIRS=$LB_PAIRS D_ERR=$LB_ERRORS D_P50=$LB_P50 D_P99=$LB_P99 D_MAX=$LB_MAX D_CMD=$LB_CMD
# Each pair is two writes (the lock key's put, unlock's delete): anything less means the
# gateway answered errors the driver did not see.
D_REVS=$((REV_AFTER - REV_BEFORE))
D_LEFT="$(etcd_key_count "$ETCD_URL")"
if ((D_REVS < 2 * D_PAIRS)); then
    CHECK_ERR+="${CHECK_ERR:+; }etcd: revision +$D_REVS < 2 × $D_PAIRS pairs"
fi
((D_LEFT == 0)) || CHECK_ERR+="${CHECK_ERR:+; }etcd: $D_LEFT key(s) left after the run"
ETCD_FS="$(df -T "$BENCH_TMP" | awk 'NR == 2 { print $2 }')"
stop_process "$ETCD_PID"

B_RATIO="$(ratio "$E_RATE" "$D_RATE")"
B_P99_RATIO="$(ratio "$E_P99" "$D_P99")"
B_VERDICT="$(verdict "$E_RATE" "$D_RATE" 'm >= 5 * p')"
B_ERR=""
((E_ERR == 0 && D_ERR == 0)) || B_ERR="driver errors: mortar $E_ERR, etcd $D_ERR"
[[ -z "$CHECK_ERR" ]] || B_ERR+="${B_ERR:+; }$CHECK_ERR"

results_append <<EOF
## lock acquire+release, embedded mode: mortar vs etcd — $(date -u +%Y-%m-%dT%H:%M:%SZ)

- machine: $(machine_line)
- mortar: $MORTAR_LINE
- mortar: \`$EMBEDDED_CMD\` (no env: locks in memory, fencing counters in SQLite in the data dir)
- etcd: \`$ETCD_CMD\` (etcd $ETCD_VERSION, Debian etcd-server; private single node, data dir on $ETCD_FS like mortar's; defaults otherwise, i.e. an fsync per write)
- load: $LOAD_LINE; mortar first, then etcd
- mortar: \`$E_CMD\` — the same pair as above
- peer: \`$D_CMD\` — per pair, over etcd's v3 JSON gateway: \`/v3/lease/grant\` \`{"TTL":10}\`, \`/v3/lock/lock\` \`{"name":base64(bench-<worker>-<pid>),"lease":ID}\`, \`/v3/lock/unlock\` \`{"key":…}\`, \`/v3/lease/revoke\`; etcd's revision grew by $D_REVS during the measured run, $(ratio "$D_REVS" "$D_PAIRS") per pair (2 expected: the lock key's put, unlock's delete — the check that the gateway really granted what the driver counted, since the driver does not read its answers); $D_LEFT keys left

| client → server | pairs/s | p50 ms | p99 ms | max ms | pairs | errors |
|---|---:|---:|---:|---:|---:|---:|
| driver → etcd (lease + lock + unlock + revoke) | $D_RATE | $D_P50 | $D_P99 | $D_MAX | $D_PAIRS | $D_ERR |
| driver → mortar (embedded) | $E_RATE | $E_P50 | $E_P99 | $E_MAX | $E_PAIRS | $E_ERR |

ratio (mortar/etcd) pairs/s: ${B_RATIO}x, p99: ${B_P99_RATIO}x

target: ≥ 5× etcd pairs/s — $B_VERDICT$(errors_line "$B_ERR")
EOF

# ----------------------------------------- c) contended hand-off, embedded --

CHECK_ERR=""
lock_bench_warmup contended --url "http://127.0.0.1:$MORTAR_EMBEDDED_PORT" --contended
GRANTS_BEFORE="$(mortar_metric_sum "$MORTAR_EMBEDDED_PORT" mortar_lock_grants_total)"
lock_bench_measure contended --url "http://127.0.0.1:$MORTAR_EMBEDDED_PORT" --contended
H_RATE=$LB_RATE H_PAIRS=$LB_PAIRS H_ERR=$LB_ERRORS H_P50=$LB_P50 H_P90=$LB_P90 H_P99=$LB_P99 H_MAX=$LB_MAX
H_CMD="$(lock_bench_cmd "$SECS" --url "http://127.0.0.1:PORT" --contended)"
grants_check "$MORTAR_EMBEDDED_PORT" "$GRANTS_BEFORE" contended "$H_PAIRS"
stop_process "$MORTAR_PID"

C_VERDICT="$(verdict "$H_P99" 5 'm < p')"
C_ERR_LINE=""
((H_ERR == 0)) || C_ERR_LINE="driver errors: $H_ERR"
[[ -z "$CHECK_ERR" ]] || C_ERR_LINE+="${C_ERR_LINE:+; }$CHECK_ERR"

results_append <<EOF
## lock contended hand-off, embedded mode — $(date -u +%Y-%m-%dT%H:%M:%SZ)

- machine: $(machine_line)
- mortar: $MORTAR_LINE
- mortar: \`$EMBEDDED_CMD\` (the same server as the embedded comparison above)
- load: \`$H_CMD\` ($LOAD_LINE) — all workers on one lock \`bench-contended\`, each acquire waits in line (\`wait_ms\` 30000, FIFO long-poll); latency = holder's release sent → next holder's grant received (includes the release round trip)

| hand-offs/s | p50 ms | p90 ms | p99 ms | max ms | hand-offs | errors |
|---:|---:|---:|---:|---:|---:|---:|
| $H_RATE | $H_P50 | $H_P90 | $H_P99 | $H_MAX | $H_PAIRS | $H_ERR |

target: hand-off p99 < 5 ms — $C_VERDICT$(errors_line "$C_ERR_LINE")
EOF

log "a) cluster/Redis: raw Redis $R_RATE pairs/s (p99 $R_P99 ms), mortar $C_RATE pairs/s (p99 $C_P99 ms): ${A_RATIO}x — target ≥ 0.5x $A_VERDICT"
log "b) embedded/etcd: etcd $D_RATE pairs/s (p99 $D_P99 ms), mortar $E_RATE pairs/s (p99 $E_P99 ms): ${B_RATIO}x — target ≥ 5x $B_VERDICT"
log "c) contended: $H_RATE hand-offs/s, p50 $H_P50 ms, p99 $H_P99 ms — target p99 < 5 ms $C_VERDICT"
[[ -z "$A_ERR$B_ERR$C_ERR_LINE" ]] || log "errors: ${A_ERR:+a) $A_ERR }${B_ERR:+b) $B_ERR }${C_ERR_LINE:+c) $C_ERR_LINE}"
