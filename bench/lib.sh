# shellcheck shell=bash
# bench/lib.sh — shared helpers for Mortar's side-by-side benchmarks.
#
# Source it from a bench script (which should `set -euo pipefail` first):
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   bench_init [tool...]            # temp dir + cleanup trap; checks curl, cargo, awk and the tools named
#   build_mortar                    # sets MORTAR_BIN
#   nginx_start 18790 'location / { return 200; }'   # sets NGINX_PID, NGINX_CONF
#   mortar_start 18700                                # sets MORTAR_PID, MORTAR_CMD
#   run_wrk nginx http://127.0.0.1:18790/             # sets WRK_RPS, WRK_P99_MS, ...
#   run_wrk mortar http://127.0.0.1:18700/x "$lua"    # ... optionally with a wrk Lua script
#   run_redis_benchmark redis INCR "$key"             # sets RB_RPS, RB_P99_MS (redis-benchmark)
#   results_append <<EOF ... EOF                      # appends to bench/RESULTS.md
#
# Everything started through `start_bg` is stopped (by PID) when the script
# exits, whether it succeeds, fails, or is interrupted.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
RESULTS_FILE="${RESULTS_FILE:-$BENCH_DIR/RESULTS.md}"

# Load-generator settings, identical for every server in a comparison.
BENCH_THREADS="${BENCH_THREADS:-2}"
BENCH_CONNECTIONS="${BENCH_CONNECTIONS:-64}"
BENCH_DURATION="${BENCH_DURATION:-10s}"
BENCH_WARMUP="${BENCH_WARMUP:-2s}"

NGINX_BIN="${NGINX_BIN:-/usr/sbin/nginx}"
WRK_BIN="${WRK_BIN:-/usr/bin/wrk}"

# PIDs started by this script, stopped in reverse order on exit.
BENCH_PIDS=()
BENCH_TMP=""
# Commands (already quoted, see on_exit) run on exit after the processes are stopped.
BENCH_ON_EXIT=()
# Extra VAR=value environment for the next mortar_start (e.g. the Redis backend).
MORTAR_ENV=()

# Redis used by Redis-backed comparisons (a shared instance: only our own keys are touched).
BENCH_REDIS_HOST="${BENCH_REDIS_HOST:-127.0.0.1}"
BENCH_REDIS_PORT="${BENCH_REDIS_PORT:-6379}"
REDIS_CLI_BIN="${REDIS_CLI_BIN:-redis-cli}"
REDIS_BENCHMARK_BIN="${REDIS_BENCHMARK_BIN:-redis-benchmark}"

# ---------------------------------------------------------------- logging --

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------ setup and cleanup --

# bench_init [tool...]: check for curl, cargo, awk and the tools a script names (e.g.
# "$WRK_BIN" "$NGINX_BIN"), create the scratch directory ($BENCH_TMP) and install traps.
bench_init() {
    local tool
    for tool in "$@" curl cargo awk; do
        command -v "$tool" >/dev/null || die "required tool not found: $tool"
    done
    BENCH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/mortar-bench.XXXXXX")"
    trap bench_cleanup EXIT
    # On a signal, exit (which runs the EXIT trap) with the usual 128+N code.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "scratch dir: $BENCH_TMP"
}

