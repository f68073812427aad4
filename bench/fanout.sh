#!/usr/bin/env bash
# Fan-out: SUBSCRIBERS `/v1/events` streams on one daemon (clients on
# loopback), one change, and the time from the trigger to its `change` event
# on each stream: p50 / p99 / max per round, medians over ROUNDS. Then the
# cached-read p99 (wrk, one ~1 KB key) without subscribers, with them
# connected and idle, and while changes fan out to them (one a second), all
# in the same run on the same daemon.
#
#   cargo build --release -p revalidate-daemon
#   cargo build --release -p revalidate-daemon --example scale_bench
#   flock /tmp/revalidate-bench.lock bench/fanout.sh
#
# The trigger is POST /v1/invalidate of item.get?id=hot followed by a read
# of it (a stale read starts its refresh at once); the bench upstream's body
# for that key changes at every fetch, so every refresh is a change. The
# clock starts before the invalidate and stops when a stream's bytes with
# `event: change` are read, so the figures include the refresh's round trip
# to the upstream.
#
# Environment (defaults in brackets):
#   SUBSCRIBERS [10000]  ROUNDS [5]  DURATION [10s]  CONNECTIONS [50]
#   SERVER_CPU [0]  CLIENT_CPU [1]
#   REVALIDATE_BIN [target/release/revalidate]
#   SCALE_BENCH_BIN [target/release/examples/scale_bench]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUBSCRIBERS=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BIN=${REVALIDATE_BIN:-$ROOT/target/release/revalidate}
TOOL=${SCALE_BENCH_BIN:-$ROOT/target/release/examples/scale_bench}

BENCH=fanout.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
for c in wrk python3 curl taskset; do
  command -v "$c" >/dev/null || die "missing: $c (apt-get install -y wrk python3 curl util-linux)"
done
[[ -x $BIN ]] || die "missing: $BIN — cargo build --release -p revalidate-daemon"
[[ -x $TOOL ]] || die "missing: $TOOL — cargo build --release -p revalidate-daemon --example scale_bench"

# Each side holds SUBSCRIBERS sockets, plus wrk's and the upstream's.
NEED=$((SUBSCRIBERS + 1024))
ulimit -n "$NEED" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= NEED)) || die "ulimit -n is $(ulimit -n) (hard $(ulimit -Hn)): $NEED needed"

bench_tmp fanout
log "load before: $(uptime)"

taskset -c "$CLIENT_CPU" "$TOOL" upstream >"$TMP/upstream.port" 2>"$TMP/upstream.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $TMP/upstream.port ]] && break; sleep 0.05; done
UPORT=$(head -n1 "$TMP/upstream.port")

# max_connections: the streams, wrk's and some room; the event ring and the
# broadcast channel need no setting (a slow stream is resynchronised).
cat >"$TMP/daemon.toml" <<EOF
[server]
listen = "127.0.0.1:0"
max_connections = $((SUBSCRIBERS + 512))
admin_token_env = "FANOUT_ADMIN_TOKEN"

[upstream]
base_url = "http://127.0.0.1:$UPORT"
probe_interval = "1h"

[refresh]
check_interval = "1s"

[staleness]
item = "1h"

[actions."item.get"]
EOF
FANOUT_ADMIN_TOKEN=fanout-bench RUST_LOG=warn,revalidate=info taskset -c "$SERVER_CPU" \
  "$BIN" serve --config "$TMP/daemon.toml" 2>"$TMP/daemon.log" &
DPID=$!
PIDS+=("$DPID")
addr=""
for ((i = 0; i < 500; i++)); do
  addr=$(grep -o ' on http://[0-9.:]*' "$TMP/daemon.log" | head -n1 | sed 's/ on http:\/\///' || true)
  [[ -n $addr ]] && break
  sleep 0.01
done
[[ -n $addr ]] || die "the daemon did not start"
DURL="http://$addr"
grep -o 'serving at most [0-9]* connections' "$TMP/daemon.log" >&2 || true
curl -fsS -o /dev/null "$DURL/v1/resources/item.get?id=1"

run_wrk() { # -> "p99_ms req/s"
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$DURL/v1/resources/item.get?id=1" >"$TMP/wrk.out"
  grep -q 'Non-2xx' "$TMP/wrk.out" && die "non-2xx answers: $(cat "$TMP/wrk.out")"
  python3 - "$TMP/wrk.out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
print(f"{float(m.group(1)) * {'us': 0.001, 'ms': 1, 's': 1000}[m.group(2)]:.3f} {rps:.0f}")
PY
}

