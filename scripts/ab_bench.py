#!/usr/bin/env python3
"""A/B timing of two builds of one benchmark program: which benchmarks got slower between two commits.

Usage (from the repository root; OLD is a tree exported from the older commit and built beside this one):

    git archive <old-commit> | tar -x -C /tmp/ab_old
    cmake -S /tmp/ab_old -B /tmp/ab_old/build -DCMAKE_BUILD_TYPE=Release \
        -DATTEND_BUILD_TESTS=OFF -DATTEND_BUILD_EXAMPLES=OFF -DATTEND_USE_MPI=OFF
    cmake --build /tmp/ab_old/build -j2 --target attention_bench
    cmake --build build/release -j2 --target attention_bench
    /usr/bin/python3 scripts/ab_bench.py /tmp/ab_old/build/bench/attention_bench \
        build/release/bench/attention_bench --filter 'attend_prefill/L:(1024|4096)/' --rounds 5

The two programs run in alternating rounds (old, new, old, new, ...; the order within a pair alternates too),
each round one pass of --benchmark_filter with --benchmark_min_time, so a host whose speed drifts over minutes
puts the drift into both columns rather than into their ratio. The table gives, per benchmark present in both,
the median and the smallest real time of each program over its rounds, new / old of both, and the spread
(largest minus smallest over the median) of each, so that a ratio can be read against the noise. On a shared host
whose neighbours only ever slow a run down, the smallest time is the steadier estimate of what the code costs.
Benchmarks only one program has are listed with that program's columns alone (--new-filter adds benchmarks to the
new program's runs, e.g. the modifiers on, whose ratios to the modifiers off come from the same rounds). Each run
goes through bench_report.py's run_program(), and rows a program skipped with an error are left out, as there.

Options:
  old, new         the two benchmark binaries
  --filter REGEX   --benchmark_filter of both programs
  --new-filter R   a wider --benchmark_filter for the new program (default: --filter)
  --rounds N       rounds per program (default 5)
  --min-time S     --benchmark_min_time of each run in seconds (default 0.5)
  --threads N      OMP_NUM_THREADS (default 1)
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

from bench_report import TO_MS, run_program  # scripts/ is on the path: it holds this script


def run(binary, bench_filter, min_time, threads, json_path):
    """One pass of `binary` over `bench_filter`: {benchmark name: real time in ms}."""
    run_program(binary, threads, [f"--benchmark_filter={bench_filter}", f"--benchmark_min_time={min_time}"],
                json_path)
    with open(json_path) as f:
        data = json.load(f)
    return {b["name"]: b["real_time"] * TO_MS[b.get("time_unit", "ns")] for b in data["benchmarks"]
            if b.get("run_type", "iteration") == "iteration" and not b.get("error_occurred")}


def spread(times):
    return (max(times) - min(times)) / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--filter", required=True)
    parser.add_argument("--new-filter")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    new_filter = args.new_filter or args.filter

    old, new = {}, {}
    with tempfile.TemporaryDirectory() as json_dir:
        json_path = os.path.join(json_dir, "run.json")
        for r in range(args.rounds):
            order = [("old", args.old, args.filter, old), ("new", args.new, new_filter, new)]
            if r % 2:
                order.reverse()
            for label, binary, bench_filter, times in order:
                print(f"round {r + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
                for name, ms in run(binary, bench_filter, args.min_time, args.threads, json_path).items():
                    times.setdefault(name, []).append(ms)

    print(f"{args.rounds} alternating rounds, OMP_NUM_THREADS={args.threads}, "
          f"--benchmark_min_time={args.min_time}; real time in ms\n")
    print("| benchmark | old median | new median | new / old (medians) | old min | new min | new / old (mins) "
          "| old spread | new spread |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in list(old) + [n for n in new if n not in old]:
        o, n = old.get(name), new.get(name)
        cells = [f"{statistics.median(o):.4g}" if o else "", f"{statistics.median(n):.4g}" if n else "",
                 f"{statistics.median(n) / statistics.median(o):.3f}" if o and n else "",
                 f"{min(o):.4g}" if o else "", f"{min(n):.4g}" if n else "",
                 f"{min(n) / min(o):.3f}" if o and n else "",
                 f"{spread(o):.0%}" if o else "", f"{spread(n):.0%}" if n else ""]
        print(f"| `{name.removesuffix('/real_time')}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