# bench_cleanup: stop every process we started, then remove the scratch dir.
# Set BENCH_KEEP_TMP=1 to keep the scratch dir (logs, configs) for debugging.
bench_cleanup() {
    local rc=$? i
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        stop_process "${BENCH_PIDS[i]}"
    done
    BENCH_PIDS=()
    for ((i = ${#BENCH_ON_EXIT[@]} - 1; i >= 0; i--)); do
        eval "${BENCH_ON_EXIT[i]}" || log "cleanup step failed: ${BENCH_ON_EXIT[i]}"
    done
    BENCH_ON_EXIT=()
    if [[ -n "$BENCH_TMP" && -d "$BENCH_TMP" ]]; then
        if [[ "${BENCH_KEEP_TMP:-0}" == 1 || $rc -ne 0 ]]; then
            log "scratch dir kept: $BENCH_TMP"
        else
            rm -rf -- "$BENCH_TMP"
        fi
    fi
    return "$rc"
}

# on_exit <cmd> [args...]: run this command when the script exits (after every
# process started here is stopped; last registered runs first), also on failure.
on_exit() {
    local q
    printf -v q '%q ' "$@"
    BENCH_ON_EXIT+=("$q")
}

# ------------------------------------------------------------- processes --

# start_bg <logfile> <workdir> <cmd> [args...]: start a command in the
# background from <workdir>, stdout+stderr to <logfile>; set BG_PID and record
# it for cleanup. The subshell execs the command, so BG_PID is the command's
# own PID. Use `env VAR=value cmd ...` to give it its own environment.
start_bg() {
    local logfile=$1 workdir=$2
    shift 2
    (cd "$workdir" && exec "$@") >"$logfile" 2>&1 </dev/null &
    BG_PID=$!
    BENCH_PIDS+=("$BG_PID")
}

# run_fg <cmd> [args...]: run a command to completion, like a plain foreground
# command, but interruptible: bash delays traps until a foreground child ends,
# whereas `wait` returns at once on a signal, so cleanup (which also stops
# this command) is not held up by a 10 s wrk run. Returns the command's status.
run_fg() {
    "$@" &
    local pid=$!
    BENCH_PIDS+=("$pid")
    local rc=0
    wait "$pid" || rc=$?
    unset 'BENCH_PIDS[-1]'
    return "$rc"
}

# stop_process <pid> [grace-seconds]: SIGTERM, wait, then SIGKILL if needed.
# Only ever signals the given PID (a process this script started).
stop_process() {
    local pid=$1 grace=${2:-5} i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    log "pid $pid did not stop after ${grace}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# port_is_free <port>: true when nothing listens on 127.0.0.1:<port>.
port_is_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# require_free_port <port>: refuse to benchmark a process we did not start.
require_free_port() {
    port_is_free "$1" || die "127.0.0.1:$1 is already in use; stop whatever listens there or pick another port"
}

# wait_for_port <port> <pid> [timeout-seconds]: wait until 127.0.0.1:<port>
# accepts connections; fail early if <pid> exits.
wait_for_port() {
    local port=$1 pid=$2 timeout=${3:-30} i
    for ((i = 0; i < timeout * 10; i++)); do
        port_is_free "$port" || return 0
        kill -0 "$pid" 2>/dev/null || die "pid $pid exited before listening on port $port"
        sleep 0.1
    done
    die "timed out after ${timeout}s waiting for port $port"
}

# wait_for_http <url> <pid> [timeout-seconds]: wait until <url> answers 2xx.
wait_for_http() {
    local url=$1 pid=$2 timeout=${3:-30} i
    for ((i = 0; i < timeout * 10; i++)); do
        curl -sf -o /dev/null --max-time 1 "$url" && return 0
        kill -0 "$pid" 2>/dev/null || die "pid $pid exited before $url became ready"
        sleep 0.1
    done
    die "timed out after ${timeout}s waiting for $url"
}

# ----------------------------------------------------------------- mortar --

# build_mortar: release-build the server; sets MORTAR_BIN.
# CARGO_TARGET_DIR defaults to ~/.cache/mortar-target (kept across runs).
build_mortar() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mortar-target}"
    log "building mortar (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    # Build from the repo root (so any .cargo/config.toml applies), without a
    # subshell, so the traps still cover the build.
    pushd "$REPO_ROOT" >/dev/null
    run_fg cargo build --release -p mortar-server || die "cargo build failed"
    popd >/dev/null
    MORTAR_BIN="$CARGO_TARGET_DIR/release/mortar"
    [[ -x "$MORTAR_BIN" ]] || die "binary not found: $MORTAR_BIN"
    MORTAR_VERSION="$("$MORTAR_BIN" --version 2>/dev/null || echo mortar)"
    MORTAR_COMMIT="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
        MORTAR_COMMIT+="+dirty"
    fi
}

# mortar_start <port> [extra serve args...]: start `mortar serve` on
# 127.0.0.1:<port> with a fresh data dir, wait for /readyz, set MORTAR_PID and
# MORTAR_CMD (the command line, for the results file).
# Runs from its own directory so no stray ./mortar.toml is picked up; only
# MORTAR_LOG__LEVEL is set (override with MORTAR_BENCH_LOG_LEVEL), plus whatever
# VAR=value entries the caller put in the MORTAR_ENV array (shown in MORTAR_CMD).
mortar_start() {
    local port=$1
    shift
    require_free_port "$port"
    local dir="$BENCH_TMP/mortar-$port"
    mkdir -p "$dir/data"
    local level="${MORTAR_BENCH_LOG_LEVEL:-warn}"
    local -a cmd=("$MORTAR_BIN" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" "$@")
    MORTAR_CMD="${MORTAR_ENV[*]:+${MORTAR_ENV[*]} }MORTAR_LOG__LEVEL=$level mortar serve --listen 127.0.0.1:$port --data-dir <tmp>${*:+ $*}"
    log "starting: $MORTAR_CMD"
    start_bg "$dir/mortar.log" "$dir" env "${MORTAR_ENV[@]}" MORTAR_LOG__LEVEL="$level" "${cmd[@]}"
    MORTAR_PID=$BG_PID
    wait_for_http "http://127.0.0.1:$port/readyz" "$MORTAR_PID"
}

# ------------------------------------------------------------------ nginx --

# nginx_start <port> <server-body> [http-body]: run a private nginx (never the
# system one) with a generated config in the scratch dir; <server-body> goes
# inside `server { listen 127.0.0.1:<port>; ... }`, the optional [http-body]
# in `http { ... }` before it (for http-level directives such as
# limit_req_zone). Sets NGINX_PID and NGINX_CONF.
nginx_start() {
    local port=$1 body=$2 http_body=${3:-}
    require_free_port "$port"
    local dir="$BENCH_TMP/nginx-$port"
    mkdir -p "$dir/tmp"
    NGINX_CONF="$dir/nginx.conf"
    cat >"$NGINX_CONF" <<EOF
# Generated by bench/lib.sh — private instance, not the system nginx.
daemon off;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    $http_body

    server {
        listen 127.0.0.1:$port;
        $body
    }
}
EOF
    # -p/-e keep even startup errors out of /var/log/nginx; -t validates first.
    "$NGINX_BIN" -p "$dir" -e "$dir/error.log" -c "$NGINX_CONF" -t -q ||
        die "invalid nginx config: $NGINX_CONF"
    log "starting nginx on 127.0.0.1:$port ($NGINX_CONF)"
    start_bg "$dir/stderr.log" "$dir" "$NGINX_BIN" -p "$dir" -e "$dir/error.log" -c "$NGINX_CONF"
    NGINX_PID=$BG_PID
    wait_for_port "$port" "$NGINX_PID"
}

# -------------------------------------------------------------------- wrk --

# wrk_cmd <url> [lua-script]: the measurement command line (same settings for
# everyone); the script is shown by its file name.
wrk_cmd() {
    echo "wrk -t$BENCH_THREADS -c$BENCH_CONNECTIONS -d$BENCH_DURATION --latency${2:+ -s $(basename "$2")} $1"
}

# to_ms <value-with-unit>: wrk latency ("850.00us", "1.23ms", "2.00s", "1.00m") → ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000
        else if (u == "ms") n *= 1
        else if (u == "s") n *= 1000
        else if (u == "m") n *= 60000
        else if (u == "h") n *= 3600000
        else { print "NaN"; exit 1 }
        printf "%.3f", n
    }'
}

