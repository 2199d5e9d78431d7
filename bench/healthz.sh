#!/usr/bin/env bash
# bench/healthz.sh — GET /healthz: mortar vs nginx returning a static
# {"status":"ok"}. The floor for every mortar route: HTTP stack + router +
# middleware, no storage. Appends a section to bench/RESULTS.md.
#
# Usage: bench/healthz.sh
# Env:   BENCH_DURATION (10s) BENCH_CONNECTIONS (64) BENCH_THREADS (2)
#        BENCH_WARMUP (2s) CARGO_TARGET_DIR (~/.cache/mortar-target)
#        BENCH_KEEP_TMP=1 keeps the scratch dir (configs, logs, raw wrk output).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NGINX_PORT=18790
MORTAR_PORT=18700
PATH_UNDER_TEST=/healthz

# nginx: the same answer mortar gives, from a static `return`.
NGINX_SERVER_BODY='location /healthz { return 200 '"'"'{"status":"ok"}'"'"'; }'

bench_init "$WRK_BIN" "$NGINX_BIN"
require_free_port "$NGINX_PORT"   # fail before the (slow) build, not after
require_free_port "$MORTAR_PORT"
build_mortar

# 1. Start both servers (each on its own port, both stay up for the run).
nginx_start "$NGINX_PORT" "$NGINX_SERVER_BODY"
mortar_start "$MORTAR_PORT"

# Sanity: both answer 200 on the path under test before we measure.
for port in "$NGINX_PORT" "$MORTAR_PORT"; do
    body="$(curl -sf "http://127.0.0.1:$port$PATH_UNDER_TEST")" ||
        die "127.0.0.1:$port$PATH_UNDER_TEST did not answer 200"
    log "127.0.0.1:$port$PATH_UNDER_TEST -> $body"
done

# 2. Measure with identical wrk settings: nginx first, then mortar.
run_wrk nginx "http://127.0.0.1:$NGINX_PORT$PATH_UNDER_TEST"
NGINX_RPS=$WRK_RPS NGINX_P99=$WRK_P99_MS NGINX_ERR=$WRK_ERRORS

run_wrk mortar "http://127.0.0.1:$MORTAR_PORT$PATH_UNDER_TEST"
MORTAR_RPS=$WRK_RPS MORTAR_P99=$WRK_P99_MS MORTAR_ERR=$WRK_ERRORS

# 3. Compare. Target: at least nginx's throughput at equal or lower p99.
RPS_RATIO="$(ratio "$MORTAR_RPS" "$NGINX_RPS")"
P99_RATIO="$(ratio "$MORTAR_P99" "$NGINX_P99")"
if awk -v r="$MORTAR_RPS" -v n="$NGINX_RPS" -v rp="$MORTAR_P99" -v np="$NGINX_P99" \
    'BEGIN { exit !(r >= n && rp <= np) }'; then
    VERDICT=met
else
    VERDICT=missed
fi
# wrk-reported socket errors / non-2xx responses would invalidate the figures.
ERRORS_LINE=""
if [[ -n "$NGINX_ERR$MORTAR_ERR" ]]; then
    ERRORS_LINE=$'\n\n'"wrk errors — nginx: ${NGINX_ERR:-none}; mortar: ${MORTAR_ERR:-none}"
fi

# 4. Record.
results_append <<EOF
## healthz: mortar vs nginx — $(date -u +%Y-%m-%dT%H:%M:%SZ)

- machine: $(machine_line)
- mortar: \`$MORTAR_VERSION\`, commit \`$MORTAR_COMMIT\`, release build
- load: \`$(wrk_cmd "http://127.0.0.1:PORT$PATH_UNDER_TEST")\` (after a ${BENCH_WARMUP} warm-up with the same -t/-c), nginx first, then mortar
- nginx: \`$(basename "$NGINX_BIN") -c <tmp>/nginx.conf\` ($("$NGINX_BIN" -v 2>&1 | sed 's/.*: //')) — \`worker_processes auto; access_log off; keepalive_requests 1000000; default_type application/json; listen 127.0.0.1:$NGINX_PORT; location /healthz { return 200 '{"status":"ok"}'; }\`
- mortar: \`$MORTAR_CMD\`

| server | requests/s | p99 ms |
|---|---:|---:|
| nginx | $NGINX_RPS | $NGINX_P99 |
| mortar | $MORTAR_RPS | $MORTAR_P99 |

ratio (mortar/nginx) requests/s: ${RPS_RATIO}x, p99: ${P99_RATIO}x

target: ≥ 1.0× nginx requests/s at equal or lower p99 — $VERDICT$ERRORS_LINE
EOF

log "nginx:  $NGINX_RPS req/s, p99 $NGINX_P99 ms"
log "mortar: $MORTAR_RPS req/s, p99 $MORTAR_P99 ms"
log "ratio requests/s ${RPS_RATIO}x, p99 ${P99_RATIO}x — target $VERDICT"
