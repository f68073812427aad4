#!/usr/bin/env bash
# The daemon at 10k → 100k → 1M cached queries of ~1 KB each, one fresh
# daemon (and store) per size:
#
#   fill       N distinct reads through the daemon (each a miss, a fetch from
#              the bench upstream and a new entry; no shortcut), req/s
#   RSS/query  (VmRSS after the fill − VmRSS of the same daemon empty) / N,
#              twice: at the end of the fill, and settled (once the
#              write-behind has flushed all N, the lowest of 25 one-second
#              samples: jemalloc returns freed pages after ~10 s); and the
#              marginal cost, the settled RSS's growth from the previous
#              size divided by the queries added (what one more query costs,
#              without the fixed costs: redb's page cache, the runtime)
#   read p99   wrk over random keys of the N, against one hot key (same run)
#   listing    GET /v1/queries?limit=100 (first page and a later one)
#   /v1/stats  its latency (its active count is kept by the engine, no pass)
#   live tick  /v1/stats live.last_build_us with a /v1/live stream open
#   store      the redb file's size after the daemon stopped (and flushed)
#   hydrate    a restart on that store: from exec to listening, and the log's
#              "restored N queries"; then a random key must be a hit
#
#   cargo build --release -p revalidate-daemon
#   cargo build --release -p revalidate-daemon --example scale_bench
#   flock /tmp/revalidate-bench.lock bench/scale.sh
#
# Environment (defaults in brackets):
#   SIZES ["10000 100000 1000000"]  RUNS [3]  DURATION [5s]  CONNECTIONS [50]
#   FILL_CONCURRENCY [64]  SERVER_CPU [0]  CLIENT_CPU [1]
#   REVALIDATE_BIN [target/release/revalidate]
#   SCALE_BENCH_BIN [target/release/examples/scale_bench]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZES=${SIZES:-10000 100000 1000000}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-50}
FILL_CONCURRENCY=${FILL_CONCURRENCY:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BIN=${REVALIDATE_BIN:-$ROOT/target/release/revalidate}
TOOL=${SCALE_BENCH_BIN:-$ROOT/target/release/examples/scale_bench}

BENCH=scale.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
for c in wrk python3 curl taskset; do
  command -v "$c" >/dev/null || die "missing: $c (apt-get install -y wrk python3 curl util-linux)"
done
[[ -x $BIN ]] || die "missing: $BIN — cargo build --release -p revalidate-daemon"
[[ -x $TOOL ]] || die "missing: $TOOL — cargo build --release -p revalidate-daemon --example scale_bench"

bench_tmp scale
log "load before: $(uptime)"

taskset -c "$CLIENT_CPU" "$TOOL" upstream >"$TMP/upstream.port" 2>"$TMP/upstream.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $TMP/upstream.port ]] && break; sleep 0.05; done
UPORT=$(head -n1 "$TMP/upstream.port")

cat >"$TMP/daemon.toml" <<EOF
[server]
listen = "127.0.0.1:0"
max_queries = 10000000

[upstream]
base_url = "http://127.0.0.1:$UPORT"
probe_interval = "1h"

[refresh]
check_interval = "1s"

[staleness]
item = "1h"

[store]
path = "$TMP/store.db"

[actions."item.get"]
EOF

ms_now() { date +%s%3N; }
start_daemon() { # start_daemon NAME: sets DPID, DURL, STARTED_MS, LISTEN_MS
  local name=$1 i addr=""
  STARTED_MS=$(ms_now)
  RUST_LOG=warn,revalidate=info taskset -c "$SERVER_CPU" "$BIN" serve --config "$TMP/daemon.toml" 2>"$TMP/$name.log" &
  DPID=$!
  PIDS+=("$DPID")
  for ((i = 0; i < 6000; i++)); do
    addr=$(grep -o ' on http://[0-9.:]*' "$TMP/$name.log" | head -n1 | sed 's/ on http:\/\///' || true)
    [[ -n $addr ]] && break
    sleep 0.01
  done
  [[ -n $addr ]] || die "the daemon did not start"
  LISTEN_MS=$(ms_now)
  DURL="http://$addr"
}
stop_daemon() {
  kill -TERM "$DPID"
  wait "$DPID" 2>/dev/null || true
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
settled_rss_kb() { # settled_rss_kb PID N: the lowest RSS of 25 s, once all N are flushed
  local pid=$1 n=$2 low deadline=$((SECONDS + 300)) r
  until [[ $(stat_of "int(d['store']['written'] >= $n and d['store']['pending'] == 0)") == 1 ]]; do
    ((SECONDS < deadline)) || die "the write-behind did not flush $n queries"
    sleep 0.5
  done
  low=$(rss_kb "$pid")
  for ((i = 0; i < 25; i++)); do
    sleep 1
    r=$(rss_kb "$pid")
    ((r < low)) && low=$r
  done
  echo "$low"
}
median() { python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))' "$@"; }
range() { python3 -c 'import sys; v=sorted(map(float, sys.argv[1:])); print(f"{v[0]:g}–{v[-1]:g}")' "$@"; }
stat_of() { curl -fsS "$DURL/v1/stats" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

run_wrk() { # run_wrk SCRIPT -> p99 ms; dies on non-2xx
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$1" "$DURL" >"$TMP/wrk.out"
  grep -q 'Non-2xx' "$TMP/wrk.out" && die "non-2xx answers: $(cat "$TMP/wrk.out")"
  python3 - "$TMP/wrk.out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
print(f"{float(m.group(1)) * {'us': 0.001, 'ms': 1, 's': 1000}[m.group(2)]:.3f} {rps:.0f}")
PY
}
curl_ms() { # curl_ms URL [REPEAT] -> median ms of time_total
  local url=$1 n=${2:-9} t=()
  for ((i = 0; i < n; i++)); do t+=("$(curl -fsS -o /dev/null -w '%{time_total}' "$url")"); done
  python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])) * 1000:.2f}")' "${t[@]}"
}

