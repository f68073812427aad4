#!/usr/bin/env bash
# Cached GET of a ~1 KB JSON over loopback: revalidate against nginx set up as
# a stale-while-revalidate cache (proxy_cache + background update) in front of
# the SAME upstream (a static nginx), measured with wrk in the same run.
#
#   bench/http.sh
#
# Targets (all at /v1/resources/item):
#   revalidate  target/release/revalidate serve, staleness 2s, check_interval 1s
#   floor       the daemon's HTTP stack with no cache: the same runtime and
#               accept loop serving the upstream's body from memory
#               (target/release/examples/floor; crates/revalidate-daemon/
#               src/floor.rs): the ceiling of the framework on this machine
#   nginx       proxy_cache, proxy_cache_valid 200 2s, use_stale updating,
#               background_update, cache_lock, keepalive to the upstream;
#               otherwise nginx's defaults (sendfile off)
#   nginx-ofc   the same plus `open_file_cache`, which keeps the cache file
#               open between hits (without it every hit costs an
#               open/fstat/pread/close of the cache file)
#   before      optional: another revalidate binary (BEFORE_BIN, e.g. one
#               built from an older commit) with revalidate's config, for a
#               before/after in the same run
#
# The servers under test (and the idle upstream) are pinned to CPU 0, wrk to
# CPU 1. Each target is warmed up and checked (body equals the upstream's
# JSON, the cache answers hits), then wrk runs RUNS times per target,
# alternating targets (r, f, n, o, r, f, n, o, …). Prints a Markdown table of
# the medians (req/s, p50, p99, server CPU time per request) with each run's
# figures, and the ratios revalidate / each other target; raw wrk outputs and
# configs go to bench/out/http-<time>/.
#
# Environment (defaults in brackets):
#   RUNS [5]  DURATION [10s]  CONNECTIONS [50]  THREADS [1]  WARMUP [2s]
#   TARGETS ["revalidate floor nginx nginx-ofc"]  SERVER_CPU [0]  CLIENT_CPU [1]
#   REVALIDATE_BIN [target/release/revalidate]
#   FLOOR_BIN [target/release/examples/floor]  BEFORE_BIN [none; needed by
#   the target `before`]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Five runs, not three: a p99 taken over 10 s on this 2-core VM is moved by
# whatever else the machine schedules on the server's CPU (every target's,
# the floor's too), and a median of three lets one such run decide.
RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2s}
read -r -a TARGETS <<<"${TARGETS:-revalidate floor nginx nginx-ofc}"
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BIN=${REVALIDATE_BIN:-$ROOT/target/release/revalidate}
FLOOR_BIN=${FLOOR_BIN:-$ROOT/target/release/examples/floor}
BEFORE_BIN=${BEFORE_BIN:-}
STALENESS=2s # the same for every cache

BENCH=http.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# --- prerequisites (installs nothing) ----------------------------------------
missing=0
need() { # need CMD HINT
  if ! command -v "$1" >/dev/null 2>&1; then
    log "missing: $1 — $2"
    missing=1
  fi
}
need nginx "apt-get install -y nginx   (only the binary is used; no system service is needed)"
need wrk "apt-get install -y wrk"
need taskset "apt-get install -y util-linux"
need curl "apt-get install -y curl"
need python3 "apt-get install -y python3"
if [[ ! -x $BIN ]]; then
  log "missing: $BIN — cargo build --release -p revalidate-daemon"
  missing=1
fi
for t in "${TARGETS[@]}"; do
  if [[ $t == floor && ! -x $FLOOR_BIN ]]; then
    log "missing: $FLOOR_BIN — cargo build --release -p revalidate-daemon --example floor"
    missing=1
  fi
  if [[ $t == before && ! -x $BEFORE_BIN ]]; then
    log "missing: BEFORE_BIN='$BEFORE_BIN' — the target 'before' needs a revalidate binary"
    missing=1
  fi
done
((missing == 0)) || die "prerequisites missing (see above)"
for t in "${TARGETS[@]}"; do
  case $t in revalidate | floor | nginx | nginx-ofc | before) ;; *) die "unknown target '$t' (TARGETS: revalidate floor nginx nginx-ofc before)" ;; esac
