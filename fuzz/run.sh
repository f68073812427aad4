#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read untrusted input, with
# libFuzzer (cargo-fuzz) and AddressSanitizer:
#
#   fuzz/run.sh            # every target for 20 s (what CI runs)
#   fuzz/run.sh 3600       # every target for an hour (the long run)
#   fuzz/run.sh 600 record # one target
#
# Installs cargo-fuzz when missing. The stable toolchain builds with
# AddressSanitizer when RUSTC_BOOTSTRAP=1 unlocks -Zsanitizer (set here,
# for these builds only). The committed corpus in fuzz/corpus/ seeds every
# run and is not changed; new inputs libFuzzer finds go to
# fuzz/target/new-corpus/TARGET (to keep them: copy them into
# fuzz/corpus/TARGET and minimise with `cargo fuzz cmin TARGET`). A crash leaves its input
# in fuzz/artifacts/TARGET/ and fails the run; replay it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…`.
# Prints one line per target: executions, corpus size, crashes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:-20}
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build --sanitizer address -O
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "target/new-corpus/$t"
  log=$(mktemp)
  if cargo fuzz run --sanitizer address -O "$t" "target/new-corpus/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
  corpus=$(find "corpus/$t" -type f | wc -l)
  found=$(find "target/new-corpus/$t" -type f | wc -l)
  printf '%-16s %s: %s executions in %ss; corpus %s inputs, %s new\n' "$t" "$result" "$runs" "$seconds" "$corpus" "$found"
  if [ "$result" = CRASH ]; then
    grep -E 'panicked|ERROR|SUMMARY' -A6 "$log" | head -30
  fi
  rm -f "$log"
done
exit "$status"
