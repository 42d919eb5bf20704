#!/usr/bin/env bash
# Runs every test binary under valgrind memcheck and fails unless each reports zero errors.
#
#   bash scripts/memcheck.sh [test-name-regex]     e.g. bash scripts/memcheck.sh 'bad_input|numerics'
#
# Builds the tests (RelWithDebInfo: -O2 -g, gcc, no examples or benchmarks) into build/memcheck, then runs
# each tests/*_test binary under memcheck, two at a time, with logs in build/memcheck/valgrind/<test>.log.
# Counted as errors: invalid reads and writes, uses of uninitialised values, invalid frees, and definitely lost
# memory. (OpenMP's thread pool is still reachable at exit; that is not a leak.) Valgrind runs code ~30x
# slower, so the property test runs a quarter of its cases here (ATTEND_PROPERTY_SCALE=0.25; the ASan stage runs
# them all). Not part of CI (~10 minutes from scratch on the 2-core machine: ~7 to build, ~3 under valgrind);
# run it before releases and after changes to memory handling.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
attend_ensure_deps valgrind

filter=${1:-.}
build=build/memcheck
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTEND_BUILD_EXAMPLES=OFF \
  -DATTEND_BUILD_BENCHMARKS=OFF -DATTEND_USE_MPI=OFF > "$build.configure.log" 2>&1 \
  || { cat "$build.configure.log"; exit 1; }
cmake --build "$build" -j2

logs="$build/valgrind"
rm -rf "$logs"
mkdir -p "$logs"
tests=()
for t in "$build"/tests/*_test; do
  name=$(basename "$t")
  if [[ "$name" =~ $filter ]]; then tests+=("$name"); fi
done
[ "${#tests[@]}" -gt 0 ] || { echo "memcheck.sh: no test binary matches '$filter'" >&2; exit 1; }

run_one() {
  local build=$1 logs=$2 name=$3 start=$SECONDS rc=0
  ( cd "$build/tests" && ATTEND_PROPERTY_SCALE=${ATTEND_PROPERTY_SCALE:-0.25} valgrind --tool=memcheck \
      --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
      --num-callers=40 --log-file="../valgrind/$name.log" "./$name" > "../valgrind/$name.out" 2>&1 ) || rc=$?
  local errors
  errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$logs/$name.log" | tail -1)
  printf '%-28s %4s errors  exit %-3s %5d s\n' "$name" "${errors:-?}" "$rc" "$((SECONDS - start))"
}
export -f run_one

start=$SECONDS
printf '%s\n' "${tests[@]}" | xargs -P 2 -I{} bash -c 'run_one "$@"' _ "$build" "$logs" {} | tee "$logs/summary.txt"
echo "memcheck: ${#tests[@]} test binaries in $((SECONDS - start)) s; logs in $logs"

# Any binary with errors, a failing test or no summary fails the run.
if awk '$2 != "0" || $5 != "0" { bad = 1 } END { exit bad ? 0 : 1 }' "$logs/summary.txt"; then
  echo "memcheck: FAILED (see the logs above)" >&2
  exit 1
fi
echo "memcheck: zero errors in every test binary"
