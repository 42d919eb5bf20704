#!/usr/bin/env bash
# Checks that every C++ source (*.cpp, *.hpp) is formatted as .clang-format says, with Debian's clang-format
# (bookworm: clang-format 14), and fails naming the files that are not. scripts/test.sh (and so CI) runs it
# before building; run it alone with
#   bash scripts/check_format.sh
# The files are those git tracks when this is a git checkout, else every *.cpp/*.hpp outside build/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd -P)

clang_format=${CLANG_FORMAT:-clang-format}
if ! command -v "$clang_format" >/dev/null 2>&1; then
  echo "check_format: $clang_format not found (Debian: apt-get install clang-format)" >&2
  exit 1
fi

files=()
if [ "$(git rev-parse --show-toplevel 2>/dev/null || true)" = "$root" ]; then
  while IFS= read -r f; do
    [ -f "$f" ] && files+=("$f")
  done < <(git ls-files -- '*.cpp' '*.hpp')
else
  while IFS= read -r f; do
    files+=("${f#./}")
  done < <(find . \( -path ./build -o -path ./.git \) -prune -o -type f \( -name '*.cpp' -o -name '*.hpp' \) -print \
             | LC_ALL=C sort)
fi
if [ "${#files[@]}" -eq 0 ]; then
  echo "check_format: no *.cpp or *.hpp files found in $root" >&2
  exit 1
fi

if ! out=$("$clang_format" --dry-run -Werror "${files[@]}" 2>&1); then
  mapfile -t bad < <(printf '%s\n' "$out" | sed -n 's/^\(.*\):[0-9]*:[0-9]*: error: .*/\1/p' | LC_ALL=C sort -u)
  printf '%s\n' "$out" | head -n 60 >&2
  echo >&2
  if [ "${#bad[@]}" -gt 0 ]; then
    echo "check_format: FAILED: ${#bad[@]} file(s) not formatted as .clang-format says:" >&2
    printf '  %s\n' "${bad[@]}" >&2
    echo "check_format: fix them with" >&2
    echo "  clang-format -i ${bad[*]}" >&2
  else
    echo "check_format: FAILED: $clang_format reported an error (above)" >&2
  fi
  exit 1
fi
echo "check_format: ${#files[@]} files formatted as .clang-format says ($("$clang_format" --version | sed 's/^ *//'))"