done
[[ ${TARGETS[0]} == revalidate ]] || die "TARGETS must start with revalidate (the ratios are against it)"
taskset -c "$SERVER_CPU" true 2>/dev/null || die "cannot pin to CPU $SERVER_CPU (set SERVER_CPU)"
taskset -c "$CLIENT_CPU" true 2>/dev/null || die "cannot pin to CPU $CLIENT_CPU (set CLIENT_CPU; this bench wants 2 cores)"
[[ $SERVER_CPU != "$CLIENT_CPU" ]] || log "warning: server and client share CPU $SERVER_CPU"

# --- every process started here and the temp dir go on exit (bench/lib.sh) ---
bench_tmp http-bench

start_nginx() { # start_nginx NAME: runs $TMP/NAME/nginx.conf (daemon off) in the background
  local dir=$TMP/$1
  nginx -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >>"$dir/error.log" 2>&1 ||
    die "nginx config for $1 is invalid: $(tail -n 5 "$dir/error.log")"
  taskset -c "$SERVER_CPU" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >>"$dir/error.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
}

# The main context of an nginx config. Every path nginx may write is in the
# temp dir (the distribution's defaults point at /var/lib/nginx, /var/log/nginx).
nginx_main() { # nginx_main DIR
  cat <<EOF
# "user" only matters when run as root: the workers would otherwise drop to
# nobody/www-data and could not read this private temp dir.
user $(id -un) $(id -gn);
daemon off;
master_process on;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_temp_paths() { # nginx_temp_paths DIR
  cat <<EOF
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}

# --- upstream: static nginx serving a ~1 KB JSON ------------------------------
free_port UPORT
U=$TMP/upstream
mkdir -p "$U/www/actions" "$U/tmp"
python3 - "$U/www/actions/item" <<'PY'
import json, sys
items = [{"id": i, "name": f"process-{i}", "status": "active", "cpu": round(i * 1.7, 1), "mem_mb": 64 + 8 * i}
         for i in range(8)]
doc = {"action": "item", "generated_by": "bench/http.sh", "count": len(items), "items": items, "pad": ""}
doc["pad"] = "x" * max(0, 1024 - len(json.dumps(doc, separators=(",", ":"))))
body = json.dumps(doc, separators=(",", ":"))
json.loads(body)
open(sys.argv[1], "w").write(body)
PY
BODY_FILE=$U/www/actions/item
{
  nginx_main "$U"
  cat <<EOF
http {
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
$(nginx_temp_paths "$U")
    server {
        listen 127.0.0.1:$UPORT;
        root $U/www;
        location = /health { return 200 '{"status":"ok"}'; }
        location = /actions/item { }
    }
}
EOF
} >"$U/nginx.conf"
start_nginx upstream
wait_http "http://127.0.0.1:$UPORT/health" "upstream nginx" "$LAST_PID"
curl -fsS "http://127.0.0.1:$UPORT/actions/item" | cmp -s - "$BODY_FILE" ||
  die "the upstream does not serve the body file"

# --- the targets --------------------------------------------------------------
declare -A URL PID LABEL HEADER PATTERN CONF
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')
REVALIDATE_VERSION=$("$BIN" --version)

start_nginx_cache() { # start_nginx_cache NAME EXTRA_DIRECTIVES
  local name=$1 extra=$2 port dir
  free_port port
  dir=$TMP/$name
  mkdir -p "$dir/tmp" "$dir/cache"
  {
    nginx_main "$dir"
    cat <<EOF
http {
    access_log off;
    # nginx closes a client connection after 1000 requests by default (wrk
    # then reconnects); revalidate never does. Lift it so that every target
    # serves the same long-lived connections.
    keepalive_requests 1000000;
$(nginx_temp_paths "$dir")
    proxy_cache_path $dir/cache levels=1:2 keys_zone=swr:1m max_size=16m inactive=10m use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$UPORT;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$port;
${extra:+        $extra
}        location = /v1/resources/item {
            proxy_pass http://origin/actions/item;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache swr;
            proxy_cache_valid 200 $STALENESS;
            proxy_cache_use_stale updating error timeout;
            proxy_cache_background_update on;
            proxy_cache_lock on;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
}
EOF
  } >"$dir/nginx.conf"
  start_nginx "$name"
  PID[$name]=$LAST_PID
  URL[$name]="http://127.0.0.1:$port/v1/resources/item"
  HEADER[$name]=X-Cache-Status
  PATTERN[$name]='^HIT$'
  CONF[$name]=$dir/nginx.conf
  wait_http "${URL[$name]}" "$name" "$LAST_PID"
}

start_revalidate() { # start_revalidate [NAME BIN]
  local name=${1:-revalidate} bin=${2:-$BIN} port dir
  dir=$TMP/$name
  free_port port
  mkdir -p "$dir"
  cat >"$dir/revalidate.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[upstream]
base_url = "http://127.0.0.1:$UPORT"
timeout = "5s"
health_path = "/health"

[refresh]
check_interval = "1s"

[staleness]
item = "$STALENESS"

[actions."item"]
method = "GET"
EOF
  RUST_LOG=warn taskset -c "$SERVER_CPU" "$bin" serve --config "$dir/revalidate.toml" \
    >"$dir/stdout.log" 2>"$dir/stderr.log" &
  PIDS+=($!)
  PID[$name]=$!
  URL[$name]="http://127.0.0.1:$port/v1/resources/item"
  HEADER[$name]=Cache-Status
  PATTERN[$name]='hit'
  CONF[$name]=$dir/revalidate.toml
  [[ $name != revalidate ]] || RPORT=$port
  wait_http "http://127.0.0.1:$port/healthz" "$name" "${PID[$name]}"
}

start_floor() {
  local port dir=$TMP/floor
  free_port port
  mkdir -p "$dir"
  taskset -c "$SERVER_CPU" "$FLOOR_BIN" "127.0.0.1:$port" "$BODY_FILE" \
    >"$dir/stdout.log" 2>"$dir/stderr.log" &
  PIDS+=($!)
  PID[floor]=$!
  URL[floor]="http://127.0.0.1:$port/v1/resources/item"
  HEADER[floor]=""
  wait_http "http://127.0.0.1:$port/healthz" floor "${PID[floor]}"
}

for t in "${TARGETS[@]}"; do
  case $t in
  revalidate)
    start_revalidate
    LABEL[$t]=$REVALIDATE_VERSION
    ;;
  before)
    start_revalidate before "$BEFORE_BIN"
    LABEL[$t]="before: $("$BEFORE_BIN" --version) ($BEFORE_BIN)"
    ;;
  floor)
    start_floor
    LABEL[$t]="floor (the same HTTP stack, a fixed body)"
    ;;
  nginx)
    start_nginx_cache nginx ""
    LABEL[$t]="$NGINX_VERSION proxy_cache"
    ;;
  nginx-ofc)
    start_nginx_cache nginx-ofc "open_file_cache max=64 inactive=60s;"
    LABEL[$t]="$NGINX_VERSION proxy_cache + open_file_cache"
    ;;
  esac
