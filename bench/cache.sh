#!/usr/bin/env bash
# bench/cache.sh — mortar's RESP cache vs Redis with redis-benchmark, same settings, one run:
# GET and SET without pipelining and with -P 16. Appends the ratios to bench/RESULTS.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REQUESTS="${BENCH_CACHE_REQUESTS:-300000}"
PIPELINED_REQUESTS="${BENCH_CACHE_PIPELINED_REQUESTS:-1000000}"
CLIENTS="${BENCH_CACHE_CLIENTS:-50}"
MORTAR_RESP_PORT=18780
REDIS_PORT="${BENCH_REDIS_PORT:-6379}"

bench_init
build_mortar
MORTAR_ENV=("MORTAR_CACHE__RESP_LISTEN=127.0.0.1:$MORTAR_RESP_PORT")
mortar_start 18705
wait_for_port "$MORTAR_RESP_PORT" "$MORTAR_PID"

# rps <port> <test> <pipeline> <requests>: requests/s from redis-benchmark's CSV.
rps() {
    redis-benchmark -p "$1" -t "$2" -n "$4" -c "$CLIENTS" -P "$3" --csv 2>/dev/null \
        | awk -F'","' 'NR == 2 { print $2 }'
}

rows=""
for p in 1 16; do
    n=$([[ $p == 1 ]] && echo "$REQUESTS" || echo "$PIPELINED_REQUESTS")
    for t in set get; do
        m=$(rps "$MORTAR_RESP_PORT" "$t" "$p" "$n")
        r=$(rps "$REDIS_PORT" "$t" "$p" "$n")
        log "$t -P $p: mortar $m req/s, redis $r req/s"
        rows+="| ${t^^} | $p | $m | $r | $(ratio "$m" "$r")× |"$'\n'
    done
done
redis-cli -p "$REDIS_PORT" del key:__rand_int__ >/dev/null || true

results_append <<EOT

## cache: mortar RESP vs Redis $(redis-server --version | awk '{print $3}') — $(date -u +%Y-%m-%dT%H:%M:%SZ)

machine: $(machine_line)

commands: \`redis-benchmark -p PORT -t get,set -n $REQUESTS -c $CLIENTS -P 1 --csv\` and the same with
\`-n $PIPELINED_REQUESTS -P 16\`, against mortar (embedded, \`MORTAR_CACHE__RESP_LISTEN=127.0.0.1:$MORTAR_RESP_PORT\`,
default 2 event loops) and the machine's Redis on $REDIS_PORT, one after the other.

| command | pipeline | mortar req/s | redis req/s | mortar/redis |
|---|---:|---:|---:|---:|
$rows
target: ≥ 1.0× Redis for GET and SET.
EOT