ROWS=()
for N in $SIZES; do
  rm -f "$TMP/store.db"
  start_daemon "fill-$N"
  sleep 1 # the empty daemon's baseline, after its start-up allocations
  empty=$(rss_kb "$DPID")
  read -r fill_json < <(taskset -c "$CLIENT_CPU" "$TOOL" fill "$DURL" 0 "$N" "$FILL_CONCURRENCY")
  log "N=$N fill: $fill_json"
  fill_rate=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); assert d['failed']==0, d; print(d['per_second'])" "$fill_json")
  queries=$(stat_of 'd["queries"]')
  [[ $queries == "$N" ]] || die "N=$N: $queries cached after the fill"
  full=$(rss_kb "$DPID")
  per_query=$(((full - empty) * 1024 / N))
  settled=$(settled_rss_kb "$DPID" "$N")
  settled_per_query=$(((settled - empty) * 1024 / N))
  if [[ -n ${prev_n:-} ]]; then
    marginal=$(((settled - prev_settled) * 1024 / (N - prev_n)))
  else
    marginal=-
  fi
  prev_n=$N prev_settled=$settled
  log "N=$N RSS empty ${empty} kB, end of fill ${full} kB ($per_query B/query), settled ${settled} kB ($settled_per_query B/query), marginal $marginal B/query"

  # Reads: random keys of the N against one hot key, alternating, same daemon.
  cat >"$TMP/random.lua" <<EOF
math.randomseed(42)
request = function()
  return wrk.format("GET", "/v1/resources/item.get?id=" .. math.random(0, $((N - 1))))