# run_wrk <label> <url> [lua-script]: warm up for $BENCH_WARMUP, then measure
# (both with the script, e.g. one setting wrk.method/body/headers for a POST).
# Sets WRK_RPS, WRK_P99_MS, WRK_ERRORS (socket errors + non-2xx/3xx, as text,
# empty when none) and WRK_OUT (the raw output file, also logged to stderr).
run_wrk() {
    local label=$1 url=$2 script=${3:-}
    local -a extra=()
    [[ -z "$script" ]] || extra=(-s "$script")
    log "$label: warm-up ${BENCH_WARMUP}"
    run_fg "$WRK_BIN" "-t$BENCH_THREADS" "-c$BENCH_CONNECTIONS" "-d$BENCH_WARMUP" "${extra[@]}" "$url" >/dev/null
    log "$label: $(wrk_cmd "$url" "$script")"
    WRK_OUT="$BENCH_TMP/wrk-$label.txt"
    run_fg "$WRK_BIN" "-t$BENCH_THREADS" "-c$BENCH_CONNECTIONS" "-d$BENCH_DURATION" --latency "${extra[@]}" "$url" >"$WRK_OUT"
    sed 's/^/    /' "$WRK_OUT" >&2

    WRK_RPS="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$WRK_OUT")"
    local p99
    p99="$(awk '$1 == "99%" { print $2 }' "$WRK_OUT")"
    [[ -n "$WRK_RPS" && -n "$p99" ]] || die "could not parse wrk output ($WRK_OUT)"
    WRK_P99_MS="$(to_ms "$p99")" || die "unknown latency unit in '$p99'"
    WRK_ERRORS="$(grep -E '^ *(Socket errors|Non-2xx or 3xx responses):' "$WRK_OUT" |
        sed 's/^ *//' | paste -sd';' - || true)"
    [[ -z "$WRK_ERRORS" ]] || log "$label: WARNING: $WRK_ERRORS"
}

