#!/usr/bin/env bash
# The adoption paths, measured side by side in one run:
#
#   1. a cached ~1 KB value read three ways, with wrk (same daemon, same
#      value, alternating runs):
#        get    GET  /v1/resources/item.get?id=1          (string params)
#        typed  POST /v1/resources/item.get  {"id": 1}     (typed params)
#        app    POST /actions/item.get       {"id": 1}     (the app's own path)
#      medians of req/s and p99, and the ratios typed/get and app/get;
#   2. memory per entry: N shared entries (distinct params) against N
#      per-user entries (one identity each, the same params), each a ~1 KB
#      body, as the growth of the daemon's RSS divided by N.
#
#   bench/adoption.sh
#
# Environment (defaults in brackets):
#   RUNS [5]  DURATION [5s]  CONNECTIONS [50]  ENTRIES [20000]
#   PARTS ["reads memory"]
#   SERVER_CPU [0]  CLIENT_CPU [1]  REVALIDATE_BIN [target/release/revalidate]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-50}
ENTRIES=${ENTRIES:-20000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BIN=${REVALIDATE_BIN:-$ROOT/target/release/revalidate}
PARTS=${PARTS:-reads memory}

BENCH=adoption.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
for c in wrk python3 curl taskset; do
  command -v "$c" >/dev/null || die "missing: $c (apt-get install -y wrk python3 curl util-linux)"
done
[[ -x $BIN ]] || die "missing: $BIN — cargo build --release -p revalidate-daemon"

bench_tmp adoption

# --- an upstream: ~1 KB of JSON for any action; the caller's Authorization
# --- is echoed (a per-user body), never needed to be right.
cat >"$TMP/upstream.py" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

items = [{"id": i, "name": f"process-{i}", "status": "active", "cpu": round(i * 1.7, 1)} for i in range(8)]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One segment per answer, sent at once: headers and body written apart
    # meet delayed ACKs and cost 40 ms a request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def answer(self, params):
        doc = {"params": params, "user": self.headers.get("authorization", ""), "items": items, "pad": ""}
        doc["pad"] = "x" * max(0, 1024 - len(json.dumps(doc, separators=(",", ":"))))
        body = json.dumps(doc, separators=(",", ":")).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b"{}"
        self.answer(json.loads(raw or b"{}"))
    def do_GET(self):
        self.answer(self.path)
    def do_HEAD(self):
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()

s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
python3 -u "$TMP/upstream.py" >"$TMP/upstream.port" 2>"$TMP/upstream.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $TMP/upstream.port ]] && break; sleep 0.1; done
UPORT=$(head -n1 "$TMP/upstream.port")

start_daemon() { # start_daemon NAME: a daemon on a fresh config; sets DPID, DURL
  local name=$1
  cat >"$TMP/$name.toml" <<EOF
[server]
listen = "127.0.0.1:0"
max_queries = 10000000

[upstream]
base_url = "http://127.0.0.1:$UPORT"
probe_interval = "1h"

[refresh]
check_interval = "1h"

[staleness]
item = "1h"
settings = "1h"

[scope]
settings = "user"

[identity]
from = "authorization"

[actions."item.get"]
[actions."settings.get"]
EOF
  RUST_LOG=warn,revalidate=info taskset -c "$SERVER_CPU" "$BIN" serve --config "$TMP/$name.toml" 2>"$TMP/$name.log" &
  DPID=$!
  PIDS+=("$DPID")
  local i addr=""
  for ((i = 0; i < 100; i++)); do
    addr=$(grep -o ' on http://[0-9.:]*' "$TMP/$name.log" | head -n1 | sed 's/ on http:\/\///' || true)
    [[ -n $addr ]] && break
    sleep 0.1
  done
  [[ -n $addr ]] || die "the daemon did not start"
  DURL="http://$addr"
}

# --- 1. the read paths --------------------------------------------------------
if [[ " $PARTS " == *" reads "* ]]; then
start_daemon reads
curl -fsS -o /dev/null "$DURL/v1/resources/item.get?id=1"
curl -fsS -o /dev/null -X POST -d '{"id":1}' "$DURL/v1/resources/item.get"
printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' "'{\"id\":1}'" >"$TMP/post.lua"
[[ $(curl -fsS -D - -o /dev/null -X POST -d '{"id": 1.0}' "$DURL/actions/item.get" | tr -d '\r' | grep -i '^cache-status:') == *"hit"* ]] ||
  die "the app path does not hit the typed read's entry"

run_wrk() { # run_wrk KIND -> "req/s p99_ms"
  local args=(-t1 -c"$CONNECTIONS" -d"$DURATION" --latency)
  case $1 in
  get) args+=("$DURL/v1/resources/item.get?id=1") ;;
  typed) args+=(-s "$TMP/post.lua" "$DURL/v1/resources/item.get") ;;
  app) args+=(-s "$TMP/post.lua" "$DURL/actions/item.get") ;;
  esac
  taskset -c "$CLIENT_CPU" wrk "${args[@]}" >"$TMP/wrk.out"
  grep -q 'Non-2xx' "$TMP/wrk.out" && die "$1: non-2xx answers: $(cat "$TMP/wrk.out")"
  python3 - "$TMP/wrk.out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