done

# --- warm-up and checks -------------------------------------------------------
check_hits() { # check_hits TARGET: a few reads; the body is the upstream's, the cache hits
  local t=$1 i value=""
  for ((i = 1; i <= 30; i++)); do
    curl -fsS -D "$TMP/headers" -o "$TMP/body" "${URL[$t]}" || die "$t: GET ${URL[$t]} failed"
    cmp -s "$TMP/body" "$BODY_FILE" || die "$t: the body differs from the upstream's JSON"
    if [[ -z ${HEADER[$t]} ]]; then # the floor: no cache to check
      log "$t: serves the upstream's $(wc -c <"$TMP/body") bytes"
      return 0
    fi
    value=$(tr -d '\r' <"$TMP/headers" | awk -v h="${HEADER[$t],,}" \
      'tolower($0) ~ "^" h ":" { sub(/^[^:]*: */, ""); print; exit }')
    if ((i >= 5)) && [[ $value =~ ${PATTERN[$t]} ]]; then
      log "$t: serves hits (${HEADER[$t]}: $value after $i reads; body = the upstream's $(wc -c <"$TMP/body") bytes)"
      return 0
    fi
    sleep 0.05
  done
  die "$t: ${HEADER[$t]} never matched '${PATTERN[$t]}' (last: '$value')"
}
for t in "${TARGETS[@]}"; do check_hits "$t"; done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/out/http-$STAMP
mkdir -p "$OUT"
cp "$U/nginx.conf" "$OUT/upstream.nginx.conf"
for t in "${TARGETS[@]}"; do
  case $t in revalidate) cp "${CONF[$t]}" "$OUT/revalidate.toml" ;; floor | before) ;; *) cp "${CONF[$t]}" "$OUT/$t.nginx.conf" ;; esac
