#!/usr/bin/env bash
# Readers' tail latency while the daemon refreshes in the background:
# revalidate serving 1,000 cached queries that go stale every second from an
# upstream that takes 20 ms per answer, against the same daemon with
# refreshes off (staleness `never`), measured with wrk in the same run.
#
#   bench/refresh-tail.sh
#
# Both daemons run the same binary and config but for `[staleness] item`
# (1s / never). The upstream (a Python asyncio server written here: it
# sleeps DELAY per answer and answers a ~1 KB JSON that changes every
# second, so every refresh stores a new version) runs pinned with wrk to
# CLIENT_CPU — it stands for another machine; the daemons run pinned to
# SERVER_CPU. Each daemon is warmed with a read of every key (all KEYS
# queries are cached and active), then wrk reads the keys in rotation
# (`/v1/resources/item?id=1` … `?id=KEYS`, a Lua script), RUNS times per
# daemon, alternating (on, off, on, off, …). Prints a Markdown table of the
# medians (req/s, p50, p99, p99.9 is not given by wrk: p99 is the tail
# figure) with each run's figures, the ratio on / off, and the refreshes per
# second the "on" daemon did during its runs (from GET /v1/stats).
#
# Environment (defaults in brackets):
#   RUNS [3]  DURATION [10s]  CONNECTIONS [50]  THREADS [1]  KEYS [1000]
#   DELAY [0.02] (upstream latency, s)  CHECK_INTERVAL [1s]
#   MAX_CONCURRENT [64] (max_concurrent_refreshes: KEYS / s at DELAY needs
#   at least KEYS × DELAY in flight)  SERVER_CPU [0]  CLIENT_CPU [1]
#   REVALIDATE_BIN [target/release/revalidate]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
KEYS=${KEYS:-1000}
DELAY=${DELAY:-0.02}
CHECK_INTERVAL=${CHECK_INTERVAL:-1s}
MAX_CONCURRENT=${MAX_CONCURRENT:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BIN=${REVALIDATE_BIN:-$ROOT/target/release/revalidate}

BENCH=refresh-tail.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

missing=0
for c in wrk taskset curl python3; do
  command -v "$c" >/dev/null 2>&1 || {
    log "missing: $c"
    missing=1
  }
done
[[ -x $BIN ]] || {
  log "missing: $BIN — cargo build --release -p revalidate-daemon"
  missing=1
}
((missing == 0)) || die "prerequisites missing (see above)"

bench_tmp refresh-tail

# --- the upstream: DELAY per answer, a body that changes every second --------
free_port UPORT
cat >"$TMP/upstream.py" <<'PY'
import asyncio, json, sys, time

port, delay = int(sys.argv[1]), float(sys.argv[2])
PAD = "x" * 900

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            if not path.startswith("/health"):
                await asyncio.sleep(delay)
            body = json.dumps({"path": path, "second": int(time.time()), "pad": PAD},
                              separators=(",", ":")).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
taskset -c "$CLIENT_CPU" python3 "$TMP/upstream.py" "$UPORT" "$DELAY" >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$UPORT/health" upstream "$!"

# --- the two daemons ------------------------------------------------------------
declare -A PORT PID
start_daemon() { # start_daemon NAME STALENESS
  local name=$1 port
  free_port port
  cat >"$TMP/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[upstream]
base_url = "http://127.0.0.1:$UPORT"
timeout = "5s"
health_path = "/health"

[refresh]
check_interval = "$CHECK_INTERVAL"
max_concurrent_refreshes = $MAX_CONCURRENT

[staleness]
item = "$2"

[actions."item"]
method = "GET"
EOF
  RUST_LOG=warn taskset -c "$SERVER_CPU" "$BIN" serve --config "$TMP/$name.toml" \
    >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  PID[$name]=$!
  PORT[$name]=$port
  wait_http "http://127.0.0.1:$port/healthz" "$name" "$!"
}
start_daemon on 1s
start_daemon off never

# Warm every key on both (each read of a new key waits for its first fetch).
for t in on off; do
  log "$t: warming $KEYS keys"
  python3 - "${PORT[$t]}" "$KEYS" <<'PY'
import concurrent.futures, sys, urllib.request
port, keys = int(sys.argv[1]), int(sys.argv[2])
def get(i):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/resources/item?id={i}", timeout=10) as r:
        r.read()
        return r.headers.get("Cache-Status", "")
with concurrent.futures.ThreadPoolExecutor(32) as ex:
    list(ex.map(get, range(1, keys + 1)))
status = [get(i) for i in (1, keys)]
assert all("hit" in s for s in status), status
PY
done

cat >"$TMP/rotate.lua" <<EOF
-- Reads /v1/resources/item?id=1 … ?id=$KEYS in turn.
local i = 0
request = function()
  i = i % $KEYS + 1
  return wrk.format("GET", "/v1/resources/item?id=" .. i)
end
EOF

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/out/refresh-tail-$STAMP
mkdir -p "$OUT"
cp "$TMP/on.toml" "$TMP/off.toml" "$TMP/rotate.lua" "$TMP/upstream.py" "$OUT/"

# Let the "on" daemon reach its steady state: every key refreshed at least once.
sleep 3

to_ms() {
  awk -v v="$1" 'BEGIN {
    if (match(v, /^[0-9.]+/) == 0) { print "nan"; exit }
    n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
    if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000; else { print "nan"; exit }
    printf "%.4f\n", n * f
  }'
}
refreshes() { # refreshes NAME: successful refreshes so far
  curl -fsS "http://127.0.0.1:${PORT[$1]}/v1/stats" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["successful_refreshes"])'
}
median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

