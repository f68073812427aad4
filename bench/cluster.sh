#!/usr/bin/env bash
# Several nodes on Redis: three `revalidate serve` processes cooperating
# through one redis-server against three running alone, side by side in
# one run, on a release build. Prints a Markdown table (medians of RUNS
# runs, ranges in brackets) for BENCHMARKS.md's "Several nodes on Redis".
#
#   bench/cluster.sh                 # RUNS=3 SECS=20: about 2 min after the build
#
# The driver is the ignored test `bench_several_nodes` in
# crates/revalidate-daemon/tests/cluster.rs: each run starts its own
# redis-server (free loopback port, temp dir), a counting upstream that
# knows which node asked and when it answered, three nodes with [cluster]
# (a, b, c) and three without (solo-a, solo-b, solo-c), 10 keys with
# staleness 1 s, each read on all six nodes every 100 ms for SECS seconds.
# It measures:
#   - upstream calls per key per 1 s window, with and without [cluster];
#   - the age of the data at read (from the upstream's answer to the read's
#     answer), p50/p99, with and without;
#   - a memory hit over HTTP (sequential GETs from the bench process) on a
#     node with [cluster] and one without, alternating batches of 200;
#   - a Redis hit: the first read on B of a key that A fetched (in Redis, not
#     in B's memory), and the upstream miss on A for scale, 300 keys;
#   - Redis round trips per refresh: the cluster nodes' /v1/cluster
#     round_trips over the run, divided by their upstream calls;
#   - propagation: from the upstream's answer of a new value to the `change`
#     event on each other cluster node's /v1/events, p50/p99.
#
# Environment: RUNS [3], SECS [20]. Needs redis-server (apt-get install
# redis-server); installs nothing. The daemons' logs go to
# bench/out/cluster-<time>/stderr.log, the table to summary.md beside it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v redis-server >/dev/null 2>&1 || {
  echo "bench/cluster.sh: redis-server is missing: apt-get install redis-server" >&2
  exit 1
}
export RUNS=${RUNS:-3} SECS=${SECS:-20}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/out/cluster-$STAMP
mkdir -p "$OUT"
cargo test --release -q -p revalidate-daemon --test cluster --no-run
echo "[cluster.sh] $RUNS runs of $SECS s; logs in $OUT/stderr.log" >&2
cargo test --release -q -p revalidate-daemon --test cluster -- \
  --ignored --exact bench_several_nodes --nocapture --test-threads 1 \
  2>"$OUT/stderr.log" | grep -v '^$' | grep -v '^\.$\|^running \|^test \|^test result' | tee "$OUT/summary.md"
{
  echo
  echo "\`RUNS=$RUNS SECS=$SECS bench/cluster.sh\`; redis-server $(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/'),"
  echo "nproc $(nproc) ($(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)), kernel $(uname -r)."
} | tee -a "$OUT/summary.md"
