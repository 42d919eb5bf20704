#!/usr/bin/env python3
"""Runs attend's benchmarks and turns their Google Benchmark JSON into docs/benchmarks.md and a plot.

Usage (from the repository root, on a quiet machine):

    cmake --preset release
    cmake --build --preset release -j2 --target attention_bench decode_bench latent_bench backward_bench \
        serving_bench
    /usr/bin/python3 scripts/bench_report.py build/release

The plot needs Debian's matplotlib (apt-get install -y python3-matplotlib), hence /usr/bin/python3. The full
run takes about 20 minutes on the 2-core development machine: about 180 benchmarks per thread count (each three
repetitions of at least 0.5 s after the iteration-count search: ~2.5 s), about 10 at one thread and 8 at two,
then the two peak-memory runs (~1 min). The slowest are the naive baselines: prefill at L = 8192 is ~3 s per
repetition at one thread, the naive backward at L = 4096 ~3 s per repetition for each of its six shapes.

Every program in BUILD_DIR/bench (PROGRAMS: attention_bench, decode_bench, latent_bench, backward_bench,
serving_bench) runs once per thread count with OMP_NUM_THREADS set (default 1 and 2) and

    --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_min_time=0.5
    --benchmark_enable_random_interleaving=true
    --benchmark_out=JSON_DIR/<program>-t<threads>.json --benchmark_out_format=json

and the report uses the medians of the repetitions. The repetitions of a program's benchmarks run interleaved in
random order, so that a ratio of two rows (bf16 against float decode, ALiBi on against off) compares medians taken
over the same stretch of the run: on a host whose speed drifts by 10% over minutes, back-to-back repetitions put
the drift into the ratio. A program that is not built is skipped with a warning: its
tables are left out and its targets read "not measured". The peak-memory measurements run in processes of their
own, 2 threads, one iteration, so that nothing measured before them inflates the peak: prefill L = 16384, H = 8,
d = 64 (attention_bench --attend_peak_memory) and the backward of the same shape, causal and not
(backward_bench --attend_peak_memory). The raw JSON and a meta.json (machine, compiler, flags, commit, command,
programs skipped) stay in JSON_DIR; --from-json re-renders the same report from them without running anything.

The report: yardsticks (SGEMM, the AMX bf16 GEMM, triad, read); float prefill against the naive baseline (MHA,
GQA/MQA) and its plot (with bf16 prefill); thread scaling; decode against naive; decode by cache storage (float,
bf16, fp16, q8: GB/s and bytes per token); 16-bit prefill by path (amx, avx512bf16, generic) against float;
sinks and ALiBi on and off; chunked prefill over float, 16-bit and 8-bit caches; backward against forward and
the naive backward; serving (ragged and paged batches against per-sequence loops); MLA decode; peak memory of a
prefill and of a backward; and the targets of issues 4, 14, 15, 16, 17 and 18, each met, missed or not measured.

Options:
  build_dir            build tree with bench/attention_bench, ... (default build/release)
  --threads 1,2        OMP_NUM_THREADS values
  --repetitions N      repetitions per benchmark (default 3; the median is reported)
  --min-time S         --benchmark_min_time per repetition in seconds (default 0.5)
  --filter REGEX       --benchmark_filter for every program: a subset, for testing
  --quick              a small subset (QUICK_FILTER: at least one row of every table), 1 repetition, min time
                       0.05 s, peak memory at L = 4096 (tests the script; its numbers mean little)
  --peak-memory-L L    sequence length of the peak-memory runs (default 16384; 0 skips them)
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

PROGRAMS = ["attention_bench", "decode_bench", "latent_bench", "backward_bench", "serving_bench"]
QUICK_FILTER = ("L:1024/d:64/H:8/G:8|L:1024/d:128/H:8/G:2/causal:1|sgemm/M:1024/|amx_gemm/M:4096/K:64/|"
                "decode/S:4096/Lq:1/|decode16/S:4096/Lq:1/|decode_q8/S:4096/Lq:1/|decode_mod/.*mod:[02]|"
                "prefill_cache/Lq:256/|triad/MiB:64/|read/MiB:128/|/S:1024/|"
                "B:64/min_keys:64/|B:128/L:16/|prefill_one/")
REF_SGEMM = "sgemm/M:1024/K:1024/N:1024/real_time"
AMX_GEMM = "amx_gemm/M:4096/K:%d/N:4096/real_time"  # K = head dim
TRIAD = "triad/MiB:64/real_time"
READ = "read/MiB:128/real_time"
# serving_bench measures its own bandwidth under the same names as decode_bench: kept apart with this prefix.
SERVING_PREFIX = "serving_"
SERVING_RENAMED = ("triad/", "read/")
PREFILL = "attend_prefill/L:%d/d:%d/H:8/G:%d/causal:%d/real_time"
PREFILL16 = "attend_prefill16/L:%d/d:%d/H:8/G:%d/causal:%d/type:%d/path:%d/real_time"
DECODE = "attend_decode/S:%d/Lq:%d/real_time"
DECODE16 = "attend_decode16/S:%d/Lq:%d/type:%d/real_time"
DECODE_Q8 = "attend_decode_q8/S:%d/Lq:%d/scales:%d/real_time"
DECODE_MOD = "attend_decode_mod/S:%d/Lq:%d/mod:%d/real_time"
PREFILL_CACHE = "attend_prefill_cache/Lq:%d/Lk:%d/type:%d/real_time"
BACKWARD = "%s/L:%d/d:%d/H:8/G:%d/causal:%d/real_time"  # attend_forward, attend_backward, naive_backward
PATHS = {0: "generic", 1: "avx512bf16", 2: "amx"}  # attend_prefill16's path argument
TYPES16 = {1: "bf16", 2: "fp16"}  # attend_prefill16's and attend_decode16's type argument
CACHE_TYPES = {0: "float", 1: "bf16", 2: "fp16", 3: "q8"}  # attend_prefill_cache's type argument
MODS = {0: "off", 1: "sinks", 2: "ALiBi", 3: "sinks + ALiBi"}  # the mod argument
SERVING_DECODES = "/B:32/min_keys:256/max_keys:8192/real_time"
SERVING_PREFILLS = "/B:64/L:128/real_time"
SERVING_ONE = "prefill_one/L:1024/real_time"
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
    present = [p for p in PROGRAMS if os.access(os.path.join(bench_dir, p), os.X_OK)]
    missing = [p for p in PROGRAMS if p not in present]
    if not present:
        sys.exit("bench_report: no benchmark program in %s; build them first:\n"
                 "  cmake --build --preset release -j2 --target %s" % (bench_dir, " ".join(PROGRAMS)))
    if missing:
        print("bench_report: skipping %s (not built in %s; its tables are left out, its targets not measured). "
              "Build with:\n  cmake --build --preset release -j2 --target %s"
              % (", ".join(missing), bench_dir, " ".join(missing)), file=sys.stderr, flush=True)
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
    meta["missing_programs"] = missing
    started = time.time()
    common = ["--benchmark_repetitions=%d" % opts.repetitions, "--benchmark_min_time=%g" % opts.min_time]
    # Repetitions run interleaved (and only their aggregates are written) when there is more than one.
    meta["interleaved"] = opts.repetitions > 1
    if meta["interleaved"]:
        common.append("--benchmark_report_aggregates_only=true")
        common.append("--benchmark_enable_random_interleaving=true")
    if opts.filter:
        common.append("--benchmark_filter=" + opts.filter)
    for threads in opts.threads:
        for prog in present:
            run_program(os.path.join(bench_dir, prog), threads, common,
                        os.path.join(json_dir, "%s-t%d.json" % (prog, threads)))
    if opts.peak_memory_L > 0:
        threads = max(opts.threads)
        # Each in a process of its own: nothing measured before inflates the peak.
        for prog, family, out in (("attention_bench", "attend_peak_memory", "peak-memory.json"),
                                  ("backward_bench", "attend_backward_peak_memory", "backward-peak-memory.json")):
            if prog in present:
                run_program(os.path.join(bench_dir, prog), threads,
                            ["--attend_peak_memory=%d" % opts.peak_memory_L, "--benchmark_filter=^%s/" % family],
                            os.path.join(json_dir, out))
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

    def add_file(self, path, prefix=""):
        """Reads one program's JSON; names starting with SERVING_RENAMED get `prefix` (serving_bench's bandwidth)."""
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
            if b.get("error_occurred"):  # also the rows a program skips (a 16-bit path this CPU lacks)
                continue
            name = b.get("run_name", b["name"])
            if prefix and name.startswith(SERVING_RENAMED):
                name = prefix + name
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
            if b.get("label"):
                row["label"] = b["label"]
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


def path_label(res, name, threads):
    """The 16-bit path of an attend_prefill16 row: the benchmark's label (path, and products on avx512bf16)."""
    row = res.rows.get((name, threads)) or {}
    return row.get("label") or PATHS.get(parse_args(name)["path"], "?")