done

WRK_ARGS=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
WRK_CMD="taskset -c $CLIENT_CPU wrk ${WRK_ARGS[*]} URL"
if [[ -n $WARMUP && $WARMUP != 0 ]]; then
  for t in "${TARGETS[@]}"; do
    log "wrk warm-up: $t ($WARMUP, not counted)"
    taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${URL[$t]}" >"$OUT/$t-warmup.txt"
  done
fi

# --- measure ------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
server_ticks() { # CPU ticks (user + system) used so far by a target's serving processes
  local t=$1 pids p sum=0 f
  if [[ $t == revalidate || $t == floor || $t == before ]]; then
    pids=${PID[$t]}
  else # nginx: the worker (the master only supervises; the cache manager idles)
    pids=$(ps -o pid=,args= --ppid "${PID[$t]}" | awk '/worker process/ { print $1 }')
  fi
  for p in $pids; do
    # Fields after "(comm) ": state is 1st, utime 12th, stime 13th.
    f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    sum=$((sum + $(awk '{ print $12 + $13 }' <<<"$f")))
  done
  echo "$sum"
}

# to_ms VALUE: a wrk latency ("812.00us", "1.23ms", "1.01s", "2.00m") in ms
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (match(v, /^[0-9.]+/) == 0) { print "nan"; exit }
    n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
    if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000;
    else if (u == "m") f = 60000; else if (u == "h") f = 3600000; else { print "nan"; exit }
    printf "%.4f\n", n * f
  }'
}
# parse FILE: prints "req_per_s p50_ms p99_ms requests errors"
parse() {
  local rps p50 p99 n errs
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$1")
  p50=$(awk '/Latency Distribution/ { d = 1 } d && $1 == "50%" { print $2; exit }' "$1")
  p99=$(awk '/Latency Distribution/ { d = 1 } d && $1 == "99%" { print $2; exit }' "$1")
  n=$(awk '/ requests in / { print $1; exit }' "$1")
  [[ -n $rps && -n $p50 && -n $p99 && -n $n ]] || die "cannot parse the wrk output $1"
  errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
    /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$1")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $n $errs"
}
median() { # median NUMBERS...
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

declare -A RPS P50 P99 CPU
ERRORS=0
for ((run = 1; run <= RUNS; run++)); do
  for t in "${TARGETS[@]}"; do
    kill -0 "${PID[$t]}" 2>/dev/null || die "$t is no longer running"
    f=$OUT/$t-run$run.txt
    log "run $run/$RUNS: $t"
    before=$(server_ticks "$t")
    taskset -c "$CLIENT_CPU" wrk "${WRK_ARGS[@]}" "${URL[$t]}" >"$f"
    after=$(server_ticks "$t")
    res=$(parse "$f")
    read -r rps p50 p99 n errs <<<"$res"
    cpu_us=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
    log "  $rps req/s, p50 $p50 ms, p99 $p99 ms, server CPU $cpu_us µs/req, errors $errs"
    if ((errs > 0)); then
      log "  warning: $errs non-2xx/3xx responses or socket errors (see $f)"
      ERRORS=$((ERRORS + errs))
    fi
    RPS[$t]+="$rps "
    P50[$t]+="$p50 "
    P99[$t]+="$p99 "
    CPU[$t]+="$cpu_us "
  done
done

# Every cache must still be serving hits after the runs.
for t in "${TARGETS[@]}"; do check_hits "$t"; done
if [[ -n ${RPORT:-} ]]; then
  curl -fsS "http://127.0.0.1:$RPORT/v1/stats" >"$OUT/revalidate-stats.json" 2>/dev/null || true
fi

# --- report -------------------------------------------------------------------
declare -A M_RPS M_P50 M_P99 M_CPU
for t in "${TARGETS[@]}"; do
  # shellcheck disable=SC2086 # word splitting intended
  {
    M_RPS[$t]=$(median ${RPS[$t]})
    M_P50[$t]=$(median ${P50[$t]})
    M_P99[$t]=$(median ${P99[$t]})
    M_CPU[$t]=$(median ${CPU[$t]})
  }
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }
fmt_rps() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
fmt_ms() { awk -v v="$1" 'BEGIN { printf "%.3f ms", v }'; }
fmt_us() { awk -v v="$1" 'BEGIN { printf "%.1f µs", v }'; }
runs_list() { # runs_list "V1 V2 …" FORMAT
  awk -v s="$1" -v f="$2" 'BEGIN { n = split(s, a, " "); o = "";
    for (i = 1; i <= n; i++) o = o (i > 1 ? ", " : "") sprintf(f, a[i]); print o }'
}
# run_ratios "A1 A2 …" "B1 B2 …": the range (min–max) of A_i / B_i, run by
# run (run i of each target ran back to back)
run_ratios() {
  awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); split(b, y, " "); lo = ""; hi = "";
    for (i = 1; i <= n; i++) { if (y[i] <= 0) continue; r = x[i] / y[i];
      if (lo == "" || r < lo) lo = r; if (hi == "" || r > hi) hi = r }
    if (lo == "") print "n/a"; else printf "%.2f–%.2f", lo, hi }'
}
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)