# duration_seconds <wrk-duration>: "10s", "1m", "500ms", "10" → whole seconds (≥ 1).
duration_seconds() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "" || u == "s") s = n
        else if (u == "ms") s = n / 1000
        else if (u == "m") s = n * 60
        else if (u == "h") s = n * 3600
        else { print "NaN"; exit 1 }
        s = int(s + 0.5); if (s < 1) s = 1
        print s
    }'
}

# ------------------------------------------------------------------ redis --

# redis_cli [args...]: redis-cli against the benchmark Redis.
redis_cli() {
    "$REDIS_CLI_BIN" -h "$BENCH_REDIS_HOST" -p "$BENCH_REDIS_PORT" "$@"
}

# redis_url: the redis:// URL of the benchmark Redis.
redis_url() {
    echo "redis://$BENCH_REDIS_HOST:$BENCH_REDIS_PORT"
}

# redis_require: the benchmark Redis answers PING and the tools exist. Never
# starts or stops Redis (it is shared with other users).
redis_require() {
    local tool
    for tool in "$REDIS_CLI_BIN" "$REDIS_BENCHMARK_BIN"; do
        command -v "$tool" >/dev/null || die "required tool not found: $tool"
    done
    [[ "$(redis_cli ping 2>/dev/null)" == PONG ]] ||
        die "no Redis answering at $BENCH_REDIS_HOST:$BENCH_REDIS_PORT"
}

# redis_prefix_new: a fresh key prefix owned by this run, mortar-bench:<random>:
# (sets REDIS_PREFIX) whose keys are deleted on exit.
redis_prefix_new() {
    REDIS_PREFIX="mortar-bench:$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n'):"
    on_exit redis_delete_prefix "$REDIS_PREFIX"
}

# redis_delete_prefix <prefix>: delete every key starting with <prefix> (SCAN,
# never KEYS/FLUSH*). Refuses an empty or wildcard prefix.
redis_delete_prefix() {
    local prefix=$1 n=0 key
    if [[ -z "$prefix" || "$prefix" == *[*?[]* ]]; then
        log "error: refusing to delete keys for prefix '$prefix'"
        return 1
    fi
    while IFS= read -r key; do
        [[ -n "$key" ]] || continue
        redis_cli del "$key" >/dev/null && n=$((n + 1))
    done < <(redis_cli --scan --pattern "${prefix}*")
    log "redis: deleted $n key(s) under $prefix"
}

# redis_cmdstat <command>: "<calls> <usec>" for one command from INFO commandstats
# (server-wide, so other clients of a shared Redis are counted too; "0 0" if unused).
redis_cmdstat() {
    redis_cli info commandstats | tr -d '\r' |
        awk -F'[:,=]' -v c="cmdstat_$1" '$1 == c { calls = $3; usec = $5 } END { printf "%d %d", calls, usec }'
}

# redis_usec_per_call <before> <after>: server time per call between two
# redis_cmdstat readings, in µs with two decimals ("n/a" without calls).
redis_usec_per_call() {
    awk -v b="$1" -v a="$2" 'BEGIN {
        split(b, x, " "); split(a, y, " "); n = y[1] - x[1]
        if (n <= 0) print "n/a"; else printf "%.2f", (y[2] - x[2]) / n
    }'
}

# redis_benchmark_cmd <n> <command...>: the measurement command line.
redis_benchmark_cmd() {
    local n=$1
    shift
    echo "redis-benchmark -h $BENCH_REDIS_HOST -p $BENCH_REDIS_PORT -c $BENCH_CONNECTIONS -n $n --csv $*"
}