end
EOF
  printf 'request = function() return wrk.format("GET", "/v1/resources/item.get?id=0") end\n' >"$TMP/hot.lua"
  misses_before=$(stat_of 'd["cache"]["misses"]')
  rand_p99=() hot_p99=() rand_rps=()
  for ((r = 1; r <= RUNS; r++)); do
    read -r p rps < <(run_wrk "$TMP/random.lua")
    rand_p99+=("$p") rand_rps+=("$rps")
    read -r p _ < <(run_wrk "$TMP/hot.lua")
    hot_p99+=("$p")
  done
  misses_after=$(stat_of 'd["cache"]["misses"]')
  [[ $misses_before == "$misses_after" ]] || die "N=$N: reads missed ($misses_before → $misses_after)"
  log "N=$N read p99 random ${rand_p99[*]} ms (req/s ${rand_rps[*]}), hot ${hot_p99[*]} ms"

  # The listing, a page at a time, and /v1/stats.
  first_ms=$(curl_ms "$DURL/v1/queries?limit=100")
  next=$(curl -fsS "$DURL/v1/queries?limit=100" | python3 -c 'import json,sys; print(json.load(sys.stdin)["next"])')
  later_ms=$(curl_ms "$DURL/v1/queries?limit=100&after=$next")
  max_ms=$(curl_ms "$DURL/v1/queries?limit=1000" 5)
  stats_ms=$(curl_ms "$DURL/v1/stats")
  # The live tick, built once a second while a stream is open.
  curl -fsSN "$DURL/v1/live" >/dev/null 2>&1 &
  live=$!
  PIDS+=("$live")
  ticks=()
  built0=$(stat_of 'd["live"]["ticks_built"]')
  for ((i = 0; i < 60 && ${#ticks[@]} < 7; i++)); do
    sleep 0.5
    read -r built us < <(stat_of 'd["live"]["ticks_built"], d["live"]["last_build_us"]' | tr -d '(),')
    if ((built > built0)); then
      ticks+=("$us")
      built0=$built
    fi
  done
  kill "$live" 2>/dev/null || true
  tick_us=$(median "${ticks[@]}")
  log "N=$N /v1/queries first ${first_ms} ms, later ${later_ms} ms, limit=1000 ${max_ms} ms; /v1/stats ${stats_ms} ms; live tick ${ticks[*]} us"

  # Stop (the store is flushed on the way out), then restart on it.
  stop_start=$(ms_now)
  stop_daemon
  stop_ms=$(($(ms_now) - stop_start))
  store_bytes=$(stat -c %s "$TMP/store.db")
  start_daemon "hydrate-$N"
  hydrate_ms=$((LISTEN_MS - STARTED_MS))
  restored=$(grep -o 'restored [0-9]* queries' "$TMP/hydrate-$N.log" | head -n1)
  [[ $restored == "restored $N queries" ]] || die "N=$N: the log says '$restored'"
  key=$((RANDOM * 32768 + RANDOM))
  key=$((key % N))
  status=$(curl -fsS -D - -o /dev/null "$DURL/v1/resources/item.get?id=$key" | tr -d '\r' | awk -F': ' 'tolower($1) == "cache-status" {print $2}')
  [[ $status == *hit* ]] || die "N=$N: id=$key after the restart: cache-status '$status'"
  hydrated_rss=$(rss_kb "$DPID")
  log "N=$N stop+flush ${stop_ms} ms, store ${store_bytes} B, hydrate ${hydrate_ms} ms, RSS after hydrate ${hydrated_rss} kB"
  stop_daemon
  rm -f "$TMP/store.db"

  ROWS+=("$(python3 - "$N" "$fill_rate" "$per_query" "$settled_per_query" "$marginal" "$(median "${rand_p99[@]}")" "$(range "${rand_p99[@]}")" \
    "$(median "${hot_p99[@]}")" "$first_ms" "$later_ms" "$max_ms" "$stats_ms" "$tick_us" "$(range "${ticks[@]}")" \
    "$store_bytes" "$hydrate_ms" "$hydrated_rss" "$empty" <<'PY'
import sys
(n, fill, per, settled, marginal, rp99, rrange, hp99, first, later, mx, stats, tick, trange, store, hyd, hrss, empty) = sys.argv[1:]
n = int(n)
marginal = "–" if marginal == "-" else f"{int(marginal):,} B"
print(f"| {n:,} | {float(fill):,.0f} | {int(per):,} B / {int(settled):,} B | {marginal} | {float(rp99):.2f} ({rrange}) | {float(hp99):.2f} | "
      f"{float(first):.1f} / {float(later):.1f} / {float(mx):.1f} | {float(stats):.1f} | {float(tick) / 1000:.2f} ({trange} µs) | "
      f"{int(store) / 2**20:,.0f} MiB ({int(store) / n:,.0f} B/query) | {int(hyd) / 1000:.2f} s | {(int(hrss) - int(empty)) * 1024 / n:,.0f} B |")
PY
)")
done

log "load after: $(uptime)"
echo
echo "| queries | fill req/s | RSS/query: end of fill / settled (target 1,836 B) | marginal RSS/query | read p99 ms, random keys (range of $RUNS) | read p99 ms, one hot key | /v1/queries ms: limit=100 first / later / limit=1000 | /v1/stats ms | /v1/live tick build ms (range) | store file | hydrate (exec → listening) | RSS/query after hydrate |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