# A warm-up, not counted: the first seconds of a fresh daemon (connections,
# allocator, caches) would otherwise be charged to "no subscribers".
taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d2s "$DURL/v1/resources/item.get?id=1" >/dev/null
read -r base_p99 base_rps < <(run_wrk)
log "reads without subscribers: p99 $base_p99 ms, $base_rps req/s"

# The subscribers; the tool prints {"connected": N} once all are open, then
# waits for a line on stdin before each batch of rounds.
mkfifo "$TMP/go"
taskset -c "$CLIENT_CPU" "$TOOL" fanout "$DURL" "$SUBSCRIBERS" "$ROUNDS" fanout-bench <"$TMP/go" >"$TMP/fanout.out" 2>"$TMP/fanout.log" &
FPID=$!
PIDS+=("$FPID")
exec 3>"$TMP/go"
for ((i = 0; i < 1200; i++)); do
  grep -q connected "$TMP/fanout.out" 2>/dev/null && break
  kill -0 "$FPID" 2>/dev/null || die "the fan-out client stopped: $(cat "$TMP/fanout.log")"
  sleep 0.1
done
grep -q connected "$TMP/fanout.out" || die "the subscribers did not connect"
log "$(cat "$TMP/fanout.log")"
log "daemon RSS with $SUBSCRIBERS streams: $(awk '/VmRSS/ {print $2}' "/proc/$DPID/status") kB"

read -r idle_p99 idle_rps < <(run_wrk)
log "reads with $SUBSCRIBERS idle subscribers: p99 $idle_p99 ms, $idle_rps req/s"

# Rounds alone (the delivery figures), then rounds under wrk.
echo alone >&3
for ((i = 0; i < 600; i++)); do
  (($(grep -c '"round"' "$TMP/fanout.out") >= ROUNDS)) && break
  sleep 0.1
done
(($(grep -c '"round"' "$TMP/fanout.out") >= ROUNDS)) || die "the rounds did not end: $(cat "$TMP/fanout.out")"
echo under-load >&3
read -r busy_p99 busy_rps < <(run_wrk)
for ((i = 0; i < 600; i++)); do
  (($(grep -c '"round"' "$TMP/fanout.out") >= 2 * ROUNDS)) && break
  sleep 0.1
done
exec 3>&-
wait "$FPID" || die "the fan-out client failed: $(cat "$TMP/fanout.log")"
log "reads while changes fan out: p99 $busy_p99 ms, $busy_rps req/s"
log "load after: $(uptime)"
cat "$TMP/fanout.out" >&2

python3 - "$TMP/fanout.out" "$ROUNDS" "$SUBSCRIBERS" "$base_p99" "$base_rps" "$idle_p99" "$idle_rps" "$busy_p99" "$busy_rps" <<'PY'
import json, statistics, sys
out, rounds, subs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base_p99, base_rps, idle_p99, idle_rps, busy_p99, busy_rps = map(float, sys.argv[4:])
rows = [json.loads(l) for l in open(out) if '"round"' in l]
def line(label, rs):
    def col(k):
        v = [r[k] for r in rs]
        return f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})"
    got = min(r["delivered"] for r in rs)
    print(f"| {label} | {len(rs)} | {got:,} of {subs:,} | {col('p50_ms')} | {col('p99_ms')} | {col('max_ms')} |")
print()
print("| one change to every stream | rounds | delivered (worst round) | p50 ms, median (range) | p99 ms | max ms |")
print("|---|---:|---:|---:|---:|---:|")
line("alone", rows[:rounds])
line("under wrk", rows[rounds:])
print()
print("| cached read of one ~1 KB key (wrk) | p99 ms | req/s | p99 vs no subscribers |")
print("|---|---:|---:|---:|")
print(f"| no subscribers | {base_p99:.2f} | {base_rps:,.0f} | 1.00x |")
print(f"| {subs:,} idle subscribers | {idle_p99:.2f} | {idle_rps:,.0f} | {idle_p99 / base_p99:.2f}x |")
print(f"| {subs:,} subscribers, a change a second | {busy_p99:.2f} | {busy_rps:,.0f} | {busy_p99 / base_p99:.2f}x |")
PY