# run_redis_benchmark <label> <command...>: redis-benchmark (no pipelining,
# $BENCH_CONNECTIONS clients) running one command against the benchmark Redis.
# The warm-up doubles as calibration: the measured run's -n is chosen so it
# lasts about $BENCH_DURATION (redis-benchmark has no duration option).
# Sets RB_RPS, RB_P99_MS, RB_N, RB_CMD (command line) and RB_OUT (raw CSV).
run_redis_benchmark() {
    local label=$1
    shift
    local secs warm_n=50000 warm_out="$BENCH_TMP/redis-benchmark-$label-warmup.csv"
    secs="$(duration_seconds "$BENCH_DURATION")" || die "bad BENCH_DURATION '$BENCH_DURATION'"
    log "$label: warm-up/calibration $(redis_benchmark_cmd "$warm_n" "$@")"
    run_fg "$REDIS_BENCHMARK_BIN" -h "$BENCH_REDIS_HOST" -p "$BENCH_REDIS_PORT" \
        -c "$BENCH_CONNECTIONS" -n "$warm_n" --csv "$@" >"$warm_out"
    local warm_rps
    warm_rps="$(awk -F'"' 'NR == 2 { printf "%.0f", $4 }' "$warm_out")"
    [[ -n "$warm_rps" && "$warm_rps" -gt 0 ]] || die "could not parse redis-benchmark output ($warm_out)"
    RB_N=$((warm_rps * secs))
    RB_CMD="$(redis_benchmark_cmd "$RB_N" "$@")"
    log "$label: $RB_CMD (~${secs}s at the warm-up's $warm_rps req/s)"
    RB_OUT="$BENCH_TMP/redis-benchmark-$label.csv"
    run_fg "$REDIS_BENCHMARK_BIN" -h "$BENCH_REDIS_HOST" -p "$BENCH_REDIS_PORT" \
        -c "$BENCH_CONNECTIONS" -n "$RB_N" --csv "$@" >"$RB_OUT"
    sed 's/^/    /' "$RB_OUT" >&2
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    RB_RPS="$(awk -F'"' 'NR == 2 { printf "%.0f", $4 }' "$RB_OUT")"
    RB_P99_MS="$(awk -F'"' 'NR == 2 { printf "%.3f", $14 }' "$RB_OUT")"
    [[ -n "$RB_RPS" && -n "$RB_P99_MS" ]] || die "could not parse redis-benchmark output ($RB_OUT)"
}

# ---------------------------------------------------------------- results --

# ratio <a> <b>: a/b with two decimals.
# cpu_ticks <pid>: user + system CPU the process has used, in clock ticks (getconf CLK_TCK).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# us_per <ticks> <count>: microseconds of CPU per item.
us_per() {
    awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n == 0) print "-"; else printf "%.2f", t * 1e6 / hz / n }'
}

ratio() { awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (b == 0) print "inf"; else printf "%.*f", d, a / b }'; }

# machine_line: one-line description of the host.
machine_line() {
    local mem
    mem="$(free -g | awk '/^Mem:/ { print $2 }')"
    echo "$(nproc) CPUs, ${mem} GiB RAM (free -g total), kernel $(uname -r)"
}

# results_append: append stdin to $RESULTS_FILE, creating it with a header.
results_append() {
    if [[ ! -f "$RESULTS_FILE" ]]; then
        cat >"$RESULTS_FILE" <<'EOF'
# Benchmark results

Appended by the scripts in `bench/` (see `bench/README.md`); newest at the bottom.
Figures are only comparable within one section: same machine, same run, same wrk settings.
EOF
    fi
    { echo; cat; } >>"$RESULTS_FILE"
    log "appended to $RESULTS_FILE"
}

# ----------------------------------------------------- mortar bench lock --
#
# `mortar bench lock` is Mortar's own load driver for the lock block: each of
# -c workers loops acquire + release (its own lock name, `bench-<worker>-<pid>`)
# for -d seconds and prints pairs/s and latency percentiles. With
# `--target redis://…` or `--target http://…` it drives raw Redis or etcd
# instead, with the same Rust async client stack; with `--contended` every
# worker queues on one lock and it reports release → next grant hand-off.

# Workers for every lock-bench run in a comparison (`-c`).
BENCH_LOCK_CONCURRENCY="${BENCH_LOCK_CONCURRENCY:-32}"

# lock_bench_cmd <seconds> [args...]: the command line shown in results.
lock_bench_cmd() {
    local secs=$1
    shift
    echo "mortar bench lock${*:+ $*} -c $BENCH_LOCK_CONCURRENCY -d $secs"
}

