#!/usr/bin/env bash
# The engine's benches at two revisions, side by side in one run.
#
#   bench/before-after.sh BASE [HEAD]      # HEAD defaults to the working tree
#
# Builds the `read_path` and `refresh` benches of BASE (in a temporary git
# worktree with its own target dir) and of HEAD, then runs them taking
# turns so that the machine's changing load falls on both alike:
#
# - read_path: raw papaya and revalidate (`get_cached`, coarse clock), at
#   1k and 100k keys, 1 thread, RUNS processes each; prints medians and
#   revalidate / papaya for each revision, and HEAD / BASE.
# - refresh: the criterion `check_tick` group and the pipeline figures,
#   once per revision per round.
#
# Needs nothing but cargo and git. Environment: RUNS (default 7), ROUNDS
# (refresh bench rounds per revision, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

base=${1:?usage: bench/before-after.sh BASE [HEAD]}
head=${2:-}
runs=${RUNS:-7}
rounds=${ROUNDS:-2}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/base" >/dev/null 2>&1 || true; [ -z "$head" ] || git worktree remove --force "$work/head" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

build() { # dir target-dir → the two bench binaries' paths
  local dir=$1 target=$2
  (cd "$dir" && CARGO_TARGET_DIR=$target cargo bench -p revalidate --bench read_path --bench refresh --no-run --message-format=json 2>/dev/null) |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        print(m["target"]["name"], m["executable"])'
}

git worktree add -q --detach "$work/base" "$base"
if [ -n "$head" ]; then
  git worktree add -q --detach "$work/head" "$head"
  head_dir=$work/head
else
  head_dir=$PWD
fi
echo "building $base and ${head:-the working tree} (release, bench profile)…" >&2
declare -A bin
while read -r name exe; do bin[base_$name]=$exe; done < <(build "$work/base" "$work/target-base")
while read -r name exe; do bin[head_$name]=$exe; done < <(build "$head_dir" "${CARGO_TARGET_DIR:-$PWD/target}")
for k in base_read_path head_read_path base_refresh head_refresh; do
  [ -n "${bin[$k]:-}" ] || { echo "no $k bench binary" >&2; exit 1; }
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo
echo "## read path: ns per hit, 1 thread, median of $runs processes (revisions taking turns)"
echo
echo "| keys | papaya ($base) | revalidate ($base) | papaya (${head:-HEAD}) | revalidate (${head:-HEAD}) | revalidate/papaya ($base) | revalidate/papaya (${head:-HEAD}) | ${head:-HEAD} / $base |"
echo "|---|---|---|---|---|---|---|---|"
for n in 1000 100000; do
  declare -A samples=()
  for _ in $(seq "$runs"); do
    for rev in base head; do
      for c in papaya revalidate; do
        samples[$rev-$c]+="$("${bin[${rev}_read_path]}" --one "$c" "$n" 1) "
      done
    done
  done
  declare -A med=()
  for k in "${!samples[@]}"; do med[$k]=$(tr ' ' '\n' <<<"${samples[$k]}" | grep . | median); done
  awk -v n="$n" -v bp="${med[base-papaya]}" -v br="${med[base-revalidate]}" -v hp="${med[head-papaya]}" -v hr="${med[head-revalidate]}" \
    'BEGIN { printf "| %d | %.1f | %.1f | %.1f | %.1f | %.2f× | %.2f× | %.2f× |\n", n, bp, br, hp, hr, br/bp, hr/hp, (hr/hp)/(br/bp) }'
  unset samples med
done

echo
echo "## refresh bench: check tick and pipeline, $rounds rounds per revision (taking turns)"
for round in $(seq "$rounds"); do
  for rev in base head; do
    echo
    echo "### round $round, ${rev/base/$base}${rev/head/}"
    # criterion writes its reports under the working directory's target/; keep them apart.
    (cd "$work" && mkdir -p "crit-$rev" && cd "crit-$rev" && CRITERION_HOME="$PWD" "${bin[${rev}_refresh]}" --bench 2>/dev/null |
      grep -E '^(check_tick/|\|)|time:' | sed 's/^/    /')
  done
done
