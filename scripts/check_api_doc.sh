#!/usr/bin/env bash
# docs/API.md is a copy of the project's shared contract, ../shared/API.md next to the repository. When that
# file exists (a developer's checkout; not a clean clone such as CI's), the copy must be byte for byte the
# same. scripts/test.sh runs this before building; run it alone with
#   bash scripts/check_api_doc.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
shared=../shared/API.md
if [ ! -f "$shared" ]; then
  echo "check_api_doc: no $shared next to the repository; not comparing docs/API.md"
  exit 0
fi
if ! cmp "$shared" docs/API.md; then
  echo "check_api_doc: FAILED: docs/API.md differs from $(cd "$(dirname "$shared")" && pwd -P)/API.md." >&2
  echo "check_api_doc: the shared contract is the original; copy it: cp $shared docs/API.md" >&2
  exit 1
fi
echo "check_api_doc: docs/API.md is the same as $shared"