# lock_bench_once <outfile> <seconds> [args...]: one `mortar bench lock` run,
# interruptible like run_fg; sets LB_PID (the driver's PID, which is part of
# its lock names). A raw-Redis run (`--target redis://…`) gets its
# `bench-<worker>-<pid>` keys deleted on exit, should any be left.
lock_bench_once() {
    local out=$1 secs=$2
    shift 2
    "$MORTAR_BIN" bench lock "$@" -c "$BENCH_LOCK_CONCURRENCY" -d "$secs" >"$out" 2>"$out.err" </dev/null &
    LB_PID=$!
    BENCH_PIDS+=("$LB_PID")
    if [[ " $* " == *" --target redis://"* ]]; then
        on_exit redis_delete_lock_bench_keys "$LB_PID"
    fi
    local rc=0
    wait "$LB_PID" || rc=$?
    unset 'BENCH_PIDS[-1]'
    ((rc == 0)) || die "mortar bench lock $* failed (exit $rc): $(cat "$out.err" "$out")"
}

# run_lock_bench <label> [args...]: lock_bench_warmup, then lock_bench_measure.
run_lock_bench() {
    lock_bench_warmup "$@"
    lock_bench_measure "$@"
}

# lock_bench_warmup <label> [args...]: a $BENCH_WARMUP run (whole seconds, ≥ 1)
# with the same arguments, not recorded.
lock_bench_warmup() {
    local label=$1 warm
    shift
    warm="$(duration_seconds "$BENCH_WARMUP")" || die "bad BENCH_WARMUP '$BENCH_WARMUP'"
    log "$label: warm-up $(lock_bench_cmd "$warm" "$@")"
    lock_bench_once "$BENCH_TMP/lock-$label-warmup.txt" "$warm" "$@"
}

