#!/usr/bin/env bash
# Instruction counts of one float multi_head_attention call at two commits, under callgrind: an A/B that the
# timing noise of a shared host cannot blur (docs/kernel-notes.md quotes it beside timings).
#
#   bash scripts/icount_ab.sh OLD_REV [NEW_REV]
#
# Exports OLD_REV (and NEW_REV; default: this work tree) with git archive, compiles scripts/icount_driver.cpp
# against each tree's headers (g++ -O3 -march=haswell: valgrind 3.19 decodes no AVX-512, so this counts the
# AVX2/FMA build of the same source) and runs it under `valgrind --tool=callgrind --instr-atstart=no` for each
# shape below, two at a time. Prints a Markdown table: instructions at each commit, new / old, and whether the
# results' bits are equal; then, for a NEW tree with Options::sinks and alibi_slopes, each modifier's
# instructions against the same call without it, and when OLD has them too, each modifier's new / old. Needs
# valgrind (Debian: apt-get install -y valgrind). About 11 minutes on the 2-core development machine (one tree
# with the modifiers), about 18 when both have them. Callgrind counts each byte a `rep stosb` memset stores as one
# instruction (docs/kernel-notes.md), so a change that adds or removes a memset moves these counts far more than
# its time.
set -euo pipefail

old_rev=${1:?usage: icount_ab.sh OLD_REV [NEW_REV]}
new_rev=${2:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/attend-icount.XXXXXX)
trap 'rm -rf "$work"' EXIT
command -v valgrind > /dev/null || { echo "icount_ab.sh: valgrind is not installed" >&2; exit 1; }

# Lq Lk d H G causal: the prefill shapes of attention_bench at L = 1024 (d 64 and 128, MHA, GQA 8/2, MQA), one L
# that is no multiple of a tile, and the two decode shapes of decode_bench (GQA 32/8, d = 128, 16k cache).
shapes=("1024 1024 64 8 8 0" "1024 1024 64 8 8 1" "1024 1024 128 8 8 0" "1024 1024 128 8 8 1"
        "1024 1024 128 8 2 0" "1024 1024 128 8 2 1" "1024 1024 128 8 1 0" "1024 1024 128 8 1 1"
        "1000 1000 64 8 8 1" "1 16384 128 32 8 1" "4 16384 128 32 8 1")
# The shapes whose modifiers (1 sinks, 2 ALiBi, 3 both) are counted against off.
mod_shapes=("1024 1024 64 8 8 1" "1024 1024 128 8 8 0" "1024 1024 128 8 8 1" "1 16384 128 32 8 1")

build() {  # build TAG REV: export REV (empty: the work tree) and compile the driver against it
  local tag=$1 rev=$2 dir=$work/$1 mods=()
  mkdir -p "$dir"
  if [[ -n $rev ]]; then
    git -C "$repo" archive "$rev" include | tar -x -C "$dir"
  else
    cp -r "$repo/include" "$dir/"
  fi
  [[ -f $dir/include/attend/alibi.hpp ]] && mods=(-DATTEND_ICOUNT_MODS)
  g++ -std=c++17 -O3 -march=haswell -DNDEBUG "${mods[@]}" -I"$dir/include" -I/usr/include/eigen3 \
    "$repo/scripts/icount_driver.cpp" -o "$dir/driver"
  [[ ${#mods[@]} -gt 0 ]] && touch "$dir/has_mods"
  return 0
}
build old "$old_rev" &
old_pid=$!
build new "$new_rev" &
new_pid=$!
wait "$old_pid"
wait "$new_pid"

run_one() {  # run_one TAG Lq Lk d H G causal mod: "TAG shape mod instructions hash"
  local tag=$1
  shift
  local out
  out=$work/$tag-$(IFS=_ && echo "$*")
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.cg" "$work/$tag/driver" "$@" \
    > "$out.hash" 2> /dev/null
  echo "$tag|${*:1:6}|$7|$(sed -n 's/^totals: //p' "$out.cg")|$(cat "$out.hash")"
}
export -f run_one
export work
{
  for s in "${shapes[@]}"; do
    echo "old $s 0"
    echo "new $s 0"
  done
  for tag in old new; do
    if [[ -f $work/$tag/has_mods ]]; then
      for s in "${mod_shapes[@]}"; do for m in 1 2 3; do echo "$tag $s $m"; done; done
    fi
  done
} | xargs -P2 -L1 bash -c 'run_one "$@"' _ > "$work/results"

# field COLUMN TAG SHAPE MOD: column 4 (instructions) or 5 (the result's hash) of that run's line of results
field() {
  awk -F'|' -v c="$1" -v t="$2" -v s="$3" -v m="$4" '$1 == t && $2 == s && $3 == m { print $c }' "$work/results"
}
count() { field 4 "$@"; }
hash() { field 5 "$@"; }
echo "Instructions of one call (callgrind, g++ -O3 -march=haswell), ${old_rev} against ${new_rev:-the work tree}"
echo
echo "| Lq Lk d H G causal | old | new | new / old | same bits |"
echo "|---|---:|---:|---:|---|"
for s in "${shapes[@]}"; do
  o=$(count old "$s" 0) n=$(count new "$s" 0)
  same=no
  [[ $(hash old "$s" 0) == "$(hash new "$s" 0)" ]] && same=yes
  echo "| $s | $o | $n | $(awk -v o="$o" -v n="$n" 'BEGIN { printf "%.4f", n / o }') | $same |"
done
if [[ -f $work/new/has_mods ]]; then
  echo
  echo "| Lq Lk d H G causal | off | sinks | vs off | ALiBi | vs off | both | vs off |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for s in "${mod_shapes[@]}"; do
    off=$(count new "$s" 0)
    row="| $s | $off"
    for m in 1 2 3; do
      c=$(count new "$s" "$m")
      row+=" | $c | $(awk -v o="$off" -v n="$c" 'BEGIN { printf "%+.2f%%", 100 * (n / o - 1) }')"
    done
    echo "$row |"
  done
fi
if [[ -f $work/old/has_mods && -f $work/new/has_mods ]]; then
  echo
  echo "Modifiers on, ${old_rev} against ${new_rev:-the work tree} (new / old)"
  echo
  echo "| Lq Lk d H G causal | sinks | ALiBi | both |"
  echo "|---|---:|---:|---:|"
  for s in "${mod_shapes[@]}"; do
    row="| $s"
    for m in 1 2 3; do
      o=$(count old "$s" "$m") n=$(count new "$s" "$m")
      row+=" | $(awk -v o="$o" -v n="$n" 'BEGIN { printf "%.4f", n / o }')"
    done
    echo "$row |"
  done
fi
