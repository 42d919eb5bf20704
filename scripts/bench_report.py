#!/usr/bin/env python3
"""Runs attend's benchmarks and turns their Google Benchmark JSON into docs/benchmarks.md and a plot.

Usage (from the repository root, on a quiet machine):

    cmake --preset release
    cmake --build --preset release -j2 --target attention_bench decode_bench latent_bench
    /usr/bin/python3 scripts/bench_report.py build/release

The plot needs Debian's matplotlib (apt-get install -y python3-matplotlib), hence /usr/bin/python3. The full
run takes about 8 minutes on the 2-core development machine (about 4 at one thread, 3 at two, and the
peak-memory run); the naive baseline at L = 8192 alone is ~3 s per repetition at one thread.

Every program in BUILD_DIR/bench (attention_bench, decode_bench, latent_bench) runs once per thread count with
OMP_NUM_THREADS set (default 1 and 2) and

    --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_min_time=0.5
    --benchmark_out=JSON_DIR/<program>-t<threads>.json --benchmark_out_format=json

and the report uses the medians of the repetitions. The peak-memory measurement (prefill L = 16384, H = 8,
d = 64) runs in a process of its own (attention_bench --attend_peak_memory, 2 threads, one iteration) so that
nothing measured before it inflates the peak. The raw JSON and a meta.json (machine, compiler, flags, commit,
command) stay in JSON_DIR; --from-json re-renders the same report from them without running anything.

Options:
  build_dir            build tree with bench/attention_bench, ... (default build/release)
  --threads 1,2        OMP_NUM_THREADS values
  --repetitions N      repetitions per benchmark (default 3; the median is reported)
  --min-time S         --benchmark_min_time per repetition in seconds (default 0.5)
  --filter REGEX       --benchmark_filter for every program: a subset, for testing
  --quick              a small subset, 1 repetition, min time 0.05 s, peak memory at L = 4096 (tests the
                       script; its numbers mean little)
  --peak-memory-L L    sequence length of the peak-memory run (default 16384; 0 skips it)
  --json-dir DIR       where the JSON goes (default BUILD_DIR/bench-json)
  --from-json DIR      render from an earlier run's JSON_DIR instead of running
  --markdown PATH      output Markdown (default docs/benchmarks.md)
  --plot PATH          output plot, .svg or .png (default docs/benchmarks.svg); --no-plot skips it

The layout of the report is fixed by this script; only the numbers come from the run.
"""

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time

PROGRAMS = ["attention_bench", "decode_bench", "latent_bench"]
QUICK_FILTER = ("L:1024/d:64/H:8/G:8|L:1024/d:128/H:8/G:2/causal:1|sgemm/M:1024/|"
                "decode/S:4096/Lq:1/|triad|read|/S:1024/")
REF_SGEMM = "sgemm/M:1024/K:1024/N:1024/real_time"
TRIAD = "triad/MiB:64/real_time"
READ = "read/MiB:128/real_time"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------------------

def capture(cmd, cwd=None):
    try:
        return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def read_cmake_cache(build_dir):
    cache = {}
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            for line in f:
                m = re.match(r"^([A-Za-z0-9_]+):[A-Z]+=(.*)$", line.rstrip("\n"))
                if m:
                    cache[m.group(1)] = m.group(2)
    except OSError:
        pass
    return cache


def bench_flags(build_dir, cache):
    """The exact compile flags of attention_bench (Makefile generators), else what CMakeCache says."""
    flags_make = os.path.join(build_dir, "bench", "CMakeFiles", "attention_bench.dir", "flags.make")
    try:
        with open(flags_make) as f:
            text = f.read()
        flags = re.search(r"^CXX_FLAGS = (.*)$", text, re.M)
        defines = re.search(r"^CXX_DEFINES = (.*)$", text, re.M)
        out = flags.group(1).strip() if flags else ""
        if defines and defines.group(1).strip():
            out += " " + defines.group(1).strip()
        if out:
            return out
    except OSError:
        pass
    build_type = cache.get("CMAKE_BUILD_TYPE", "")
    parts = [cache.get("CMAKE_CXX_FLAGS", ""), cache.get("CMAKE_CXX_FLAGS_" + build_type.upper(), ""),
             "-O3 -march=native", cache.get("OpenMP_CXX_FLAGS", "")]
    return " ".join(p for p in parts if p)