print(f"{rps} {p99}")
PY
}

declare -A RPS P99
for ((r = 1; r <= RUNS; r++)); do
  for kind in get typed app; do
    read -r rps p99 < <(run_wrk "$kind")
    RPS[$kind]+="$rps "
    P99[$kind]+="$p99 "
    log "run $r $kind: $rps req/s, p99 $p99 ms"
  done
done

median() { python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))' "$@"; }
echo
echo "| read of a cached ~1 KB value | req/s (median of $RUNS) | p99 ms (median) | req/s vs GET | p99 vs GET |"
echo "|---|---:|---:|---:|---:|"
g_rps=$(median ${RPS[get]})
g_p99=$(median ${P99[get]})
for kind in get typed app; do
  k_rps=$(median ${RPS[$kind]})
  k_p99=$(median ${P99[$kind]})
  python3 -c "
import sys
kind, r, p, gr, gp = sys.argv[1], *map(float, sys.argv[2:])
label = {'get': 'GET /v1/resources/item.get?id=1', 'typed': 'POST /v1/resources/item.get {\"id\":1}', 'app': 'POST /actions/item.get {\"id\":1}'}[kind]
print(f'| {label} | {r:,.0f} | {p:.2f} | {r / gr:.2f}x | {p / gp:.2f}x |')
" "$kind" "$k_rps" "$k_p99" "$g_rps" "$g_p99"
done
kill "$DPID" && wait "$DPID" 2>/dev/null || true
fi

# --- 2. memory per entry ------------------------------------------------------
[[ " $PARTS " == *" memory "* ]] || exit 0
fill() { # fill URL KIND N: N reads that each create one entry
  python3 - "$@" <<'PY'
import http.client, json, sys, urllib.parse
url, kind, n = urllib.parse.urlparse(sys.argv[1]), sys.argv[2], int(sys.argv[3])
import socket
c = http.client.HTTPConnection(url.hostname, url.port)
c.connect()
# Head and body are two writes: without this, Nagle holds the body back.
c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(n):
    if kind == "shared":
        c.request("POST", "/v1/resources/item.get", body=json.dumps({"id": i}))
    elif kind == "oneuser":
        c.request("POST", "/v1/resources/settings.get", body=json.dumps({"id": i}),
                  headers={"Authorization": "Bearer user-token-00000000-0123456789abcdef"})
    else:
        c.request("POST", "/v1/resources/settings.get", body='{"view":"compact"}',
                  headers={"Authorization": f"Bearer user-token-{i:08d}-0123456789abcdef"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

echo
echo "| $ENTRIES entries, ~1 KB bodies | RSS growth | per entry |"
echo "|---|---:|---:|"
for kind in ${MEMORY_KINDS:-shared user}; do
  start_daemon "mem-$kind"
  fill "$DURL" "$kind" 200 # warm up the allocator and the connection
  before=$(rss_kb "$DPID")
  fill "$DURL" "$kind" "$ENTRIES"
  after=$(rss_kb "$DPID")
  queries=$(curl -fsS "$DURL/v1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("queries", "?"))')
  python3 -c "
import sys
kind, b, a, n, q = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
label = {'shared': 'shared (distinct params)', 'user': 'per-user (one identity each, same params)', 'oneuser': 'per-user (one identity, distinct params)'}[kind]
print(f'| {label} ({q} cached) | {(a - b) / 1024:.1f} MiB | {(a - b) * 1024 / n:,.0f} B |')
" "$kind" "$before" "$after" "$ENTRIES" "$queries"
  kill "$DPID" && wait "$DPID" 2>/dev/null || true
done