declare -A RPS P50 P99 RATE
ERRORS=0
for ((run = 1; run <= RUNS; run++)); do
  for t in on off; do
    f=$OUT/$t-run$run.txt
    log "run $run/$RUNS: refreshes $t"
    r0=$(refreshes "$t")
    s0=$(date +%s.%N)
    taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
      -s "$TMP/rotate.lua" "http://127.0.0.1:${PORT[$t]}" >"$f"
    s1=$(date +%s.%N)
    r1=$(refreshes "$t")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
    p50=$(to_ms "$(awk '/Latency Distribution/ { d = 1 } d && $1 == "50%" { print $2; exit }' "$f")")
    p99=$(to_ms "$(awk '/Latency Distribution/ { d = 1 } d && $1 == "99%" { print $2; exit }' "$f")")
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF }
      /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$f")
    ERRORS=$((ERRORS + errs))
    rate=$(awk -v a="$r0" -v b="$r1" -v s="$s0" -v e="$s1" 'BEGIN { printf "%.0f", (b - a) / (e - s) }')
    log "  $rps req/s, p50 $p50 ms, p99 $p99 ms, $rate refreshes/s, errors $errs"
    RPS[$t]+="$rps "
    P50[$t]+="$p50 "
    P99[$t]+="$p99 "
    RATE[$t]+="$rate "
  done
done
curl -fsS "http://127.0.0.1:${PORT[on]}/v1/stats" >"$OUT/on-stats.json" || true

list() { awk -v s="$1" -v f="$2" 'BEGIN { n = split(s, a, " "); o = "";
  for (i = 1; i <= n; i++) o = o (i > 1 ? ", " : "") sprintf(f, a[i]); print o }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'; }
run_ratios() {
  awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); split(b, y, " "); lo = ""; hi = "";
    for (i = 1; i <= n; i++) { if (y[i] <= 0) continue; r = x[i] / y[i];
      if (lo == "" || r < lo) lo = r; if (hi == "" || r > hi) hi = r }
    if (lo == "") print "n/a"; else printf "%.2f–%.2f", lo, hi }'
}
# shellcheck disable=SC2086 # word splitting intended
{
  declare -A M_RPS M_P50 M_P99 M_RATE
  for t in on off; do
    M_RPS[$t]=$(median ${RPS[$t]})
    M_P50[$t]=$(median ${P50[$t]})
    M_P99[$t]=$(median ${P99[$t]})
    M_RATE[$t]=$(median ${RATE[$t]})
  done
}
{
  echo "### Readers' latency with $KEYS queries refreshed every second ($STAMP)"
  echo
  echo "| refreshes | req/s | p50 | p99 | refreshes/s | req/s per run | p99 per run (ms) |"
  echo "|---|---:|---:|---:|---:|---|---|"
  for t in on off; do
    label=$([[ $t == on ]] && echo "on (staleness 1s)" || echo "off (staleness never)")
    printf '| %s | %.0f | %.3f ms | %.3f ms | %s | %s | %s |\n' "$label" "${M_RPS[$t]}" "${M_P50[$t]}" \
      "${M_P99[$t]}" "${M_RATE[$t]}" "$(list "${RPS[$t]}" %.0f)" "$(list "${P99[$t]}" %.2f)"
  done
  echo "| on / off | $(ratio "${M_RPS[on]}" "${M_RPS[off]}") | $(ratio "${M_P50[on]}" "${M_P50[off]}") |" \
    "$(ratio "${M_P99[on]}" "${M_P99[off]}") | | $(run_ratios "${RPS[on]}" "${RPS[off]}") |" \
    "$(run_ratios "${P99[on]}" "${P99[off]}") |"
  echo
  echo "Medians of $RUNS runs of \`taskset -c $CLIENT_CPU wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency"
  echo "-s rotate.lua\` per daemon, alternating (the Lua script reads \`/v1/resources/item?id=1\` …"
  echo "\`?id=$KEYS\` in turn); the ratio row's per-run columns are the range of the ratios of runs"
  echo "taken back to back. Both daemons: the same binary and config (\`check_interval = \"$CHECK_INTERVAL\"\`,"
  echo "\`max_concurrent_refreshes = $MAX_CONCURRENT\`, \`RUST_LOG=warn\`) but \`[staleness] item\`; pinned to"
  echo "CPU $SERVER_CPU. Upstream: a Python asyncio server answering after $(awk -v d="$DELAY" 'BEGIN { print d * 1000 }') ms a ~1 KB JSON"
  echo "that changes every second, pinned with wrk to CPU $CLIENT_CPU. refreshes/s: from \`GET /v1/stats\`"
  echo "during each run. nproc: $(nproc); kernel $(uname -r). Raw output: \`bench/out/refresh-tail-$STAMP/\`."
  if ((ERRORS > 0)); then
    echo
    echo "**Warning:** $ERRORS non-2xx/3xx responses or socket errors across the runs (see the raw outputs)."
  fi
} | tee "$OUT/summary.md"