def machine_meta(build_dir, command):
    lscpu = capture(["lscpu"])
    info = {}
    for line in lscpu.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    flags = info.get("Flags", "").split()
    cache = read_cmake_cache(build_dir)
    cxx = cache.get("CMAKE_CXX_COMPILER", "c++")
    git = capture(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT).strip()
    dirty = capture(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT).strip()
    return {
        "cpu_model": info.get("Model name", "unknown"),
        "cpus": info.get("CPU(s)", "?"),
        "cores_per_socket": info.get("Core(s) per socket", "?"),
        "threads_per_core": info.get("Thread(s) per core", "?"),
        "sockets": info.get("Socket(s)", "?"),
        "l1d": info.get("L1d cache", "?"),
        "l2": info.get("L2 cache", "?"),
        "l3": info.get("L3 cache", "?"),
        "hypervisor": info.get("Hypervisor vendor", ""),
        "avx512": sorted(f for f in flags if f.startswith("avx512")),
        "kernel": capture(["uname", "-sr"]).strip(),
        "compiler": (capture([cxx, "--version"]).splitlines() or ["unknown"])[0],
        "build_type": cache.get("CMAKE_BUILD_TYPE", "?"),
        "flags": bench_flags(build_dir, cache),
        "commit": (git + (" (with uncommitted changes)" if dirty else "")) if git else "unknown",
        "command": command,
    }


def run_program(path, threads, args, json_path, extra_env=None):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    if extra_env:
        env.update(extra_env)
    cmd = [path] + args + ["--benchmark_out=" + json_path, "--benchmark_out_format=json"]
    print("+ OMP_NUM_THREADS=%d %s" % (threads, " ".join(shlex.quote(c) for c in cmd)), file=sys.stderr, flush=True)
    if os.path.exists(json_path):
        os.remove(json_path)
    # Google Benchmark's console table goes to our stderr as progress.
    result = subprocess.run(cmd, env=env, stdout=sys.stderr)
    if result.returncode != 0:
        sys.exit("bench_report: %s failed with exit code %d" % (path, result.returncode))