def parse_args(name):
    return {k: int(v) for k, v in re.findall(r"/([A-Za-z_]+):(\d+)", name)}


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


def delta(x):
    """A time ratio as a change: 1.03 -> +3.0%."""
    return "–" if x is None else "{:+.1f}%".format(100 * (x - 1))


def first(*xs):
    for x in xs:
        if x is not None:
            return x
    return None


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
      % ("from a single repetition" if reps == 1 else "the median of %s repetitions%s" % (
          reps, ", run interleaved in random order with the other benchmarks of the same program"
          if meta.get("interleaved") else "")))
    w("Do not edit by hand: rerun the script.")
    w("")
    missing = meta.get("missing_programs") or []
    if missing:
        w("Not run in this report (not built): %s. Their tables are left out and their targets read \"not "
          "measured\"." % ", ".join("`%s`" % m for m in missing))
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
    for name in res.names("amx_gemm"):
        a = parse_args(name)
        rows.append(["AMX bf16 GEMM %d×%d×%d (M×K×N, float C, the 16-bit mainloop's tile product), GFLOP/s"
                     % (a["M"], a["K"], a["N"])] + [num(res.get(name, t, "GFLOPS")) for t in threads])
    rows.append(["STREAM triad, 3 × 64 MiB float arrays, GB/s"] + [num(res.get(TRIAD, t, "GBps")) for t in threads])
    rows.append(["Read (sum) of 128 MiB, GB/s"] + [num(res.get(READ, t, "GBps")) for t in threads])
    for fam, what in (("triad", "STREAM triad, 3 × %d MiB float arrays"), ("read", "Read (sum) of %d MiB")):
        for name in res.names(SERVING_PREFIX + fam):
            rows.append([(what % parse_args(name)["MiB"]) + ", GB/s, in serving_bench"]
                        + [num(res.get(name, t, "GBps")) for t in threads])
    w(table(hdr, rows))
    w("")
    w("\"% of SGEMM\" below is relative to SGEMM 1024×1024×1024 at the same thread count; \"% of AMX GEMM\" to "
      "the AMX bf16 GEMM with K = the head dim; \"% of triad\" to the triad at the same thread count (bytes "
      "counted as STREAM does: 3 arrays per element), decode_bench's for the decode tables, serving_bench's own for "
      "the serving table.")
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
        w("![GFLOP/s against L, attend (fp32 and bf16) and naive, causal and not](%s)" % plot_rel)
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
        for name in res.names("attend_prefill16"):
            a = parse_args(name)
            if (a["L"], a["d"], a["G"]) != (4096, 128, 8):
                continue
            rows.append(["prefill %s, %s path" % (TYPES16.get(a["type"], "?"), PATHS.get(a["path"], "?")),
                         mask_name(a["causal"]), "d=%d, L=%d" % (a["d"], a["L"]),
                         ms(res.get(name, t1)), ms(res.get(name, t2)),
                         times(ratio(res.get(name, t1), res.get(name, t2))), "–"])
        for fam, what in (("attend_forward", "forward (with lse)"), ("attend_backward", "backward")):
            for name in res.names(fam):
                a = parse_args(name)
                naive = partner(name, fam, "naive_backward") if fam == "attend_backward" else None
                kind = "MHA" if a["G"] == a["H"] else ("MQA" if a["G"] == 1 else "GQA %d/%d" % (a["H"], a["G"]))
                rows.append(["%s %s" % (what, kind), mask_name(a["causal"]), "d=%d, L=%d" % (a["d"], a["L"]),
                             ms(res.get(name, t1)), ms(res.get(name, t2)),
                             times(ratio(res.get(name, t1), res.get(name, t2))),
                             times(ratio(res.get(naive, t1), res.get(naive, t2))) if naive else "–"])
        for fam, what in (("decode_ragged", "serving: %d decodes, ragged"),
                          ("prefill_ragged", "serving: %d prefills, ragged"),
                          ("decode_paged", "serving: %d decodes, paged")):
            for name in res.names(fam):
                a = parse_args(name)
                loop = partner(name, fam, fam.split("_")[0] + "_loop")
                shape = ("keys %d..%d" % (a["min_keys"], a["max_keys"])) if "min_keys" in a else "L=%d" % a["L"]
                rows.append([what % a["B"], "causal", shape, ms(res.get(name, t1)), ms(res.get(name, t2)),
                             times(ratio(res.get(name, t1), res.get(name, t2))),
                             times(ratio(res.get(loop, t1), res.get(loop, t2))) if fam != "decode_paged" else "–"])
        w(table(["workload", "mask", "shape", "attend ms, %s" % threads_name(t1), "attend ms, %s" % threads_name(t2),
                 "attend scaling", "naive scaling"], rows, left=3))
        w("")
        w("The naive column is the naive baseline's scaling (for the backward, the naive backward's; for the "
          "serving rows, the per-sequence loop's).")
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

    render_round2(res, threads, w)

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
    bpeak = [(n, t) for (n, t) in sorted(res.rows) if n.startswith("attend_backward_peak_memory/")]
    if bpeak:
        w("## Peak memory of one backward")
        w("")
        w("Resident memory growth during one `multi_head_attention_backward` call beyond its gradients dq, dk, dv "
          "(VmHWM − VmRSS before the call − gradients), in a process of its own (`backward_bench "
          "--attend_peak_memory`). Inputs: q, k, v, out, dout and lse.")
        w("")
        rows = []
        for n, t in bpeak:
            a = parse_args(n)
            r = res.rows[(n, t)]
            rows.append(["%d" % a["L"], "%d" % a["H"], "%d" % a["d"], mask_name(a["causal"]), "%d" % t,
                         ms(r.get("ms")), num(r.get("inputs_MiB"), 0), num(r.get("gradients_MiB"), 0),
                         num(r.get("extra_MiB"), 1), "%.0f" % (2 * 4.0 * a["L"] * a["L"] / 2**20)])
        w(table(["L", "H", "d", "mask", "threads", "backward ms", "inputs MiB", "gradients MiB", "extra MiB",
                 "naive P and dP MiB"], rows))
        w("")

    # Targets --------------------------------------------------------------------------------------------
    w("## Targets")
    w("")
    w("Each target as its issue states it, checked against this run (medians); \"not measured\" when its "
      "benchmarks are not in the run.")
    w("")
    for title, rows in targets(res, threads):
        w("### %s" % title)
        w("")
        w(table(["target", "measured", "status"], rows, left=3))
        w("")
    if meta.get("wall_seconds") is not None:
        w("The whole run took %d min %02d s." % divmod(int(meta["wall_seconds"]), 60))
        w("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------------
# This round's families: 16-bit and 8-bit storage, score modifiers, prefill over caches, backward, serving
# ------------------------------------------------------------------------------------------------------------

def float_prefill_of(name16):
    """The float attend_prefill row of an attend_prefill16 row (same L, d, H, G, mask)."""
    return re.sub(r"/type:\d+/path:\d+", "", partner(name16, "attend_prefill16", "attend_prefill"))


def without(name, arg):
    return re.sub(r"/%s:\d+" % arg, "", name)


def with_arg(name, arg, value):
    return re.sub(r"/%s:\d+" % arg, "/%s:%d" % (arg, value), name)


def render_round2(res, threads, w):
    # Decode by storage ------------------------------------------------------------------------------------
    stored = res.names("attend_decode16") + res.names("attend_decode_q8")
    if stored:
        shapes = sorted({(parse_args(n)["S"], parse_args(n)["Lq"]) for n in stored + res.names("attend_decode")})
        w("## Decode by KV-cache storage, GQA 32/8, d = 128")
        w("")
        w("Float q [Lq, 32·128] against a cache k, v [S, 8·128] stored as float, bf16, fp16 or q8 (blocks of 32 "
          "int8 values and a scale), causal. q8 runs twice: as a `Q8Matrix` (float scales) through "
          "`multi_head_attention`, and as the layers' `KVCache<float, attend::q8>` (half scales) read as its "
          "layer reads it. Bytes per token: K and V of one token, all 8 kv heads, scales included; GB/s: those "
          "bytes of the whole cache per second; time / float: this storage's time over the float cache's.")
        w("")
        rows = []
        for t in threads:
            tri, rd = res.get(TRIAD, t, "GBps"), res.get(READ, t, "GBps")
            for S, Lq in shapes:
                base = res.get(DECODE % (S, Lq), t)
                for label, name in (("float", DECODE % (S, Lq)), ("bf16", DECODE16 % (S, Lq, 1)),
                                    ("fp16", DECODE16 % (S, Lq, 2)),
                                    ("q8, Q8Matrix (float scales)", DECODE_Q8 % (S, Lq, 1)),
                                    ("q8, KVCache (half scales)", DECODE_Q8 % (S, Lq, 2))):
                    m = res.get(name, t)
                    if m is None:
                        continue
                    mib, g = res.get(name, t, "KV_MiB"), res.get(name, t, "GBps")
                    rows.append(["%d" % t, "%d" % S, "%d" % Lq, label,
                                 num(None if mib is None else mib * 2**20 / S, 0), num(mib, 1), ms(m),
                                 times(ratio(m, base)), num(g), pct(ratio(g, tri)), pct(ratio(g, rd))])
        w(table(["threads", "S", "Lq", "storage", "bytes per token", "KV MiB", "ms", "time / float", "GB/s",
                 "% of triad", "% of read"], rows, left=4))
        w("")

    # 16-bit prefill by path -------------------------------------------------------------------------------
    p16 = res.names("attend_prefill16")
    if p16:
        w("## Prefill in 16 bits, by path (H = 8)")
        w("")
        w("`multi_head_attention` with q, k, v and the output in bf16 or fp16 (float scores, softmax and "
          "accumulator), on each 16-bit path forced in turn: *amx* (AMX-BF16 tiles), *avx512bf16* with the tile "
          "products the CPU's vendor chose (*dot*: `vdpbf16ps`, the weights rounded to bf16, on AMD; *widen*: "
          "bf16 widened to float, then FMA, on Intel), *generic* (tiles widened to float, the float mainloop); a "
          "path this CPU lacks has no rows. fp16 is rounded to bf16 on the amx and avx512bf16 paths. Float: `attend_prefill` of the same shape (the "
          "unrounded values). GFLOP/s counts useful work as for float.")
        w("")
        hdr = ["type", "path", "kv heads", "mask", "d", "L", "float ms", "16-bit ms", "speedup vs float",
               "float GFLOP/s", "16-bit GFLOP/s", "% of AMX GEMM"]
        for t in threads:
            rows = []
            for name in sorted(p16, key=lambda n: (parse_args(n)["type"], -parse_args(n)["path"], -parse_args(n)["G"],
                                                    parse_args(n)["causal"], parse_args(n)["d"], parse_args(n)["L"])):
                a = parse_args(name)
                m = res.get(name, t)
                if m is None:
                    continue
                fl = float_prefill_of(name)
                g, amx = res.get(name, t, "GFLOPS"), res.get(AMX_GEMM % a["d"], t, "GFLOPS")
                rows.append([TYPES16.get(a["type"], "?"), path_label(res, name, t), "%d" % a["G"],
                             mask_name(a["causal"]), "%d" % a["d"], "%d" % a["L"], ms(res.get(fl, t)), ms(m),
                             times(ratio(res.get(fl, t), m)), num(res.get(fl, t, "GFLOPS")), num(g),
                             pct(ratio(g, amx))])
            if rows:
                w("### %s" % threads_name(t))
                w("")
                w(table(hdr, rows, left=4))
                w("")

    # Score modifiers --------------------------------------------------------------------------------------
    mods = res.names("attend_decode_mod") + res.names("attend_prefill_mod")
    if mods:
        w("## Sinks and ALiBi, on and off")
        w("")
        w("The same call with the score modifiers off (0), a sink logit per head (`Options::sinks`), ALiBi slopes "
          "(`geometric_alibi_slopes`) or both; each column's change is its time against *off* in the same run. "
          "Decode: GQA 32/8, d = 128, causal; prefill: H = 8.")
        w("")
        bases = []
        for n in mods:
            b = without(n, "mod")
            if b not in bases:
                bases.append(b)
        rows = []
        for t in threads:
            for b in bases:
                a = parse_args(b)
                decode = b.startswith("attend_decode_mod")
                names = {m: with_arg(b.replace("/real_time", "/mod:0/real_time"), "mod", m) for m in MODS}
                off = res.get(names[0], t)
                cells = []
                for m in (1, 2, 3):
                    x = res.get(names[m], t)
                    cells += [ms(x), delta(ratio(x, off))]
                if off is None and all(c == "–" for c in cells):
                    continue
                shape = ("GQA 32/8, d=128, S=%d, Lq=%d" % (a["S"], a["Lq"]) if decode else
                         "MHA, d=%d, L=%d, %s" % (a["d"], a["L"], mask_name(a["causal"])))
                rows.append(["decode" if decode else "prefill", shape, "%d" % t, ms(off)] + cells)
        w(table(["workload", "shape", "threads", "off ms", "sinks ms", "sinks vs off", "ALiBi ms", "ALiBi vs off",
                 "both ms", "both vs off"], rows, left=2))
        w("")

    # Prefill over caches ----------------------------------------------------------------------------------
    pc = res.names("attend_prefill_cache")
    if pc:
        w("## Chunked prefill over a KV cache, by storage")
        w("")
        w("Lq new float queries (GQA 32/8, d = 128, bottom-right causal) over the Lk tokens of a "
          "`KVCache<float, S>` of float, bf16, fp16 or q8, read by the kernel as the layer reads them (the 16-bit "
          "and 8-bit tiles widened to float as they are read). Speed vs float / bf16: that cache's time over this "
          "one's.")
        w("")
        rows = []
        for t in threads:
            for Lq, Lk in sorted({(parse_args(n)["Lq"], parse_args(n)["Lk"]) for n in pc}, key=lambda x: (-x[0], x[1])):
                f, b = res.get(PREFILL_CACHE % (Lq, Lk, 0), t), res.get(PREFILL_CACHE % (Lq, Lk, 1), t)
                for ty, label in CACHE_TYPES.items():
                    n = PREFILL_CACHE % (Lq, Lk, ty)
                    m = res.get(n, t)
                    if m is None:
                        continue
                    rows.append(["%d" % t, "%d" % Lq, "%d" % Lk, label, num(res.get(n, t, "KV_MiB"), 1), ms(m),
                                 num(res.get(n, t, "GFLOPS")), times(ratio(f, m)), times(ratio(b, m))])
        w(table(["threads", "Lq", "Lk", "cache", "KV MiB", "ms", "GFLOP/s", "speed vs float cache",
                 "speed vs bf16 cache"], rows, left=4))
        w("")

    # Backward ---------------------------------------------------------------------------------------------
    bw = res.names("attend_backward")
    if bw or res.names("attend_forward") or res.names("naive_backward"):
        shapes = sorted({partner(n, n.split("/")[0], "x")
                         for n in bw + res.names("attend_forward") + res.names("naive_backward")},
                        key=lambda n: (-parse_args(n)["G"], parse_args(n)["causal"], parse_args(n)["d"],
                                       parse_args(n)["L"]))
        w("## Backward against forward and the naive backward")
        w("")
        w("`multi_head_attention_backward` (FlashAttention-2: P recomputed per tile from lse) against its forward "
          "`multi_head_attention_with_lse` and a naive materializing backward (per query head the full P and dP "
          "[L, L], five plain Eigen products), float, H = 8. GFLOP/s counts useful work: the forward's 4·L²·d per "
          "head (halved for causal), the backward's 2.5 times that; the naive backward, which computes every "
          "entry, shows less than its raw rate when causal.")
        w("")
        hdr = ["kv heads", "mask", "d", "L", "forward ms", "backward ms", "backward / forward", "naive backward ms",
               "speedup vs naive", "forward GFLOP/s", "backward GFLOP/s", "naive GFLOP/s", "backward % of SGEMM"]
        for t in threads:
            sg = res.get(REF_SGEMM, t, "GFLOPS")
            rows = []
            for s in shapes:
                a = parse_args(s)
                fw, bk, nv = (partner(s, "x", f) for f in ("attend_forward", "attend_backward", "naive_backward"))
                if all(res.get(n, t) is None for n in (fw, bk, nv)):
                    continue
                rows.append(["%d" % a["G"], mask_name(a["causal"]), "%d" % a["d"], "%d" % a["L"],
                             ms(res.get(fw, t)), ms(res.get(bk, t)), times(ratio(res.get(bk, t), res.get(fw, t))),
                             ms(res.get(nv, t)), times(ratio(res.get(nv, t), res.get(bk, t))),
                             num(res.get(fw, t, "GFLOPS")), num(res.get(bk, t, "GFLOPS")),
                             num(res.get(nv, t, "GFLOPS")), pct(ratio(res.get(bk, t, "GFLOPS"), sg))])
            if rows:
                w("### %s" % threads_name(t))
                w("")
                w(table(hdr, rows))
                w("")

    # Serving ----------------------------------------------------------------------------------------------
    decs = sorted({partner(n, n.split("/")[0], "x") for f in ("decode_ragged", "decode_loop", "decode_paged")
                   for n in res.names(f)}, key=lambda n: (-parse_args(n)["max_keys"], parse_args(n)["B"]))
    pres = sorted({partner(n, n.split("/")[0], "x") for f in ("prefill_ragged", "prefill_loop")
                   for n in res.names(f)}, key=lambda n: (-parse_args(n)["L"], parse_args(n)["B"]))
    if decs or pres or res.names("prefill_one"):
        w("## Serving: ragged and paged batches against the per-sequence loop")
        w("")
        w("`serving_bench`, GQA 32/8, d = 128, float, causal, every variant writing into one preallocated output. "
          "*Loop*: one `multi_head_attention_into` per sequence; *ragged*: one call over the whole batch "
          "(`attend::Ragged`); *paged*: the ragged decodes through a `PagedKVCache` of 16-token pages (the kernel "
          "alone). Decode GB/s: KV bytes read per second; % of triad: of serving_bench's own 64 MiB triad at the "
          "same thread count.")
        w("")
        if decs:
            rows = []
            for t in threads:
                tri = res.get(SERVING_PREFIX + TRIAD, t, "GBps")
                for s in decs:
                    a = parse_args(s)
                    rg, lp, pg = (partner(s, "x", f) for f in ("decode_ragged", "decode_loop", "decode_paged"))
                    if all(res.get(n, t) is None for n in (rg, lp, pg)):
                        continue
                    g = res.get(rg, t, "GBps")
                    mib = first(*(res.get(n, t, "KV_MiB") for n in (rg, lp, pg)))
                    rows.append(["%d" % t, "%d" % a["B"], "%d..%d" % (a["min_keys"], a["max_keys"]), num(mib, 0),
                                 ms(res.get(lp, t)), ms(res.get(rg, t)), times(ratio(res.get(lp, t), res.get(rg, t))),
                                 ms(res.get(pg, t)), times(ratio(res.get(pg, t), res.get(rg, t))), num(g),
                                 pct(ratio(g, tri)), num(res.get(pg, t, "GBps"))])
            w("### Decodes (one query per sequence, cache lengths uniform in the range, fixed seed)")
            w("")
            w(table(["threads", "sequences", "keys per sequence", "KV MiB", "loop ms", "ragged ms", "ragged speedup",
                     "paged ms", "paged / ragged time", "ragged GB/s", "ragged % of triad", "paged GB/s"], rows))
            w("")
        if pres or res.names("prefill_one"):
            rows = []
            for t in threads:
                one = res.get(SERVING_ONE, t, "GFLOPS")
                for s in pres:
                    a = parse_args(s)
                    rg, lp = partner(s, "x", "prefill_ragged"), partner(s, "x", "prefill_loop")
                    if res.get(rg, t) is None and res.get(lp, t) is None:
                        continue
                    g = res.get(rg, t, "GFLOPS")
                    rows.append(["%d" % t, "%d" % a["B"], "%d" % a["L"], ms(res.get(lp, t)), ms(res.get(rg, t)),
                                 times(ratio(res.get(lp, t), res.get(rg, t))), num(res.get(lp, t, "GFLOPS")), num(g),
                                 num(one), pct(ratio(g, one))])
                if res.get(SERVING_ONE, t) is not None:
                    rows.append(["%d" % t, "1", "1024", "–", ms(res.get(SERVING_ONE, t)), "–", "–", num(one),
                                 num(one), "100%"])
            w("### Causal prefills (every sequence the same length); the last row per thread count is one "
              "1024-token prefill, the yardstick")
            w("")
            w(table(["threads", "sequences", "tokens each", "loop ms", "ragged ms", "ragged speedup", "loop GFLOP/s",
                     "ragged GFLOP/s", "one 1024-token prefill GFLOP/s", "ragged % of it"], rows))
            w("")


def targets_issue14(res, threads):
    rows = []
    t1 = 1 if 1 in threads else None
    t2 = 2 if 2 in threads else None

    def best16(L, d, causal, t, paths=(2, 1, 0)):
        """The bf16 row of the fastest path this run has (the path the library takes by default)."""
        for p in paths:
            n = PREFILL16 % (L, d, 8, causal, 1, p)
            if res.get(n, t) is not None:
                return n, p
        return None, None

    def vs_float(L, d, causal, t, paths=(2, 1, 0)):
        n, p = best16(L, d, causal, t, paths)
        f = PREFILL % (L, d, 8, causal)
        sp = ratio(res.get(f, t), res.get(n, t)) if n else None
        text = "%s on the %s path (bf16 %s ms, float %s ms)" % (
            times(sp), PATHS.get(p, "–"), ms(res.get(n, t)) if n else "–", ms(res.get(f, t)))
        return sp, text, n, p

    for d, causal, goal, label in (
            (128, 1, 4.0, "bf16 causal prefill, L = 4096, d = 128, H = 8, 1 thread: ≥ 4× faster than float attend "
                          "(6× the ambition)"),
            (128, 0, 4.0, "bf16 non-causal prefill, L = 4096, d = 128, H = 8, 1 thread: also ≥ 4×"),
            (64, 1, 3.0, "bf16 causal prefill, L = 4096, d = 64, H = 8, 1 thread: ≥ 3×"),
            (64, 0, 3.0, "bf16 non-causal prefill, L = 4096, d = 64, H = 8, 1 thread: ≥ 3×")):
        sp, text, _, _ = vs_float(4096, d, causal, t1)
        rows.append([label, text, status(None if sp is None else sp >= goal)])

    _, _, n, p = vs_float(4096, 128, 1, t1)
    g, amx = (res.get(n, t1, "GFLOPS") if n else None), res.get(AMX_GEMM % 128, t1, "GFLOPS")
    f = ratio(g, amx)
    rows.append(["bf16 causal prefill, L = 4096, d = 128, 1 thread: ≥ 35% of the AMX bf16 GEMM yardstick in "
                 "useful FLOP/s",
                 "%s GFLOP/s (%s path) = %s of the AMX GEMM 4096×128×4096 (%s GFLOP/s)" % (
                     num(g), PATHS.get(p, "–"), pct(f), num(amx)),
                 status(None if f is None else f >= 0.35)])

    sc = ratio(res.get(n, t1), res.get(n, t2)) if n and t1 and t2 else None
    rows.append(["bf16 causal prefill, L = 4096, d = 128: 2 threads ≥ 1.8× 1 thread",
                 "%s on the %s path (%s ms → %s ms)" % (
                     times(sc), PATHS.get(p, "–"), ms(res.get(n, t1)) if n else "–",
                     ms(res.get(n, t2)) if n and t2 else "–"),
                 status(None if sc is None else sc >= 1.8)])

    dec = DECODE % (16384, 1)
    for ty in (1, 2):
        for t in (1, 2):
            tt = t if t in threads else None
            n16 = DECODE16 % (16384, 1, ty)
            r = ratio(res.get(n16, tt), res.get(dec, tt))
            rows.append(["Decode GQA 32/8, d = 128, 16k cache, float q with %s KV, %s: ≤ 0.55× the float decode time"
                         % (TYPES16[ty], threads_name(t)),
                         "%s (%s %s ms, float %s ms)" % (
                             times(r), TYPES16[ty], ms(res.get(n16, tt)), ms(res.get(dec, tt))),
                         status(None if r is None else r <= 0.55)])
            gb, tri = res.get(n16, tt, "GBps"), res.get(TRIAD, tt, "GBps")
            f = ratio(gb, tri)
            rows.append(["Decode GQA 32/8, d = 128, 16k cache, float q with %s KV, %s: KV bytes read per second "
                         "≥ 75%% of the triad" % (TYPES16[ty], threads_name(t)),
                         "%s GB/s = %s of triad (%s GB/s)" % (num(gb), pct(f), num(tri)),
                         status(None if f is None else f >= 0.75)])

    sp, text, _, _ = vs_float(4096, 128, 1, t1, paths=(1,))
    path1 = [(ratio(res.get(float_prefill_of(x), t1), res.get(x, t1)), x) for x in res.names("attend_prefill16")
             if parse_args(x)["path"] == 1]
    path1 = [(r, x) for r, x in path1 if r is not None]
    if path1:
        lo, lx = min(path1)
        a = parse_args(lx)
        text += "; lowest of its %d shapes %s (%s, d = %d, L = %d, %s)" % (
            len(path1), times(lo), TYPES16.get(a["type"], "?"), a["d"], a["L"], mask_name(a["causal"]))
    rows.append(["AVX512-BF16 path forced: prefill ≥ 1.5× float (bf16 causal, L = 4096, d = 128, H = 8, 1 thread)",
                 text, status(None if sp is None else sp >= 1.5)])

    pairs = []
    for t in threads:
        for x in res.names("attend_prefill16"):
            r = ratio(res.get(float_prefill_of(x), t), res.get(x, t))
            if r is not None:
                pairs.append((r, x, t))
        for x in res.names("attend_decode16"):
            r = ratio(res.get(DECODE % (parse_args(x)["S"], parse_args(x)["Lq"]), t), res.get(x, t))
            if r is not None:
                pairs.append((r, x, t))
    if pairs:
        slower = sorted(q for q in pairs if q[0] < 1.0)
        worst = min(pairs)
        text = "%d of %d 16-bit rows slower than float; lowest %s (%s, %s)" % (
            len(slower), len(pairs), times(worst[0]), short(worst[1]), threads_name(worst[2]))
        if slower:
            text += "; slowest: " + ", ".join("%s %s %s" % (short(n), threads_name(t), times(r))
                                              for r, n, t in slower[:6])
            if len(slower) > 6:
                text += " and %d more" % (len(slower) - 6)
        rows.append(["No shape in the suite slower than the float kernel on the same values (float inputs "
                     "unrounded here)", text, status(not slower)])
    else:
        rows.append(["No shape in the suite slower than the float kernel on the same values", "–", status(None)])
    return rows


def targets_issue15(res, threads):
    rows = []
    dec, bf = DECODE % (16384, 1), DECODE16 % (16384, 1, 1)
    cache, matrix = DECODE_Q8 % (16384, 1, 2), DECODE_Q8 % (16384, 1, 1)
    for t in (1, 2):
        tt = t if t in threads else None
        for base, what, goal in ((dec, "float", 0.35), (bf, "bf16-cache", 0.7)):
            r, rm = ratio(res.get(cache, tt), res.get(base, tt)), ratio(res.get(matrix, tt), res.get(base, tt))
            rows.append(["Decode with a q8 cache, GQA 32/8, d = 128, 16k cache, %s: ≤ %.2g× the %s decode time"
                         % (threads_name(t), goal, what),
                         "%s (q8 KVCache %s ms, %s %s ms); a Q8Matrix (float scales): %s" % (
                             times(r), ms(res.get(cache, tt)), what.replace("-cache", ""), ms(res.get(base, tt)),
                             times(rm)),
                         status(None if r is None else r <= goal)])
    tt = next((t for t in threads if res.get(cache, t, "KV_MiB") is not None and res.get(dec, t, "KV_MiB")), None)
    fb = res.get(dec, tt, "KV_MiB")
    r, rm = ratio(res.get(cache, tt, "KV_MiB"), fb), ratio(res.get(matrix, tt, "KV_MiB"), fb)
    rows.append(["q8 cache at most 0.27× the float bytes, scales included (16k cache)",
                 "%s (q8 KVCache %s MiB, float %s MiB); a Q8Matrix (float scales): %s" % (
                     times(r), num(res.get(cache, tt, "KV_MiB"), 1), num(fb, 1), times(rm)),
                 status(None if r is None else r <= 0.27)])
    t1 = 1 if 1 in threads else None
    for Lq, Lk in ((1024, 1024), (256, 4096)):
        q8, b16 = PREFILL_CACHE % (Lq, Lk, 3), PREFILL_CACHE % (Lq, Lk, 1)
        r = ratio(res.get(b16, t1), res.get(q8, t1))
        rows.append(["Prefill over a q8 cache ≥ 0.9× as fast as over a bf16 cache (Lq = %d, Lk = %d, GQA 32/8, "
                     "d = 128, 1 thread)" % (Lq, Lk),
                     "%s (q8 %s ms, bf16 %s ms)" % (times(r), ms(res.get(q8, t1)), ms(res.get(b16, t1))),
                     status(None if r is None else r >= 0.9)])
    return rows


def targets_issue16(res, threads):
    rows = []
    t2 = 2 if 2 in threads else None
    rg, lp, pg = ("decode_%s" % f + SERVING_DECODES for f in ("ragged", "loop", "paged"))
    sp = ratio(res.get(lp, t2), res.get(rg, t2))
    rows.append(["32 decodes over caches of 256..8192 keys, 2 threads: one ragged call ≥ 1.5× faster than the loop",
                 "%s (ragged %s ms, loop %s ms)" % (times(sp), ms(res.get(rg, t2)), ms(res.get(lp, t2))),
                 status(None if sp is None else sp >= 1.5)])
    gb = res.get(rg, t2, "GBps")
    tri = res.get(SERVING_PREFIX + TRIAD, t2, "GBps")
    tri512 = res.get(SERVING_PREFIX + "triad/MiB:512/real_time", t2, "GBps")
    f = ratio(gb, tri)
    rows.append(["32 decodes, 2 threads: KV bytes read ≥ 75% of the 2-thread triad",
                 "%s GB/s = %s of the triad (%s GB/s; %s of the 512 MiB triad, %s GB/s)" % (
                     num(gb), pct(f), num(tri), pct(ratio(gb, tri512)), num(tri512)),
                 status(None if f is None else f >= 0.75)])
    prg, plp = "prefill_ragged" + SERVING_PREFILLS, "prefill_loop" + SERVING_PREFILLS
    sp = ratio(res.get(plp, t2), res.get(prg, t2))
    rows.append(["64 causal prefills of 128 tokens, 2 threads: ≥ 1.3× faster than the loop",
                 "%s (ragged %s ms, loop %s ms)" % (times(sp), ms(res.get(prg, t2)), ms(res.get(plp, t2))),
                 status(None if sp is None else sp >= 1.3)])
    g, one = res.get(prg, t2, "GFLOPS"), res.get(SERVING_ONE, t2, "GFLOPS")
    f = ratio(g, one)
    rows.append(["64 causal prefills of 128 tokens, 2 threads: ≥ 80% of the useful GFLOP/s of one 1024-token prefill",
                 "%s GFLOP/s = %s of %s GFLOP/s" % (num(g), pct(f), num(one)),
                 status(None if f is None else f >= 0.8)])
    r = ratio(res.get(pg, t2), res.get(rg, t2))
    rows.append(["The same 32 decodes through the paged cache (16-token pages), 2 threads: within 10% of the "
                 "contiguous ragged call",
                 "%s the time (paged %s ms, ragged %s ms)" % (times(r), ms(res.get(pg, t2)), ms(res.get(rg, t2))),
                 status(None if r is None else r <= 1.10)])
    return rows


def targets_issue17(res, threads):
    rows = []
    t1 = 1 if 1 in threads else None
    off = DECODE_MOD % (16384, 1, 0)
    for m in (1, 2, 3):
        n = DECODE_MOD % (16384, 1, m)
        r = ratio(res.get(n, t1), res.get(off, t1))
        rows.append(["Decode GQA 32/8, d = 128, 16k cache, 1 thread, %s on: at most 5%% slower than off" % MODS[m],
                     "%s (%s ms, off %s ms)" % (delta(r), ms(res.get(n, t1)), ms(res.get(off, t1))),
                     status(None if r is None else r <= 1.05)])
    bases = []
    for n in res.names("attend_prefill_mod"):
        b = without(n, "mod")
        if b not in bases:
            bases.append(b)
    for m in (1, 2, 3):
        found = []
        for b in bases:
            on = b.replace("/real_time", "/mod:%d/real_time" % m)
            r = ratio(res.get(on, t1), res.get(b.replace("/real_time", "/mod:0/real_time"), t1))
            if r is not None:
                a = parse_args(b)
                found.append((r, "d = %d, L = %d, %s" % (a["d"], a["L"], mask_name(a["causal"]))))
        text = "; ".join("%s %s" % (shape, delta(r)) for r, shape in found) if found else "–"
        rows.append(["Prefill H = 8, 1 thread, %s on: at most 5%% slower than off (every shape)" % MODS[m], text,
                     status(None if not found else max(r for r, _ in found) <= 1.05)])
    rows.append(["With the modifiers off, no shape slower than before beyond noise (one A/B run)",
                 "needs an A/B run against the build before issue 17; this report measures one build", status(None)])
    return rows


BACKWARD_MEMORY = "Backward extra memory beyond inputs, outputs and gradients ≤ 32 MiB at L = 16384, d = 64, H = 8"


def targets_issue18(res, threads):
    rows = []
    t1 = 1 if 1 in threads else None
    t2 = 2 if 2 in threads else None
    fw, bk, nv = (BACKWARD % (f, 4096, 128, 8, 1) for f in ("attend_forward", "attend_backward", "naive_backward"))
    r = ratio(res.get(bk, t1), res.get(fw, t1))
    rows.append(["Backward causal, L = 4096, d = 128, H = 8, 1 thread: at most 3× the forward time (2.5× ideal)",
                 "%s (backward %s ms, forward %s ms)" % (times(r), ms(res.get(bk, t1)), ms(res.get(fw, t1))),
                 status(None if r is None else r <= 3.0)])
    sp = ratio(res.get(nv, t1), res.get(bk, t1))
    rows.append(["Backward causal, L = 4096, d = 128, H = 8, 1 thread: ≥ 2× faster than the naive materializing "
                 "backward",
                 "%s (attend %s ms, naive %s ms)" % (times(sp), ms(res.get(bk, t1)), ms(res.get(nv, t1))),
                 status(None if sp is None else sp >= 2.0)])
    peak = sorted((n, t) for (n, t) in res.rows if n.startswith("attend_backward_peak_memory/L:16384/d:64/H:8/"))
    if peak:
        extras = [(res.rows[k].get("extra_MiB"), k) for k in peak]
        extras = [(e, k) for e, k in extras if e is not None]
        worst = max(extras)[0] if extras else None
        text = "; ".join("%s: %s MiB beyond inputs (%s MiB) and gradients (%s MiB)" % (
            mask_name(parse_args(k[0])["causal"]), num(e, 1), num(res.rows[k].get("inputs_MiB"), 0),
            num(res.rows[k].get("gradients_MiB"), 0)) for e, k in extras) or "–"
        rows.append([BACKWARD_MEMORY,
                     text, status(None if worst is None else worst <= 32)])
    else:
        rows.append([BACKWARD_MEMORY,
                     "–", status(None)])
    sc = ratio(res.get(bk, t1), res.get(bk, t2)) if t1 and t2 else None
    text = "%s (%s ms → %s ms)" % (times(sc), ms(res.get(bk, t1)), ms(res.get(bk, t2) if t2 else None))
    if t1 and t2:
        scal = [(ratio(res.get(x, t1), res.get(x, t2)), x) for x in res.names("attend_backward")]
        scal = [(x, n) for x, n in scal if x is not None]
        if scal:
            lo, ln = min(scal)
            a = parse_args(ln)
            text += "; lowest of the %d backward shapes %s (G = %d, d = %d, L = %d, %s)" % (
                len(scal), times(lo), a["G"], a["d"], a["L"], mask_name(a["causal"]))
    rows.append(["Backward causal, L = 4096, d = 128, H = 8: two threads ≥ 1.7× one thread", text,
                 status(None if sc is None else sc >= 1.7)])
    return rows


def status(ok):
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def targets(res, threads):
    """The targets of every issue: a list of (title, rows), each row [target, measured, status]."""
    return [("Issue 4: float prefill and decode", targets_issue4(res, threads)),
            ("Issue 14: bf16 and fp16 inputs and KV caches", targets_issue14(res, threads)),
            ("Issue 15: 8-bit KV cache", targets_issue15(res, threads)),
            ("Issue 16: serving, ragged batches and a paged KV cache", targets_issue16(res, threads)),
            ("Issue 17: sinks and ALiBi", targets_issue17(res, threads)),
            ("Issue 18: backward", targets_issue18(res, threads))]


def targets_issue4(res, threads):
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
              ("naive", 0): ("tab:blue", "--", "o"), ("naive", 1): ("tab:orange", "--", "s"),
              ("bf16", 0): ("tab:green", "-", "^"), ("bf16", 1): ("tab:red", "-", "v")}
    # bf16 prefill (MHA) on the fastest 16-bit path in the run: the path the library takes by default.
    bf16 = [n for n in res.names("attend_prefill16") if parse_args(n)["type"] == 1
            and parse_args(n)["G"] == parse_args(n)["H"]]
    bf16_path = max((parse_args(n)["path"] for n in bf16), default=None)
    bf16 = [n for n in bf16 if parse_args(n)["path"] == bf16_path]
    for i, d in enumerate(ds):
        top = 0.0
        for j, t in enumerate(threads):
            ax = axes[i][j]
            for impl in ("attend", "naive", "bf16"):
                for causal in (0, 1):
                    pts = []
                    for n in (bf16 if impl == "bf16" else names):
                        a = parse_args(n)
                        if a["d"] != d or a["causal"] != causal:
                            continue
                        g = res.get(n if impl != "naive" else partner(n, "attend_", "naive_"), t, "GFLOPS")
                        if g is not None:
                            pts.append((a["L"], g))
                            top = max(top, g)
                    if pts:
                        pts.sort()
                        color, line, marker = styles[(impl, causal)]
                        what = "attend bf16 (%s path)" % PATHS.get(bf16_path, "?") if impl == "bf16" else impl
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linestyle=line, marker=marker,
                                markerfacecolor=color if impl != "naive" else "white",
                                label="%s, %s" % (what, "causal" if causal else "no mask"))
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
    fig.suptitle("Prefill, H = 8: attend in fp32%s vs naive materializing attention in fp32"
                 % (" and bf16" if bf16 else ""))
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
            res.add_file(os.path.join(json_dir, name), SERVING_PREFIX if name.startswith("serving_bench") else "")
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