# lock_bench_measure <label> [args...]: the measured run, $BENCH_DURATION
# (whole seconds, ≥ 1) with $BENCH_LOCK_CONCURRENCY workers. Sets LB_RATE
# (pairs/s; hand-offs/s with --contended), LB_PAIRS, LB_ERRORS, LB_P50, LB_P90,
# LB_P99, LB_MAX (ms), LB_CMD (command line), LB_PID and LB_OUT (raw output,
# also logged to stderr). Split from the warm-up so that counters read around
# it (server metrics, INFO commandstats, etcd's revision) cover this run only.
lock_bench_measure() {
    local label=$1 secs
    shift
    secs="$(duration_seconds "$BENCH_DURATION")" || die "bad BENCH_DURATION '$BENCH_DURATION'"
    LB_CMD="$(lock_bench_cmd "$secs" "$@")"
    log "$label: $LB_CMD"
    LB_OUT="$BENCH_TMP/lock-$label.txt"
    lock_bench_once "$LB_OUT" "$secs" "$@"
    sed 's/^/    /' "$LB_OUT" >&2
    # "<target> <what>: 2144 pairs/s over 2.0 s (4293 pairs, 0 errors, 4 workers)"
    # "latency ms: p50 1.697  p90 2.461  p99 4.562  max 19.386"
    local parsed
    parsed="$(awk '
        NR == 1 {
            for (i = 1; i < NF; i++) {
                if ($(i + 1) == "pairs/s") rate = $i
                if ($(i + 1) == "pairs,") { pairs = $i; sub(/^\(/, "", pairs) }
                if ($(i + 1) == "errors,") errors = $i
            }
        }
        $1 == "latency" && $2 == "ms:" {
            for (i = 3; i < NF; i++) {
                if ($i == "p50") p50 = $(i + 1)
                if ($i == "p90") p90 = $(i + 1)
                if ($i == "p99") p99 = $(i + 1)
                if ($i == "max") max = $(i + 1)
            }
        }
        END {
            if (rate == "" || pairs == "" || errors == "" || p99 == "") exit 1
            print rate, pairs, errors, p50, p90, p99, max
        }' "$LB_OUT")" || die "could not parse mortar bench lock output ($LB_OUT)"
    read -r LB_RATE LB_PAIRS LB_ERRORS LB_P50 LB_P90 LB_P99 LB_MAX <<<"$parsed"
    ((LB_ERRORS == 0)) || log "$label: WARNING: $LB_ERRORS errors"
}

# redis_lock_bench_keys <pid>: the raw-Redis driver's keys (bench-<worker>-<pid>)
# still in the benchmark Redis, one per line.
redis_lock_bench_keys() {
    local pid=$1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    redis_cli --scan --pattern "bench-*-$pid" | grep -E "^bench-[0-9]+-$pid\$" || true
}

# redis_delete_lock_bench_keys <pid>: delete what redis_lock_bench_keys lists
# (only exact bench-<number>-<pid> names; never a pattern delete).
redis_delete_lock_bench_keys() {
    local pid=$1 key n=0
    [[ "$pid" =~ ^[0-9]+$ ]] || { log "error: refusing to delete keys for pid '$pid'"; return 1; }
    while IFS= read -r key; do
        [[ -n "$key" ]] || continue
        redis_cli del "$key" >/dev/null && n=$((n + 1))
    done < <(redis_lock_bench_keys "$pid")
    ((n == 0)) || log "redis: deleted $n leftover key(s) bench-*-$pid"
}

# mortar_metric_sum <port> <name>: sum of a mortar metric's series from /metrics (0 when absent).
mortar_metric_sum() {
    { curl -sf "http://127.0.0.1:$1/metrics" || true; } |
        awk -v m="$2" '$1 == m || index($1, m "{") == 1 { n += $NF } END { printf "%d", n }'
}

# ------------------------------------------------------------------- etcd --

ETCD_BIN="${ETCD_BIN:-etcd}"

# etcd_require: the etcd binary exists; if not, install Debian's etcd-server
# (needs root; the package's own service, if any starts, is left alone and
# never used: etcd_start runs a private instance on other ports).
etcd_require() {
    command -v "$ETCD_BIN" >/dev/null && return 0
    [[ "$ETCD_BIN" == etcd ]] || die "etcd not found: $ETCD_BIN"
    log "etcd not found: apt-get install -y etcd-server"
    run_fg env DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >"${BENCH_TMP:-/tmp}/apt-etcd.log" 2>&1 ||
        die "apt-get install -y etcd-server failed (see ${BENCH_TMP:-/tmp}/apt-etcd.log)"
    command -v "$ETCD_BIN" >/dev/null || die "etcd still not found after installing etcd-server"
}

# etcd_start <client-port> <peer-port>: a private single-node etcd on
# 127.0.0.1 with a fresh data dir in the scratch dir; waits for /health.
# Sets ETCD_PID, ETCD_CMD (for the results file), ETCD_URL, ETCD_VERSION.
etcd_start() {
    local cport=$1 pport=$2
    require_free_port "$cport"
    require_free_port "$pport"
    local dir="$BENCH_TMP/etcd-$cport"
    mkdir -p "$dir"
    ETCD_URL="http://127.0.0.1:$cport"
    local peer="http://127.0.0.1:$pport"
    local -a args=(--name bench --data-dir "$dir/data"
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL"
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer"
        --initial-cluster "bench=$peer")
    ETCD_CMD="etcd --name bench --data-dir <tmp> --listen-client-urls $ETCD_URL --advertise-client-urls $ETCD_URL --listen-peer-urls $peer --initial-advertise-peer-urls $peer --initial-cluster bench=$peer"
    ETCD_VERSION="$("$ETCD_BIN" --version 2>/dev/null | awk '/^etcd Version:/ { print $3 }')"
    log "starting: $ETCD_CMD (etcd ${ETCD_VERSION:-unknown})"
    start_bg "$dir/etcd.log" "$dir" "$ETCD_BIN" "${args[@]}"
    ETCD_PID=$BG_PID
    local i
    for ((i = 0; i < 300; i++)); do
        curl -sf --max-time 1 "$ETCD_URL/health" 2>/dev/null | grep -q '"health": *"true"' && return 0
        kill -0 "$ETCD_PID" 2>/dev/null || die "etcd exited before becoming healthy (see $dir/etcd.log)"
        sleep 0.1
    done
    die "timed out waiting for $ETCD_URL/health (see $dir/etcd.log)"
}

# etcd_revision <url>: the store revision (grows by one per write; JSON gateway).
etcd_revision() {
    curl -sf -X POST "$1/v3/kv/range" -d '{"key":"AA==","range_end":"AA==","count_only":true}' |
        sed -n 's/.*"revision":"\{0,1\}\([0-9]*\).*/\1/p'
}

# etcd_key_count <url>: how many keys the store holds (0 when none).
etcd_key_count() {
    local out
    out="$(curl -sf -X POST "$1/v3/kv/range" -d '{"key":"AA==","range_end":"AA==","count_only":true}')" || return 1
    echo "$out" | sed -n 's/.*"count":"\{0,1\}\([0-9]*\).*/\1/p' | grep . || echo 0
}
