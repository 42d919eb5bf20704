#!/usr/bin/env bash
# Checks the sources' formatting (scripts/check_format.sh) and docs/API.md (scripts/check_api_doc.sh), builds
# everything in Release and runs the whole test suite through ctest, then the sanitizer stage
# (scripts/sanitize.sh: ASan + UBSan and TSan builds with clang, in build/asan and build/tsan).
# Installs the Debian packages it needs when they are missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
attend_ensure_deps "${ATTEND_TEST_DEBIAN_PACKAGES[@]}"

# The quick checks first: a formatting slip fails in a second, not after the build.
bash scripts/check_format.sh
bash scripts/check_api_doc.sh

cmake --preset release
cmake --build --preset release -j2
ctest --preset release

# The sanitizer stage (README "Reliability"): the whole suite again under ASan + UBSan (with the fuzzer), and
# the thread-safety tests under TSan. ATTEND_SKIP_SANITIZERS=1 skips it for a quick local run; CI never does.
if [ "${ATTEND_SKIP_SANITIZERS:-0}" != 1 ] || [ "${CI:-}" = true ]; then
  bash scripts/sanitize.sh
fi
