# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run): log lines, a temp dir
# whose processes are stopped on every exit, free loopback ports, and
# waiting for a server to answer.
#
#   BENCH=name.sh
#   source "$ROOT/bench/lib.sh"
#   bench_tmp name          # TMP, PIDS, and the clean-up on exit
#
# Processes the script starts go into PIDS; on exit each is sent TERM (and
# KILL if it is still there 5 s later, with its direct children, e.g.
# nginx's workers), and on a failure the tails of the logs in TMP are
# printed before TMP is removed.

log() { printf '[%s] %s\n' "${BENCH:-bench}" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

bench_tmp() { # bench_tmp NAME
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/revalidate-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

stop_pid() { # stop_pid PID: TERM, wait up to 5 s, then KILL (children too)
  local pid=$1 kids i
  kill -0 "$pid" 2>/dev/null || return 0
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop on TERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  for i in $kids; do
    kill -KILL "$i" 2>/dev/null || true
  done
}

bench_cleanup() {
  local rc=$? i f
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[i]}"
  done
  if ((rc != 0)); then
    for f in "$TMP"/*.log "$TMP"/*/*.log; do
      [[ -s $f ]] || continue
      log "---- tail of $f"
      tail -n 20 "$f" >&2 || true
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}

USED_PORTS=" "
free_port() { # free_port VAR: a free loopback port into VAR, never one twice
  # (Not `port=$(free_port)`: the subshell would forget the ports it gave.)
  local p
  while :; do
    p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    [[ $USED_PORTS == *" $p "* ]] || break
  done
  USED_PORTS+="$p "
  printf -v "$1" '%s' "$p"
}

wait_http() { # wait_http URL NAME PID: until URL answers 2xx, at most 10 s
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$3" 2>/dev/null || die "$2 exited during startup"
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$2 did not answer $1 within 10 s"
}
