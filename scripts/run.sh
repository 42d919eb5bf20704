#!/usr/bin/env bash
# Builds everything in Release (library, examples, tests, benchmarks) and runs the main example.
# Installs the Debian packages it needs when they are missing. Extra arguments go to the example.
set -euo pipefail

# The program this command runs, relative to the release build directory.
ATTEND_MAIN_PROGRAM="examples/tour"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
attend_ensure_deps

cmake --preset release
cmake --build --preset release -j2

# Run it in a scratch directory of the build tree: it may write files (attention.svg, ...).
run_dir="build/release/run"
mkdir -p "$run_dir"
cd "$run_dir"
echo "attend: running ${ATTEND_MAIN_PROGRAM} in $(pwd)"
"../${ATTEND_MAIN_PROGRAM}" "$@"
