#!/usr/bin/env bash
# Builds the main example, examples/tour, in Release and runs it. Configures with the release preset (as
# scripts/test.sh does, into the same build/release) but builds only the tour's target, example_tour.
# Installs the Debian packages it needs when they are missing. Extra arguments go to the example.
set -euo pipefail

# The program this command runs, relative to the release build directory, and its target
# (examples/CMakeLists.txt).
ATTEND_MAIN_PROGRAM="examples/tour"
ATTEND_MAIN_TARGET="example_tour"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
attend_ensure_deps

cmake --preset release
cmake --build --preset release -j2 --target "${ATTEND_MAIN_TARGET}"

# Run it in a scratch directory of the build tree: it may write files (attention.svg, ...).
run_dir="build/release/run"
mkdir -p "$run_dir"
cd "$run_dir"
echo "attend: running ${ATTEND_MAIN_PROGRAM} in $(pwd)"
"../${ATTEND_MAIN_PROGRAM}" "$@"