{
  echo "### Cached GET of a $(wc -c <"$BODY_FILE")-byte JSON over loopback ($STAMP)"
  echo
  echo "| target | req/s | p50 | p99 | server CPU / req | req/s per run | p99 per run (ms) | CPU per run (µs) |"
  echo "|---|---:|---:|---:|---:|---|---|---|"
  for t in "${TARGETS[@]}"; do
    echo "| ${LABEL[$t]} | $(fmt_rps "${M_RPS[$t]}") | $(fmt_ms "${M_P50[$t]}") | $(fmt_ms "${M_P99[$t]}") |" \
      "$(fmt_us "${M_CPU[$t]}") | $(runs_list "${RPS[$t]}" %.0f) | $(runs_list "${P99[$t]}" %.2f) |" \
      "$(runs_list "${CPU[$t]}" %.1f) |"
  done
  for t in "${TARGETS[@]:1}"; do
    r=revalidate
    echo "| revalidate / $t | $(ratio "${M_RPS[$r]}" "${M_RPS[$t]}") | $(ratio "${M_P50[$r]}" "${M_P50[$t]}") |" \
      "$(ratio "${M_P99[$r]}" "${M_P99[$t]}") | $(ratio "${M_CPU[$r]}" "${M_CPU[$t]}") |" \
      "$(run_ratios "${RPS[$r]}" "${RPS[$t]}") | $(run_ratios "${P99[$r]}" "${P99[$t]}") |" \
      "$(run_ratios "${CPU[$r]}" "${CPU[$t]}") |"
  done
  echo
  echo "Medians of $RUNS runs of \`$WRK_CMD\` per target, targets alternating; the"
  echo "ratio rows' per-run columns are the range of the ratios of runs taken back to back;"
  echo "URL \`/v1/resources/item\` on each (for revalidate / X: req/s above 1 and latency or CPU"
  echo "below 1 favour revalidate). Servers under test and the static nginx upstream pinned to"
  echo "CPU $SERVER_CPU, wrk to CPU $CLIENT_CPU. Server CPU / req: user + system time of the serving"
  echo "process (revalidate; the floor; the nginx worker) during a run, divided by the requests served."
  echo "floor: \`examples/floor\`, the daemon's runtime and accept loop serving the body from memory."
  echo "floor: its axum \`Router\` and one handler; revalidate answers plain cached GETs without its router."
  if [[ -n ${LABEL[before]:-} ]]; then echo "before: the same config as revalidate, another binary."; fi
  echo "nginx: \`worker_processes 1\`, \`proxy_cache_valid 200 $STALENESS\`, \`proxy_cache_use_stale"
  echo "updating error timeout\`, \`proxy_cache_background_update on\`, \`proxy_cache_lock on\`,"
  echo "upstream keepalive, \`keepalive_requests 1000000\`, otherwise nginx defaults (\`sendfile off\`);"
  echo "nginx-ofc adds \`open_file_cache max=64 inactive=60s\`. revalidate: staleness \`$STALENESS\`,"
  echo "\`check_interval = \"1s\"\`, \`RUST_LOG=warn\`. nproc: $(nproc)${CPU_MODEL:+ ($CPU_MODEL)};"
  echo "kernel $(uname -r). Raw output: \`bench/out/http-$STAMP/\`."
  if ((ERRORS > 0)); then
    echo
    echo "**Warning:** $ERRORS non-2xx/3xx responses or socket errors across the runs (see the raw outputs)."
  fi
} | tee "$OUT/summary.md"