def run_all(opts, json_dir):
    bench_dir = os.path.join(opts.build_dir, "bench")
    for prog in PROGRAMS:
        if not os.access(os.path.join(bench_dir, prog), os.X_OK):
            sys.exit("bench_report: %s not found in %s; build it first:\n"
                     "  cmake --build --preset release -j2 --target %s"
                     % (prog, bench_dir, " ".join(PROGRAMS)))
    os.makedirs(json_dir, exist_ok=True)
    for name in os.listdir(json_dir):
        if name.endswith(".json"):
            os.remove(os.path.join(json_dir, name))
    command = "/usr/bin/python3 scripts/bench_report.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = machine_meta(opts.build_dir, command)
    meta["threads"] = opts.threads
    meta["repetitions"] = opts.repetitions
    meta["min_time"] = opts.min_time
    meta["filter"] = opts.filter
    started = time.time()
    common = ["--benchmark_repetitions=%d" % opts.repetitions, "--benchmark_min_time=%g" % opts.min_time]
    if opts.repetitions > 1:
        common.append("--benchmark_report_aggregates_only=true")
    if opts.filter:
        common.append("--benchmark_filter=" + opts.filter)
    for threads in opts.threads:
        for prog in PROGRAMS:
            run_program(os.path.join(bench_dir, prog), threads, common,
                        os.path.join(json_dir, "%s-t%d.json" % (prog, threads)))
    if opts.peak_memory_L > 0:
        threads = max(opts.threads)
        run_program(os.path.join(bench_dir, "attention_bench"), threads,
                    ["--attend_peak_memory=%d" % opts.peak_memory_L, "--benchmark_filter=^attend_peak_memory/"],
                    os.path.join(json_dir, "peak-memory.json"))
    meta["wall_seconds"] = round(time.time() - started)
    with open(os.path.join(json_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------

TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


class Results:
    """Median real time (ms) and counters per (benchmark name, OMP threads)."""

    def __init__(self):
        self.rows = {}  # (name, threads) -> dict
        self.context = {}

    def add_file(self, path):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            print("bench_report: skipping %s (missing or not JSON: no benchmark matched?)" % path, file=sys.stderr)
            return
        if not self.context:
            self.context = data.get("context", {})
        chosen = {}
        for b in data.get("benchmarks", []):
            if b.get("error_occurred"):
                continue
            name = b.get("run_name", b["name"])
            kind = b.get("run_type", "iteration")
            if kind == "aggregate" and b.get("aggregate_name") != "median":
                continue
            # A median beats a single iteration run of the same name (repetitions without aggregates_only).
            if name in chosen and chosen[name].get("run_type") == "aggregate":
                continue
            chosen[name] = b
        for name, b in chosen.items():
            row = {k: v for k, v in b.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            row["ms"] = b["real_time"] * TO_MS[b.get("time_unit", "ns")]
            threads = int(round(row.get("omp_threads", 1)))
            self.rows[(name, threads)] = row

    def get(self, name, threads, key="ms"):
        row = self.rows.get((name, threads))
        if row is None or key not in row:
            return None
        return row[key]

    def threads(self):
        return sorted({t for (_, t) in self.rows})

    def names(self, family):
        return sorted({n for (n, _) in self.rows if n.split("/")[0] == family}, key=sort_key)


def parse_args(name):
    return {k: int(v) for k, v in re.findall(r"/([A-Za-z]+):(\d+)", name)}


def sort_key(name):
    a = parse_args(name)
    return (name.split("/")[0], sorted(a.items()))


def partner(name, prefix_from, prefix_to):
    return prefix_to + name[len(prefix_from):]


# ------------------------------------------------------------------------------------------------------------
# Formatting
# ------------------------------------------------------------------------------------------------------------

def num(x, digits=1):
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "–"
    if abs(x) >= 1000:
        return "{:,.0f}".format(x)
    return "{:.{d}f}".format(x, d=digits)


def ms(x):
    if x is None:
        return "–"
    if x >= 100:
        return "{:,.0f}".format(x)
    if x >= 10:
        return "{:.1f}".format(x)
    if x >= 1:
        return "{:.2f}".format(x)
    return "{:.3f}".format(x)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def times(x):
    return "–" if x is None else "{:.2f}×".format(x)


def pct(x):
    return "–" if x is None else "{:.0f}%".format(100 * x)


def table(header, rows, left=1):
    """A Markdown table: the first `left` columns left-aligned, the others (numbers) right-aligned."""
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(":---" if i < left else "---:" for i in range(len(header))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def mask_name(causal):
    return "causal" if causal else "none"


def threads_name(t):
    return "%d thread%s" % (t, "" if t == 1 else "s")


# ------------------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------------------

def render(res, meta, plot_rel):
    ctx = res.context
    threads = res.threads()
    out = []
    w = out.append
    w("# attend benchmarks")
    w("")
    reps = meta.get("repetitions", "?")
    w("Generated by `scripts/bench_report.py` from one run of the Google Benchmark programs in `bench/`; every "
      "time is %s (real time), at each OpenMP thread count (`OMP_NUM_THREADS`)."
      % ("from a single repetition" if reps == 1 else "the median of %s repetitions" % reps))
    w("Do not edit by hand: rerun the script.")
    w("")
    w("## Machine and build")
    w("")
    avx = meta.get("avx512") or []
    rows = [
        ["Date", ctx.get("date", "?")],
        ["CPU", "%s, %s CPU(s) (%s socket(s) × %s core(s) × %s thread(s))%s" % (
            meta.get("cpu_model"), meta.get("cpus"), meta.get("sockets"), meta.get("cores_per_socket"),
            meta.get("threads_per_core"), ", %s guest" % meta["hypervisor"] if meta.get("hypervisor") else "")],
        ["Caches", "L1d %s, L2 %s, L3 %s" % (meta.get("l1d"), meta.get("l2"), meta.get("l3"))],
        ["AVX-512", ("yes: " + " ".join(avx)) if avx else "no"],
        ["OS", meta.get("kernel", "?")],
        ["Compiler", meta.get("compiler", "?")],
        ["Build type", meta.get("build_type", "?")],
        ["Bench flags", "`%s`" % meta.get("flags", "?")],
        ["Eigen", "%s (SIMD: %s)" % (ctx.get("eigen_version", "?"), ctx.get("eigen_simd", "?"))],
        ["OpenMP", ctx.get("openmp", "?")],
        ["attend", "%s, commit %s" % (ctx.get("attend_version", "?"), meta.get("commit", "?"))],
        ["Google Benchmark", "%s repetition(s), min time %s s per repetition%s; library built as %s" % (
            meta.get("repetitions"), meta.get("min_time"),
            ", filter `%s`" % meta["filter"] if meta.get("filter") else "",
            ctx.get("library_build_type", "?"))],
        ["Command", "`%s`" % meta.get("command", "?")],
    ]
    w(table(["", ""], rows, left=2))
    w("")

    # Reference ------------------------------------------------------------------------------------------
    w("## This machine's yardsticks (same run)")
    w("")
    hdr = [""] + [threads_name(t) for t in threads]
    rows = []
    for name in res.names("sgemm"):
        a = parse_args(name)
        rows.append(["Eigen SGEMM %d×%d×%d (M×K×N), GFLOP/s" % (a["M"], a["K"], a["N"])]
                    + [num(res.get(name, t, "GFLOPS")) for t in threads])
    rows.append(["STREAM triad, 3 × 64 MiB float arrays, GB/s"] + [num(res.get(TRIAD, t, "GBps")) for t in threads])
    rows.append(["Read (sum) of 128 MiB, GB/s"] + [num(res.get(READ, t, "GBps")) for t in threads])
    w(table(hdr, rows))
    w("")
    w("\"% of SGEMM\" below is relative to SGEMM 1024×1024×1024 at the same thread count; \"% of triad\" to "
      "the triad at the same thread count (bytes counted as STREAM does: 3 arrays per element).")
    w("")

    # Prefill --------------------------------------------------------------------------------------------
    prefill = res.names("attend_prefill")
    mha = [n for n in prefill if parse_args(n)["G"] == parse_args(n)["H"]]
    grouped = [n for n in prefill if parse_args(n)["G"] != parse_args(n)["H"]]

    def prefill_rows(names, t, with_kv):
        sg = res.get(REF_SGEMM, t, "GFLOPS")
        rows = []
        for name in sorted(names, key=lambda n: (parse_args(n)["G"] if with_kv else 0, parse_args(n)["causal"],
                                                  parse_args(n)["d"], parse_args(n)["L"])):
            a = parse_args(name)
            naive = partner(name, "attend_", "naive_")
            if res.get(name, t) is None and res.get(naive, t) is None:
                continue
            g_att, g_nai = res.get(name, t, "GFLOPS"), res.get(naive, t, "GFLOPS")
            lead = ["%d" % a["G"]] if with_kv else []
            rows.append(lead + [mask_name(a["causal"]), "%d" % a["d"], "%d" % a["L"],
                                ms(res.get(naive, t)), ms(res.get(name, t)),
                                times(ratio(res.get(naive, t), res.get(name, t))),
                                num(g_nai), num(g_att), pct(ratio(g_att, sg))])
        return rows

    w("## Prefill, multi-head (H = 8, q, k, v [L, 8·d] float)")
    w("")
    w("`attend::multi_head_attention` against the naive materializing baseline (per head: S = (Q·scale) Kᵀ as "
      "one Eigen GEMM, stable softmax over the visible keys, masked entries zeroed, O = P V; score matrix "
      "preallocated and reused). GFLOP/s counts useful work only: 4·L²·d per head, halved for causal, so the "
      "naive baseline, which computes the whole matrix, shows half its raw rate when causal.")
    w("")
    hdr = ["mask", "d", "L", "naive ms", "attend ms", "speedup", "naive GFLOP/s", "attend GFLOP/s", "attend % of SGEMM"]
    for t in threads:
        rows = prefill_rows(mha, t, False)
        if rows:
            w("### %s" % threads_name(t))
            w("")
            w(table(hdr, rows))
            w("")

    if grouped:
        w("## Prefill, grouped-query and multi-query (H = 8 query heads, d = 128)")
        w("")
        hdr2 = ["kv heads", "mask", "d", "L", "naive ms", "attend ms", "speedup", "naive GFLOP/s",
                "attend GFLOP/s", "attend % of SGEMM"]
        for t in threads:
            rows = prefill_rows(grouped, t, True)
            if rows:
                w("### %s" % threads_name(t))
                w("")
                w(table(hdr2, rows))
                w("")

    if plot_rel:
        w("![GFLOP/s against L, attend and naive, causal and not](%s)" % plot_rel)
        w("")

    # Thread scaling -------------------------------------------------------------------------------------
    if len(threads) >= 2:
        t1, t2 = threads[0], threads[-1]
        w("## Thread scaling (%s / %s)" % (threads_name(t2), threads_name(t1)))
        w("")
        w("Speed at %d threads over speed at %d, from the same tables (time at %d / time at %d)." % (t2, t1, t1, t2))
        w("")
        rows = []
        for name in sorted(prefill, key=lambda n: (parse_args(n)["G"] != parse_args(n)["H"], parse_args(n)["G"],
                                                    parse_args(n)["causal"], parse_args(n)["d"],
                                                    parse_args(n)["L"])):
            a = parse_args(name)
            naive = partner(name, "attend_", "naive_")
            kind = "MHA" if a["G"] == a["H"] else ("MQA" if a["G"] == 1 else "GQA %d/%d" % (a["H"], a["G"]))
            rows.append(["prefill %s" % kind, mask_name(a["causal"]), "d=%d, L=%d" % (a["d"], a["L"]),
                         ms(res.get(name, t1)), ms(res.get(name, t2)),
                         times(ratio(res.get(name, t1), res.get(name, t2))),
                         times(ratio(res.get(naive, t1), res.get(naive, t2)))])
        for name in res.names("attend_decode"):
            a = parse_args(name)
            naive = partner(name, "attend_", "naive_")
            rows.append(["decode GQA 32/8", "causal", "S=%d, Lq=%d" % (a["S"], a["Lq"]),
                         ms(res.get(name, t1)), ms(res.get(name, t2)),
                         times(ratio(res.get(name, t1), res.get(name, t2))),
                         times(ratio(res.get(naive, t1), res.get(naive, t2)))])
        for name in res.names("mla_absorbed_layer"):
            a = parse_args(name)
            naive = partner(name, "mla_absorbed_layer", "mla_decompressed_layer")
            rows.append(["MLA decode layer", "causal", "S=%d" % a["S"],
                         ms(res.get(name, t1)), ms(res.get(name, t2)),
                         times(ratio(res.get(name, t1), res.get(name, t2))),
                         times(ratio(res.get(naive, t1), res.get(naive, t2)))])
        w(table(["workload", "mask", "shape", "attend ms, %s" % threads_name(t1), "attend ms, %s" % threads_name(t2),
                 "attend scaling", "naive scaling"], rows, left=3))
        w("")

    # Decode ---------------------------------------------------------------------------------------------
    decode = res.names("attend_decode")
    if decode:
        w("## Decode, GQA 32 query heads over 8 KV heads, d = 128")
        w("")
        w("q [Lq, 32·128] against a cache k, v [S, 8·128], causal. GB/s = KV bytes read per call "
          "(S · 8 · 128 · 2 · 4 B) per second. The naive baseline materializes each query head's scores over "
          "the whole cache, reading every KV head once per query head (4 times). The issue's yardstick is the "
          "triad; the read-only sum over 128 MiB (the 16k cache's size) is the closer ceiling for a kernel that only "
          "reads, so both are shown.")
        w("")
        rows = []
        for t in threads:
            tri = res.get(TRIAD, t, "GBps")
            rd = res.get(READ, t, "GBps")
            for name in decode:
                a = parse_args(name)
                naive = partner(name, "attend_", "naive_")
                g = res.get(name, t, "GBps")
                rows.append(["%d" % t, "%d" % a["S"], "%d" % a["Lq"], "%.0f" % (res.get(name, t, "KV_MiB") or 0),
                             ms(res.get(naive, t)), ms(res.get(name, t)),
                             times(ratio(res.get(naive, t), res.get(name, t))),
                             num(res.get(naive, t, "GBps")), num(g), pct(ratio(g, tri)), pct(ratio(g, rd))])
        w(table(["threads", "S", "Lq", "KV MiB", "naive ms", "attend ms", "speedup", "naive GB/s", "attend GB/s",
                 "attend % of triad", "attend % of read"], rows))
        w("")

    # MLA ------------------------------------------------------------------------------------------------
    mla = res.names("mla_absorbed_layer") or res.names("mla_absorbed_core")
    if mla:
        w("## MLA decode, DeepSeek-V2-Lite sizes")
        w("")
        w("d_model 2048, 16 heads, kv_lora_rank 512, qk_nope 128, qk_rope 64, v 128, no query compression; one "
          "new token over a cache of S tokens. *Absorbed*: `MultiHeadLatentAttention::forward(x, LatentCache)` "
          "(W_UK into the query, W_UV into the output, MQA over the latent cache). *Decompressed*: the textbook "
          "step from the same latent cache (every head's K and V rebuilt for all S + 1 tokens through kv_b_proj, "
          "then attention). Layer times include all projections. The *core* rows time the attention alone: "
          "absorbed = `multi_head_attention` over the latent cache (keys 576, values 512, 16 heads sharing them); "
          "full K/V = MHA over a cache of decompressed keys and values, the memory-hungry alternative.")
        w("")
        rows = []
        for t in threads:
            for s_name in sorted({parse_args(n)["S"] for n in mla}):
                ab = "mla_absorbed_layer/S:%d/real_time" % s_name
                de = "mla_decompressed_layer/S:%d/real_time" % s_name
                co = "mla_absorbed_core/S:%d/real_time" % s_name
                fk = "mha_full_kv_core/S:%d/real_time" % s_name
                rows.append(["%d" % t, "%d" % s_name, ms(res.get(de, t)), ms(res.get(ab, t)),
                             times(ratio(res.get(de, t), res.get(ab, t))),
                             num(res.get(co, t, "cache_MiB") or res.get(ab, t, "cache_MiB"), 2),
                             ms(res.get(co, t)), num(res.get(co, t, "GBps")), num(res.get(co, t, "GFLOPS")),
                             num(res.get(fk, t, "cache_MiB"), 0), ms(res.get(fk, t)), num(res.get(fk, t, "GBps"))])
        w(table(["threads", "S", "decompressed layer ms", "absorbed layer ms", "speedup", "latent cache MiB",
                 "absorbed core ms", "core GB/s", "core GFLOP/s", "full K/V MiB", "full K/V core ms",
                 "full K/V GB/s"], rows))
        diffs = [res.get("mla_decompressed_layer/S:%d/real_time" % s, t, "rel_diff")
                 for t in threads for s in sorted({parse_args(n)["S"] for n in mla})]
        diffs = [d for d in diffs if d is not None]
        if diffs:
            w("")
            w("The decompressed baseline agrees with the absorbed layer to %.1e of the output's largest entry."
              % max(diffs))
        w("")

    # Peak memory ----------------------------------------------------------------------------------------
    peak = [(n, t) for (n, t) in sorted(res.rows) if n.startswith("attend_peak_memory/")]
    if peak:
        w("## Peak memory of one prefill")
        w("")
        w("Resident memory growth during one `multi_head_attention` call beyond its output (VmHWM − VmRSS before "
          "the call − output size), in a process of its own.")
        w("")
        rows = []
        for n, t in peak:
            a = parse_args(n)
            r = res.rows[(n, t)]
            rows.append(["%d" % a["L"], "%d" % a["H"], "%d" % a["d"], "%d" % t, num(r.get("inputs_MiB"), 0),
                         num(r.get("output_MiB"), 0), num(r.get("extra_MiB"), 1),
                         "%.0f" % (4.0 * a["L"] * a["L"] / 2**20)])
        w(table(["L", "H", "d", "threads", "inputs MiB", "output MiB", "extra MiB", "naive score matrix MiB"], rows))
        w("")

    # Targets --------------------------------------------------------------------------------------------
    w("## Targets (issue 4)")
    w("")
    w(table(["target", "measured", "status"], targets(res, threads), left=3))
    w("")
    if meta.get("wall_seconds") is not None:
        w("The whole run took %d min %02d s." % divmod(int(meta["wall_seconds"]), 60))
        w("")
    return "\n".join(out)


def status(ok):
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def targets(res, threads):
    rows = []
    pre = "attend_prefill/L:4096/d:128/H:8/G:8/causal:%d/real_time"

    def speedup(name, t):
        return ratio(res.get(partner(name, "attend_", "naive_"), t), res.get(name, t))

    t1 = 1 if 1 in threads else None
    c, n = pre % 1, pre % 0
    s = speedup(c, t1)
    rows.append(["Prefill causal, L = 4096, d = 128, 1 thread: ≥ 2.5× the naive baseline",
                 "%s (attend %s ms, naive %s ms)" % (times(s), ms(res.get(c, t1)),
                                                     ms(res.get(partner(c, "attend_", "naive_"), t1))),
                 status(None if s is None else s >= 2.5)])
    g, sg = res.get(c, t1, "GFLOPS"), res.get(REF_SGEMM, t1, "GFLOPS")
    f = ratio(g, sg)
    rows.append(["Prefill causal, L = 4096, d = 128, 1 thread: ≥ 75% of Eigen SGEMM in useful GFLOP/s",
                 "%s GFLOP/s = %s of SGEMM 1024³ (%s GFLOP/s)" % (num(g), pct(f), num(sg)),
                 status(None if f is None else f >= 0.75)])
    s = speedup(n, t1)
    rows.append(["Prefill non-causal, L = 4096, d = 128, 1 thread: ≥ 1.3× the naive baseline",
                 "%s (attend %s ms, naive %s ms)" % (times(s), ms(res.get(n, t1)),
                                                     ms(res.get(partner(n, "attend_", "naive_"), t1))),
                 status(None if s is None else s >= 1.3)])

    t2 = 2 if 2 in threads else None
    for name, label in ((c, "causal"), (n, "non-causal")):
        sc = ratio(res.get(name, t1), res.get(name, t2)) if t1 and t2 else None
        rows.append(["Prefill %s, L = 4096, d = 128: 2 threads ≥ 1.8× 1 thread" % label,
                     "%s (%s ms → %s ms)" % (times(sc), ms(res.get(name, t1)), ms(res.get(name, t2))),
                     status(None if sc is None else sc >= 1.8)])
    if t1 and t2:
        scal = [(ratio(res.get(p, t1), res.get(p, t2)), p) for p in res.names("attend_prefill")]
        scal = [(x, p) for x, p in scal if x is not None]
        if scal:
            worst, wp = min(scal)
            below = sum(1 for x, _ in scal if x < 1.8)
            a = parse_args(wp)
            rows.append(["Every prefill shape of the suite: 2 threads ≥ 1.8× 1 thread",
                         "%d of %d shapes below; lowest %s at L = %d, d = %d, G = %d, %s" % (
                             below, len(scal), times(worst), a["L"], a["d"], a["G"], mask_name(a["causal"])),
                         status(below == 0)])
    else:
        rows.append(["Every prefill shape of the suite: 2 threads ≥ 1.8× 1 thread", "–", status(None)])

    dec = "attend_decode/S:16384/Lq:1/real_time"
    for t in (1, 2):
        tt = t if t in threads else None
        gb, tri = res.get(dec, tt, "GBps"), res.get(TRIAD, tt, "GBps")
        f = ratio(gb, tri)
        rows.append(["Decode GQA 32/8, d = 128, cache 16384, %s: ≥ 80%% of triad bandwidth in KV bytes/s"
                     % threads_name(t),
                     "%s GB/s = %s of triad (%s GB/s); %s ms per call" % (num(gb), pct(f), num(tri), ms(res.get(dec, tt))),
                     status(None if f is None else f >= 0.8)])

    peak = [(n, t) for (n, t) in res.rows if n.startswith("attend_peak_memory/L:16384/d:64/H:8/")]
    if peak:
        r = res.rows[sorted(peak)[0]]
        extra = r.get("extra_MiB")
        rows.append(["Peak memory, prefill L = 16384, H = 8, d = 64: inputs + output + ≤ 32 MiB",
                     "%s MiB beyond inputs (%s MiB) and output (%s MiB)" % (
                         num(extra, 1), num(r.get("inputs_MiB"), 0), num(r.get("output_MiB"), 0)),
                     status(None if extra is None else extra <= 32)])
    else:
        rows.append(["Peak memory, prefill L = 16384, H = 8, d = 64: inputs + output + ≤ 32 MiB", "–",
                     status(None)])

    # Every attend/naive pair of the suite, every thread count.
    pairs = []
    for t in threads:
        for fam_a, fam_n in (("attend_prefill", "naive_prefill"), ("attend_decode", "naive_decode")):
            for name in res.names(fam_a):
                sp = ratio(res.get(partner(name, fam_a, fam_n), t), res.get(name, t))
                if sp is not None:
                    pairs.append((sp, name, t))
        for name in res.names("mla_absorbed_layer"):
            sp = ratio(res.get(partner(name, "mla_absorbed_layer", "mla_decompressed_layer"), t), res.get(name, t))
            if sp is not None:
                pairs.append((sp, name, t))
    if pairs:
        slower = sorted(p for p in pairs if p[0] < 1.0)
        worst = min(pairs)
        text = "%d of %d pairs slower; lowest speedup %s (%s, %s)" % (
            len(slower), len(pairs), times(worst[0]), short(worst[1]), threads_name(worst[2]))
        if slower:
            text += "; slower: " + ", ".join("%s %s %s" % (short(n), threads_name(t), times(s)) for s, n, t in slower)
        rows.append(["No shape in the suite slower than the naive baseline", text, status(not slower)])
    else:
        rows.append(["No shape in the suite slower than the naive baseline", "–", status(None)])
    return rows


def short(name):
    return name.replace("/real_time", "")


# ------------------------------------------------------------------------------------------------------------
# The plot
# ------------------------------------------------------------------------------------------------------------

def plot(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("bench_report: matplotlib is missing (apt-get install -y python3-matplotlib, then run with "
                 "/usr/bin/python3), or pass --no-plot")
    plt.rcParams["svg.hashsalt"] = "attend-benchmarks"  # stable ids: the SVG changes only with the numbers
    plt.rcParams["svg.fonttype"] = "none"
    threads = res.threads()
    names = [n for n in res.names("attend_prefill") if parse_args(n)["G"] == parse_args(n)["H"]]
    ds = sorted({parse_args(n)["d"] for n in names}) or [64]
    fig, axes = plt.subplots(len(ds), len(threads), figsize=(5.6 * len(threads), 3.6 * len(ds) + 0.8), squeeze=False,
                             sharex=True, sharey="row")
    styles = {("attend", 0): ("tab:blue", "-", "o"), ("attend", 1): ("tab:orange", "-", "s"),
              ("naive", 0): ("tab:blue", "--", "o"), ("naive", 1): ("tab:orange", "--", "s")}
    for i, d in enumerate(ds):
        top = 0.0
        for j, t in enumerate(threads):
            ax = axes[i][j]
            for impl in ("attend", "naive"):
                for causal in (0, 1):
                    pts = []
                    for n in names:
                        a = parse_args(n)
                        if a["d"] != d or a["causal"] != causal:
                            continue
                        g = res.get(n if impl == "attend" else partner(n, "attend_", "naive_"), t, "GFLOPS")
                        if g is not None:
                            pts.append((a["L"], g))
                            top = max(top, g)
                    if pts:
                        pts.sort()
                        color, line, marker = styles[(impl, causal)]
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linestyle=line, marker=marker,
                                markerfacecolor=color if impl == "attend" else "white",
                                label="%s, %s" % (impl, "causal" if causal else "no mask"))
            sg = res.get(REF_SGEMM, t, "GFLOPS")
            if sg:
                ax.axhline(sg, color="gray", linestyle=":", label="Eigen SGEMM 1024³")
                top = max(top, sg)
            ax.set_xscale("log", base=2)
            ls = sorted({parse_args(n)["L"] for n in names})
            ax.set_xticks(ls)
            ax.set_xticklabels([str(x) for x in ls])
            ax.minorticks_off()
            ax.set_title("d = %d, %s" % (d, threads_name(t)))
            if i == len(ds) - 1:
                ax.set_xlabel("L")
            ax.set_ylabel("useful GFLOP/s")
            ax.grid(True, alpha=0.3)
        axes[i][0].set_ylim(0, 1.08 * top if top > 0 else 1)  # the row shares its y axis
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Prefill, H = 8, fp32: attend vs naive materializing attention")
    fig.tight_layout(rect=(0, 0.1 if len(ds) == 1 else 0.06, 1, 1))
    kwargs = {"metadata": {"Date": None}} if path.endswith(".svg") else {}
    fig.savefig(path, **kwargs)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("build_dir", nargs="?", default=os.path.join(ROOT, "build", "release"))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--filter", default="")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--peak-memory-L", type=int, default=16384)
    p.add_argument("--json-dir")
    p.add_argument("--from-json")
    p.add_argument("--markdown", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    p.add_argument("--plot", default=os.path.join(ROOT, "docs", "benchmarks.svg"))
    p.add_argument("--no-plot", action="store_true")
    opts = p.parse_args()
    opts.threads = sorted({int(t) for t in opts.threads.split(",") if t.strip()})
    if opts.quick:
        opts.filter = opts.filter or QUICK_FILTER
        opts.repetitions = 1
        opts.min_time = 0.05
        if opts.peak_memory_L == 16384:
            opts.peak_memory_L = 4096

    json_dir = opts.from_json or opts.json_dir or os.path.join(opts.build_dir, "bench-json")
    if not opts.from_json:
        run_all(opts, json_dir)

    res = Results()
    for name in sorted(os.listdir(json_dir)):
        if name.endswith(".json") and name != "meta.json":
            res.add_file(os.path.join(json_dir, name))
    if not res.rows:
        sys.exit("bench_report: no results in %s" % json_dir)
    try:
        with open(os.path.join(json_dir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}

    md_dir = os.path.dirname(os.path.abspath(opts.markdown))
    os.makedirs(md_dir, exist_ok=True)
    plot_rel = None
    if not opts.no_plot:
        os.makedirs(os.path.dirname(os.path.abspath(opts.plot)), exist_ok=True)
        plot(res, opts.plot)
        plot_rel = os.path.relpath(os.path.abspath(opts.plot), md_dir)
    with open(opts.markdown, "w") as f:
        f.write(render(res, meta, plot_rel) + "\n")
    print("bench_report: wrote %s%s" % (opts.markdown, "" if opts.no_plot else " and " + opts.plot), file=sys.stderr)


if __name__ == "__main__":
    main()
