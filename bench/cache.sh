#!/usr/bin/env bash
# bench/cache.sh — mortar's RESP cache vs Redis with redis-benchmark, same settings, one run:
# GET and SET without pipelining and with -P 16, and a server-bound row (EXISTS of 20 random
# keys, -P 16) that shows how the RESP event loops scale with cores. Appends to bench/RESULTS.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REQUESTS="${BENCH_CACHE_REQUESTS:-300000}"
PIPELINED_REQUESTS="${BENCH_CACHE_PIPELINED_REQUESTS:-1000000}"
CLIENTS="${BENCH_CACHE_CLIENTS:-50}"
ROUNDS="${BENCH_CACHE_ROUNDS:-6}"
# Keys of the server-bound row: EXISTS key:<random> × EXISTS_KEYS, over a keyspace of KEYSPACE.
EXISTS_KEYS="${BENCH_CACHE_EXISTS_KEYS:-20}"
KEYSPACE="${BENCH_CACHE_KEYSPACE:-100000}"
REDIS_PORT="${BENCH_REDIS_PORT:-6379}"

bench_init
build_mortar
# Three mortar servers side by side: one RESP event loop (Redis's own shape: it leaves the
# benchmark client the other core on a 2-core machine; the default is one loop per CPU but one,
# so one on 2 cores), the same with busy-polling off (`cache.resp_busy_poll_us = 0`: what the
# default's polling buys and costs), and one loop per CPU.
CPUS=$(nproc)
LOOPS_DEFAULT=$((CPUS > 1 ? CPUS - 1 : 1))
# name, RESP port, HTTP port, environment.
SERVERS=(
    "one 18781 18705 MORTAR_CACHE__RESP_THREADS=1"
    "nopoll 18782 18706 MORTAR_CACHE__RESP_THREADS=1 MORTAR_CACHE__RESP_BUSY_POLL_US=0"
    "all 18783 18707 MORTAR_CACHE__RESP_THREADS=$CPUS"
)
declare -A PORT=() PID=() CMD=()
for spec in "${SERVERS[@]}"; do
    read -r who port http env <<<"$spec"
    read -r -a MORTAR_ENV <<<"MORTAR_CACHE__RESP_LISTEN=127.0.0.1:$port $env"
    mortar_start "$http"
    wait_for_port "$port" "$MORTAR_PID"
    PORT[$who]=$port PID[$who]=$MORTAR_PID CMD[$who]=$MORTAR_CMD
