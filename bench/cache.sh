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
MORTAR_ONE_LOOP_PORT=18781
MORTAR_ALL_LOOPS_PORT=18782
REDIS_PORT="${BENCH_REDIS_PORT:-6379}"

bench_init
build_mortar
# Two mortar servers side by side: one RESP event loop (Redis's own shape: it leaves the
# benchmark client the other core on a 2-core machine) and one loop per CPU. The default is one
# per CPU but one (`cache.resp_threads` = 0): one loop on 2 cores.
CPUS=$(nproc)
LOOPS_DEFAULT=$((CPUS > 1 ? CPUS - 1 : 1))
MORTAR_ENV=("MORTAR_CACHE__RESP_LISTEN=127.0.0.1:$MORTAR_ONE_LOOP_PORT" "MORTAR_CACHE__RESP_THREADS=1")
mortar_start 18705
wait_for_port "$MORTAR_ONE_LOOP_PORT" "$MORTAR_PID"
MORTAR_CMD_ONE_LOOP=$MORTAR_CMD
MORTAR_PID_ONE_LOOP=$MORTAR_PID
MORTAR_ENV=("MORTAR_CACHE__RESP_LISTEN=127.0.0.1:$MORTAR_ALL_LOOPS_PORT" "MORTAR_CACHE__RESP_THREADS=$CPUS")
mortar_start 18706
wait_for_port "$MORTAR_ALL_LOOPS_PORT" "$MORTAR_PID"
MORTAR_CMD_ALL_LOOPS=$MORTAR_CMD
MORTAR_PID_ALL_LOOPS=$MORTAR_PID

REDIS_PID=$(redis-cli -p "$REDIS_PORT" info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
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
for port in "$MORTAR_ONE_LOOP_PORT" "$MORTAR_ALL_LOOPS_PORT" "$REDIS_PORT"; do
    redis-benchmark -p "$port" -n "$KEYSPACE" -r $((KEYSPACE / 2)) -c "$CLIENTS" -P 16 -q \
        SET mortar-bench:key:__rand_int__ v >/dev/null 2>&1
done

rows=""
one_loop_met=1
for case in "set 1" "get 1" "set 16" "get 16" "exists 16"; do
    read -r t p <<<"$case"
    n=$([[ $p == 1 ]] && echo "$REQUESTS" || echo "$PIPELINED_REQUESTS")
    [[ $t == exists ]] && n=$REQUESTS
    # Each server ROUNDS times, in mirrored order (A B C, C B A, …), averaged: drift during
    # the run (CPU frequency, other tenants) then favours nobody, and one noisy run counts for
    # 1/ROUNDS.
    declare -A sum_rps=() sum_cpu=() last=()
    one_ratios=() all_ratios=()
    for ((k = 0; k < ROUNDS; k++)); do
        order=(one all redis)
        ((k % 2)) && order=(redis all one)
        for who in "${order[@]}"; do
            case $who in
                one) read -r x c < <(rps "$MORTAR_ONE_LOOP_PORT" "$MORTAR_PID_ONE_LOOP" "$t" "$p" "$n") ;;
                all) read -r x c < <(rps "$MORTAR_ALL_LOOPS_PORT" "$MORTAR_PID_ALL_LOOPS" "$t" "$p" "$n") ;;
                redis) read -r x c < <(rps "$REDIS_PORT" "$REDIS_PID" "$t" "$p" "$n") ;;
            esac
            last[$who]=$x
            sum_rps[$who]=$(awk -v a="${sum_rps[$who]:-0}" -v b="$x" 'BEGIN { print a + b }')
            sum_cpu[$who]=$(awk -v a="${sum_cpu[$who]:-0}" -v b="$c" 'BEGIN { print a + b }')
        done
        one_ratios+=("$(ratio "${last[one]}" "${last[redis]}" 4)")
        all_ratios+=("$(ratio "${last[all]}" "${last[redis]}" 4)")
    done
    o=$(mean "${sum_rps[one]}") oc=$(mean "${sum_cpu[one]}")
    a=$(mean "${sum_rps[all]}") ac=$(mean "${sum_cpu[all]}")
    r=$(mean "${sum_rps[redis]}") rc=$(mean "${sum_cpu[redis]}")
    name=${t^^}
    [[ $t == exists ]] && name="EXISTS of $EXISTS_KEYS random keys"
    log "$name -P $p: mortar 1 loop $o req/s ($oc µs), $CPUS loops $a req/s ($ac µs), redis $r req/s ($rc µs)"
    rows+="| $name | $p | $o | $(ratio "$o" "$r")× | $(spread "${one_ratios[@]}") | $a | $(ratio "$a" "$r")× | $(spread "${all_ratios[@]}") | $(ratio "$a" "$o")× | $r | $oc | $ac | $rc |"$'\n'
    [[ $t != exists ]] && awk -v a="$o" -v b="$r" 'BEGIN { exit !(a < b) }' && one_loop_met=0
    unset sum_rps sum_cpu last
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
mirrored order (A B C, C B A, …) and averaged, against two mortar servers (embedded) — one RESP
event loop (\`$MORTAR_CMD_ONE_LOOP\`; the default on this machine, one per CPU but one, is $LOOPS_DEFAULT) and one per CPU
(\`$MORTAR_CMD_ALL_LOOPS\`) — and the machine's Redis on $REDIS_PORT, one after the other.

| command | pipeline | mortar 1 loop req/s | /redis | per round, 95% CI | mortar $CPUS loops req/s | /redis | per round, 95% CI | $CPUS loops / 1 loop | redis req/s | CPU µs/req mortar 1 loop | mortar $CPUS loops | redis |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
$rows
target: ≥ 1.0× Redis for GET and SET with one loop — $verdict. The benchmark client needs a
whole core at \`-P 1\`: with a loop per CPU, mortar's loops take turns on the client's core too.
The EXISTS row is bound by the server, not the client (each command is $EXISTS_KEYS lookups): it
shows what more loops buy where Redis has one thread. CPU µs/req: the server process's user +
system CPU over the run ÷ requests (kernel network work included). "Per round": the mean of
each round's mortar ÷ Redis (runs seconds apart), with its 95% confidence interval.
EOT
