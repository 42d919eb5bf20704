#!/usr/bin/env bash
# Builds everything in Release and runs the whole test suite through ctest.
# Installs the Debian packages it needs when they are missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
attend_ensure_deps "${ATTEND_TEST_DEBIAN_PACKAGES[@]}"

cmake --preset release
cmake --build --preset release -j2
ctest --preset release