done
PORT[redis]=$REDIS_PORT
PID[redis]=$(redis-cli -p "$REDIS_PORT" info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
WHO=(one nopoll all redis)
EXISTS_ARGS=()
for ((i = 0; i < EXISTS_KEYS; i++)); do EXISTS_ARGS+=("mortar-bench:key:__rand_int__"); done

# rps <port> <pid> <test> <pipeline> <requests>: "requests/s cpu-us/request" — requests/s
# from redis-benchmark's CSV, and the server's CPU per request over the run (/proc/<pid>/stat).
# <test> is get, set or exists (the server-bound EXISTS of EXISTS_KEYS random keys).
rps() {
    local before after r what=(-t "$3")
    [[ $3 == exists ]] && what=(-r "$KEYSPACE" EXISTS "${EXISTS_ARGS[@]}")
    before=$(cpu_ticks "$2")
    r=$(redis-benchmark -p "$1" -n "$5" -c "$CLIENTS" -P "$4" --csv "${what[@]}" 2>/dev/null \
        | awk -F'","' 'NR == 2 { print $2 }')
    after=$(cpu_ticks "$2")
    echo "$r $(us_per $((after - before)) "$5")"
}

mean() { awk -v s="$1" -v n="$ROUNDS" 'BEGIN { printf "%.2f", s / n }'; }

# spread <ratio...>: "mean ± h" of one server's per-round ratios to Redis (each round's two
# runs are seconds apart, so the host's drift mostly cancels), h = the 95% confidence half-width
# (t distribution, 1.96 for many rounds).
spread() {
    printf '%s\n' "$@" | awk '{ s += $1; q += $1 * $1; n++ }
        END {
            m = s / n; v = n > 1 ? (q - n * m * m) / (n - 1) : 0; if (v < 0) v = 0
            split("12.71 4.30 3.18 2.78 2.57 2.45 2.36 2.31 2.26 2.23 2.20 2.18 2.16 2.14 2.13", t, " ")
            printf "%.3f ± %.3f", m, (n - 1 <= 15 ? t[n - 1] : 1.96) * sqrt(v / n)
        }'
}

# The EXISTS row finds half its keys: fill half the keyspace on every server first.
for who in "${WHO[@]}"; do
    port=${PORT[$who]}
    redis-benchmark -p "$port" -n "$KEYSPACE" -r $((KEYSPACE / 2)) -c "$CLIENTS" -P 16 -q \
        SET mortar-bench:key:__rand_int__ v >/dev/null 2>&1
done

rows=""
one_loop_met=1
for case in "set 1" "get 1" "set 16" "get 16" "exists 16"; do
    read -r t p <<<"$case"
    n=$([[ $p == 1 ]] && echo "$REQUESTS" || echo "$PIPELINED_REQUESTS")
    [[ $t == exists ]] && n=$REQUESTS
    # Each server ROUNDS times, in mirrored order (A B C D, D C B A, …), averaged: drift
    # during the run (CPU frequency, other tenants) then favours nobody, and one noisy run
    # counts for 1/ROUNDS.
    declare -A sum_rps=() sum_cpu=() last=() ratios=()
    for ((k = 0; k < ROUNDS; k++)); do
        order=("${WHO[@]}")
        ((k % 2)) && order=(redis all nopoll one)
        for who in "${order[@]}"; do
            read -r x c < <(rps "${PORT[$who]}" "${PID[$who]}" "$t" "$p" "$n")
            last[$who]=$x
            sum_rps[$who]=$(awk -v a="${sum_rps[$who]:-0}" -v b="$x" 'BEGIN { print a + b }')
            sum_cpu[$who]=$(awk -v a="${sum_cpu[$who]:-0}" -v b="$c" 'BEGIN { print a + b }')
        done
        for who in one nopoll all; do
            ratios[$who]+="$(ratio "${last[$who]}" "${last[redis]}" 4) "
        done
    done
    declare -A m=() mc=()
    for who in "${WHO[@]}"; do
        m[$who]=$(mean "${sum_rps[$who]}") mc[$who]=$(mean "${sum_cpu[$who]}")
    done
    name=${t^^}
    [[ $t == exists ]] && name="EXISTS of $EXISTS_KEYS random keys"
    log "$name -P $p: mortar 1 loop ${m[one]} req/s (${mc[one]} µs), without busy-polling ${m[nopoll]} (${mc[nopoll]} µs), $CPUS loops ${m[all]} (${mc[all]} µs), redis ${m[redis]} (${mc[redis]} µs)"
    row="| $name | $p |"
    for who in one nopoll all; do
        # shellcheck disable=SC2086 # the ratios are one word each
        row+=" ${m[$who]} | $(ratio "${m[$who]}" "${m[redis]}")× | $(spread ${ratios[$who]}) |"
    done
    rows+="$row $(ratio "${m[all]}" "${m[one]}")× | ${m[redis]} | ${mc[one]} | ${mc[nopoll]} | ${mc[all]} | ${mc[redis]} |"$'\n'
    [[ $t != exists ]] && awk -v a="${m[one]}" -v b="${m[redis]}" 'BEGIN { exit !(a < b) }' && one_loop_met=0
    unset sum_rps sum_cpu last ratios m mc
done
redis-cli -p "$REDIS_PORT" --scan --pattern 'mortar-bench:key:*' | xargs -r -n 1000 redis-cli -p "$REDIS_PORT" unlink >/dev/null || true
redis-cli -p "$REDIS_PORT" del key:__rand_int__ >/dev/null || true
verdict=$([[ $one_loop_met == 1 ]] && echo "met on every row" || echo "missed on at least one row")

results_append <<EOT

## cache: mortar RESP vs Redis $(redis-server --version | awk '{print $3}') — $(date -u +%Y-%m-%dT%H:%M:%SZ)

machine: $(machine_line)

commands: \`redis-benchmark -p PORT -t get,set -n $REQUESTS -c $CLIENTS -P 1 --csv\`, the same with
\`-n $PIPELINED_REQUESTS -P 16\`, and \`redis-benchmark -p PORT -n $REQUESTS -c $CLIENTS -P 16 -r $KEYSPACE EXISTS mortar-bench:key:__rand_int__ …\`
($EXISTS_KEYS random keys per command, about half of them present): each server $ROUNDS times in
mirrored order (A B C D, D C B A, …) and averaged, against three mortar servers (embedded) — one RESP
event loop (\`${CMD[one]}\`; the default on this machine, one per CPU but one, is $LOOPS_DEFAULT),
the same without busy-polling (\`${CMD[nopoll]}\`) and one loop per CPU
(\`${CMD[all]}\`) — and the machine's Redis on $REDIS_PORT, one after the other.

| command | pipeline | mortar 1 loop req/s | /redis | per round, 95% CI | 1 loop, no busy-poll req/s | /redis | per round, 95% CI | mortar $CPUS loops req/s | /redis | per round, 95% CI | $CPUS loops / 1 loop | redis req/s | CPU µs/req mortar 1 loop | no busy-poll | $CPUS loops | redis |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
$rows
target: ≥ 1.0× Redis for GET and SET with one loop — $verdict. The benchmark client needs a
whole core at \`-P 1\`: with a loop per CPU, mortar's loops take turns on the client's core too.
The EXISTS row is bound by the server, not the client (each command is $EXISTS_KEYS lookups): it
shows what more loops buy where Redis has one thread. CPU µs/req: the server process's user +
system CPU over the run ÷ requests (kernel network work included). Busy-polling
(\`cache.resp_busy_poll_us\`, 200 µs by default) keeps a busy loop polling through its short idle
gaps, so that clients' sends need not wake it: it buys throughput and latency with CPU. "Per round": the mean of
each round's mortar ÷ Redis (runs seconds apart), with its 95% confidence interval.
EOT
