#!/usr/bin/env bash
# The sanitizer stage: builds the test suite with clang under sanitizers and runs it through ctest.
#
#   bash scripts/sanitize.sh            both stages below (what scripts/test.sh and CI run)
#   bash scripts/sanitize.sh --asan     AddressSanitizer + UndefinedBehaviorSanitizer: every unit test and the
#                                       libFuzzer target (fixed number of runs), preset `asan`, build/asan
#   bash scripts/sanitize.sh --tsan     ThreadSanitizer: the thread-safety and parallel tests, preset `tsan`,
#                                       build/tsan (built without OpenMP, see CMakePresets.json)
#   bash scripts/sanitize.sh --tsan-all ThreadSanitizer over the whole suite (slower; not part of CI)
#   --clean                             delete the build directories first (a from-scratch measurement)
#
# Installs what it needs when missing (clang, its sanitizer and libFuzzer runtimes, libomp), as
# scripts/deps.sh does for the normal build. Any sanitizer report fails the test that triggered it
# (-fno-sanitize-recover=all, halt_on_error), so a green run means zero reports.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
attend_ensure_deps clang libclang-rt-14-dev libomp-dev

asan=0 tsan=0 tsan_all=0 clean=0
for arg in "$@"; do
  case "$arg" in
    --asan) asan=1 ;;
    --tsan) tsan=1 ;;
    --tsan-all) tsan=1 tsan_all=1 ;;
    --clean) clean=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "sanitize.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$asan" -eq 0 ] && [ "$tsan" -eq 0 ]; then asan=1 tsan=1; fi

stage() {  # stage NAME PRESET TARGETS [ctest args...]; TARGETS "all" or a space-separated list
  local name=$1 preset=$2 targets=$3 start=$SECONDS
  shift 3
  echo "== sanitize: $name (preset $preset)"
  if [ "$clean" -eq 1 ]; then rm -rf "build/$preset"; fi
  cmake --preset "$preset"
  if [ "$targets" = all ]; then
    cmake --build --preset "$preset" -j2
  else
    # shellcheck disable=SC2086
    cmake --build --preset "$preset" -j2 --target $targets
  fi
  ctest --preset "$preset" "$@"
  echo "== sanitize: $name passed in $((SECONDS - start)) s"
}

if [ "$asan" -eq 1 ]; then
  stage "ASan + UBSan, whole suite and fuzzer" asan all
fi
if [ "$tsan" -eq 1 ]; then
  if [ "$tsan_all" -eq 1 ]; then
    stage "TSan, whole suite" tsan all
  else
    stage "TSan, thread-safety and parallel tests" tsan "thread_safety_test parallel_test" -R '^(ThreadSafety|Parallel)[./]'
  fi
fi
