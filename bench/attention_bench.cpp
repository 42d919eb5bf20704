// Prefill benchmarks: attend::multi_head_attention against the naive materializing baseline, same shapes, same
// binary; and Eigen's SGEMM on this machine as the yardstick.
//
//   attend_prefill/L:<L>/d:<d>/H:<H>/G:<G>/causal:<0|1>/real_time   attend::multi_head_attention, q [L, H*d],
//                                                                    k, v [L, G*d] (G == H: MHA, G < H: GQA/MQA)
//   naive_prefill/...same args...                                    bench::naive_attention (bench_common.hpp)
//   attend_prefill16/...same args.../type:<1|2>/path:<0|1|2>         the same inputs rounded to bfloat16 (type 1) or
//                                                                    half (2), q, k, v and the output all 16-bit, on
//                                                                    the 16-bit path generic (0), avx512bf16 (1) or
//                                                                    amx (2) (rows for paths this CPU lacks: skipped;
//                                                                    the label names the path and, on avx512bf16,
//                                                                    its products: widen or dot)
//   attend_prefill_mod/...same args.../mod:<0-3>                     attend_prefill with score modifiers: none (0),
//                                                                    a sink per head (1), ALiBi slopes (2), both (3)
//   attend_prefill_cache/Lq:<n>/Lk:<n>/type:<0-3>                    chunked prefill of a layer: float q (GQA 32/8,
//                                                                    d = 128, causal) over a KVCache<float, S> of
//                                                                    float (0), bfloat16 (1), half (2) or q8 (3)
//   sgemm/M:<M>/K:<K>/N:<N>/real_time                                c.noalias() = a * b, row-major float
//   amx_gemm/M:<M>/K:<K>/N:<N>/real_time                             C = A B on AMX tiles (bfloat16, float C): the
//                                                                    16-bit mainloop's tile product alone, this
//                                                                    machine's 16-bit ceiling as SGEMM is float's
//   attend_peak_memory/L:<L>/d:<d>/H:<H>/causal:<0|1>/real_time       only with --attend_peak_memory[=L]: extra
//                                                                    resident memory of one prefill (run it in a
//                                                                    process of its own, see scripts/bench_report.py)
//
// Counters: GFLOPS (useful FLOPs per second of real time: 4*Lq*Lk*d per query head, halved for causal),
// omp_threads (OMP_NUM_THREADS decides it). Example:
//   OMP_NUM_THREADS=1 ./attention_bench --benchmark_filter='prefill/L:4096/d:128' --benchmark_min_time=0.05

#include <cstdio>
#include <cstring>
#include <string>

#include "bench_common.hpp"

namespace {

using bench::Index;
using bench::Mat;

// ------------------------------------------------------------------------------------------------------------
// Prefill
// ------------------------------------------------------------------------------------------------------------

struct PrefillShape {
  Index L, d;
  int H, G;
  bool causal;
};

PrefillShape prefill_shape(const benchmark::State& state) {
  return {state.range(0), state.range(1), int(state.range(2)), int(state.range(3)), state.range(4) != 0};
}

void prefill_counters(benchmark::State& state, const PrefillShape& s) {
  bench::common_counters(state);
  state.counters["GFLOPS"] = bench::rate(1e-9 * bench::attention_flops(s.L, s.L, s.d, s.H, s.causal, false));
}

void attend_prefill(benchmark::State& state) {
  const PrefillShape s = prefill_shape(state);
  const bench::Inputs& in = bench::inputs(s.L, s.L, s.H * s.d, s.G * s.d, s.G * s.d);
  attend::Options options;
  if (s.causal) options.mask = attend::Mask::causal();
  for (auto _ : state) {
    Mat out = attend::multi_head_attention(in.q, in.k, in.v, attend::Heads{s.H, s.G}, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  prefill_counters(state, s);
}

void naive_prefill(benchmark::State& state) {
  const PrefillShape s = prefill_shape(state);
  const bench::Inputs& in = bench::inputs(s.L, s.L, s.H * s.d, s.G * s.d, s.G * s.d);
  Mat scores(s.L, s.L), out(s.L, s.H * s.d);
  for (auto _ : state) {
    bench::naive_attention(in.q, in.k, in.v, s.H, s.G, s.causal, scores, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  prefill_counters(state, s);
}

// The same argument list for both, so every attend row has its naive twin.
void prefill_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"L", "d", "H", "G", "causal"});
  // MHA, H = 8: the full grid.
  for (int causal : {0, 1})
    for (int d : {64, 128})
      for (int L : {512, 1024, 2048, 4096, 8192}) b->Args({L, d, 8, 8, causal});
  // GQA (8 query heads over 2 kv heads) and MQA (over 1), d = 128.
  for (int G : {2, 1})
    for (int causal : {0, 1})
      for (int L : {1024, 4096}) b->Args({L, 128, 8, G, causal});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(attend_prefill)->Apply(prefill_args);
// The naive baseline at L = 8192 needs one 256 MiB score matrix (reused by every head): kept.
BENCHMARK(naive_prefill)->Apply(prefill_args);

// ------------------------------------------------------------------------------------------------------------
// 16-bit prefill
// ------------------------------------------------------------------------------------------------------------

/// Runs `body` with the 16-bit path capped at `path`, or skips the row when this machine lacks that path.
template <class Body>
void on_path(benchmark::State& state, long path, Body&& body) {
  attend::detail::set_bf16_path(static_cast<attend::detail::Bf16Path>(path));
  if (static_cast<long>(attend::detail::bf16_path_now()) != path) {
    attend::detail::reset_bf16_path();
    state.SkipWithError("this CPU lacks the path");
    return;
  }
  body();
  // The path, and on the avx512bf16 path the tile products the CPU's vendor chose (cpu.hpp's Bf16Products).
  std::string label = attend::bf16_path();
  if (path == 1) label += std::string("/") + attend::detail::products_name(attend::detail::bf16_products_now());
  state.SetLabel(label);
  attend::detail::reset_bf16_path();
}

template <class S>
void prefill16(benchmark::State& state, const PrefillShape& s) {
  const bench::Inputs16<S>& in = bench::inputs16<S>(bench::inputs(s.L, s.L, s.H * s.d, s.G * s.d, s.G * s.d));
  attend::Options options;
  if (s.causal) options.mask = attend::Mask::causal();
  for (auto _ : state) {
    attend::Matrix<S> out = attend::multi_head_attention(in.q, in.k, in.v, attend::Heads{s.H, s.G}, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
}

void attend_prefill16(benchmark::State& state) {
  const PrefillShape s = prefill_shape(state);
  on_path(state, state.range(6), [&] {
    if (state.range(5) == 1)
      prefill16<Eigen::bfloat16>(state, s);
    else
      prefill16<Eigen::half>(state, s);
  });
  prefill_counters(state, s);
}

void prefill16_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"L", "d", "H", "G", "causal", "type", "path"});
  for (int path : {2, 1, 0})
    for (int causal : {0, 1})
      for (int d : {64, 128})
        for (int L : {1024, 4096}) b->Args({L, d, 8, 8, causal, 1, path});
  // half (rounded to bfloat16 by the AMX and AVX-512 paths), GQA, and the head dims that are not multiples of 32.
  for (int path : {2, 0}) b->Args({4096, 128, 8, 8, 1, 2, path});
  for (int G : {2, 1}) b->Args({4096, 128, 8, G, 1, 1, 2});
  for (int d : {80, 96}) b->Args({4096, d, 8, 8, 1, 1, 2});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(attend_prefill16)->Apply(prefill16_args);

// ------------------------------------------------------------------------------------------------------------
// Score modifiers: sinks and ALiBi
// ------------------------------------------------------------------------------------------------------------

/// Options with modifier set `mod`: 0 none, 1 a sink per head, 2 ALiBi slopes, 3 both (bench::modifiers).
void attend_prefill_mod(benchmark::State& state) {
  const PrefillShape s = prefill_shape(state);
  const bench::Inputs& in = bench::inputs(s.L, s.L, s.H * s.d, s.G * s.d, s.G * s.d);
  attend::Options options = bench::modifiers(state.range(5), s.H);
  if (s.causal) options.mask = attend::Mask::causal();
  for (auto _ : state) {
    Mat out = attend::multi_head_attention(in.q, in.k, in.v, attend::Heads{s.H, s.G}, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  prefill_counters(state, s);
}

BENCHMARK(attend_prefill_mod)
    ->ArgNames({"L", "d", "H", "G", "causal", "mod"})
    ->ArgsProduct({{4096}, {128}, {8}, {8}, {0, 1}, {0, 1, 2, 3}})
    ->ArgsProduct({{1024}, {64}, {8}, {8}, {1}, {0, 1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// ------------------------------------------------------------------------------------------------------------
// Prefill over a cache
// ------------------------------------------------------------------------------------------------------------

// Chunked prefill as a layer runs it: Lq new float queries (GQA 32/8, d = 128, bottom-right causal) over the Lk
// tokens of a KVCache<float, S> holding float (type 0), bfloat16 (1), half (2) or q8 (3) keys and values, read by
// the kernel as the layer reads them. The 16-bit and 8-bit tiles are widened to float as they are read.
template <class S>
void prefill_cache(benchmark::State& state, Index lq, Index lk) {
  constexpr int kHeads = 32, kKvHeads = 8;
  constexpr Index kD = 128;
  const bench::Inputs& in = bench::inputs(lq, lk, kHeads * kD, kKvHeads * kD, kKvHeads * kD);
  attend::KVCache<float, S> cache;
  cache.append(in.k, in.v);
  attend::Options options;
  options.mask = attend::Mask::causal();
  const attend::detail::ConstRowsRef<float> q(in.q);
  Mat out(lq, kHeads * kD);
  for (auto _ : state) {
    attend::detail::attention(attend::detail::make_problem(q, cache.keys(), cache.values(), nullptr,
                                                           attend::Heads{kHeads, kKvHeads}, options),
                              out, nullptr);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  bench::common_counters(state);
  state.counters["GFLOPS"] = bench::rate(1e-9 * bench::attention_flops(lq, lk, kD, kHeads, true, true));
  state.counters["KV_MiB"] = double(cache.bytes()) / (1 << 20);
}

void attend_prefill_cache(benchmark::State& state) {
  const Index lq = state.range(0), lk = state.range(1);
  switch (state.range(2)) {
    case 0:
      prefill_cache<float>(state, lq, lk);
      break;
    case 1:
      prefill_cache<Eigen::bfloat16>(state, lq, lk);
      break;
    case 2:
      prefill_cache<Eigen::half>(state, lq, lk);
      break;
    default:
      prefill_cache<attend::q8>(state, lq, lk);
      break;
  }
}

BENCHMARK(attend_prefill_cache)
    ->ArgNames({"Lq", "Lk", "type"})
    ->ArgsProduct({{1024}, {1024}, {0, 1, 2, 3}})
    ->ArgsProduct({{256}, {4096}, {0, 1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// ------------------------------------------------------------------------------------------------------------
// SGEMM reference
// ------------------------------------------------------------------------------------------------------------

void sgemm(benchmark::State& state) {
  const Index m = state.range(0), k = state.range(1), n = state.range(2);
  const Mat a = bench::random_matrix(m, k, 11), b = bench::random_matrix(k, n, 12);
  Mat c(m, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  bench::common_counters(state);
  state.counters["GFLOPS"] = bench::rate(2e-9 * double(m) * double(k) * double(n));
}

// 1024^3 is the reference of the report; then the whole-sequence products of attention at L = 4096
// (S = Q K^T: L x d x L, O = P V: L x L x d) and the per-tile products of a 256 x 256 tile.
BENCHMARK(sgemm)
    ->ArgNames({"M", "K", "N"})
    ->Args({1024, 1024, 1024})
    ->Args({4096, 64, 4096})
    ->Args({4096, 4096, 64})
    ->Args({4096, 128, 4096})
    ->Args({4096, 4096, 128})
    ->Args({256, 64, 256})
    ->Args({256, 256, 64})
    ->Args({256, 128, 256})
    ->Args({256, 256, 128})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// ------------------------------------------------------------------------------------------------------------
// AMX bfloat16 GEMM reference
// ------------------------------------------------------------------------------------------------------------

#if defined(ATTEND_X86_DISPATCH)
// C [M, N] = A [M, K] B [K, N], A row-major bfloat16, B packed in the 16-bit mainloop's tiles (as keys: the columns
// of B are its rows there), C float: AmxProducts::scores over blocks of 256 rows of A and 256 columns of B, the
// way the mainloop calls it.
void amx_gemm(benchmark::State& state) {
  namespace detail = attend::detail;
  const Index m = state.range(0), k = state.range(1), n = state.range(2);
  if (detail::bf16_path_now() != detail::Bf16Path::amx) {
    state.SkipWithError("this machine has no AMX (or refused the tile state)");
    return;
  }
  const attend::Matrix<Eigen::bfloat16> a = bench::random_matrix(m, k, 11).cast<Eigen::bfloat16>();
  const attend::Matrix<Eigen::bfloat16> bt = bench::random_matrix(n, k, 12).cast<Eigen::bfloat16>();
  detail::VnniKeys packed;
  packed.pack(detail::GroupKeys<Eigen::bfloat16>{bt, bt.leftCols(16)}, 0);
  constexpr Index kRows = 256, kCols = 256;
  detail::Tile16Workspace ws(kRows, kCols, k, 16);
  for (Index i = 0; i < kRows; ++i) std::memcpy(ws.q.data() + i * ws.d_pad, a.row(i).data(), std::size_t(k) * 2);
  const detail::Tile16Operands w = ws.operands();
  detail::AmxProducts::configure();
  for (auto _ : state) {
    for (Index r = 0; r < m; r += kRows)  // every row block of A reuses the one loaded (the product is the same)
      for (Index c = 0; c < n; c += kCols) detail::AmxProducts::scores(w, packed, 0, kRows / 16, c, kCols);
    benchmark::DoNotOptimize(ws.s.data());
    benchmark::ClobberMemory();
  }
  detail::AmxProducts::release();
  bench::common_counters(state);
  state.counters["GFLOPS"] = bench::rate(2e-9 * double(m) * double(k) * double(n));
}
BENCHMARK(amx_gemm)
    ->ArgNames({"M", "K", "N"})
    ->Args({4096, 64, 4096})
    ->Args({4096, 128, 4096})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
#endif

// ------------------------------------------------------------------------------------------------------------
// Peak memory of one prefill (opt-in)
// ------------------------------------------------------------------------------------------------------------

// A field of /proc/self/status in KiB ("VmRSS", "VmHWM"), -1 when unavailable.
long status_kib(const char* field) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long value = -1;
  const std::size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') {
      value = std::strtol(line + n + 1, nullptr, 10);
      break;
    }
  std::fclose(f);
  return value;
}

// Resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0).
bool reset_peak() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

void attend_peak_memory(benchmark::State& state) {
  const Index L = state.range(0), d = state.range(1);
  const int H = int(state.range(2));
  const bool causal = state.range(3) != 0;
  const bench::Inputs& in = bench::inputs(L, L, H * d, H * d, H * d);
  attend::Options options;
  if (causal) options.mask = attend::Mask::causal();
  const double mib = 1.0 / 1024.0;
  double extra = 0, peak = 0;
  bool reset = true;
  for (auto _ : state) {
    state.PauseTiming();
    reset = reset_peak() && reset;
    const long before = status_kib("VmRSS");
    state.ResumeTiming();
    Mat out = attend::multi_head_attention(in.q, in.k, in.v, attend::Heads{H, H}, options);
    benchmark::DoNotOptimize(out.data());
    state.PauseTiming();
    const long hwm = status_kib("VmHWM");
    const double out_kib = double(out.size()) * sizeof(float) / 1024.0;
    extra = std::max(extra, (double(hwm - before) - out_kib) * mib);
    peak = std::max(peak, double(hwm) * mib);
    state.ResumeTiming();
  }
  bench::common_counters(state);
  state.counters["GFLOPS"] = bench::rate(1e-9 * bench::attention_flops(L, L, d, H, causal, false));
  state.counters["inputs_MiB"] = double(in.q.size() + in.k.size() + in.v.size()) * sizeof(float) / (1 << 20);
  state.counters["output_MiB"] = double(L) * H * d * sizeof(float) / (1 << 20);
  state.counters["extra_MiB"] = extra;          // peak resident growth during the call beyond the output
  state.counters["peak_MiB"] = peak;            // VmHWM of the process
  state.counters["hwm_reset"] = reset ? 1 : 0;  // 0: VmHWM was the lifetime peak (trust it in a fresh process only)
}

void register_extra(int& argc, char** argv) {
  const std::string peak = bench::take_flag(argc, argv, "attend_peak_memory", "none");
  if (peak == "none") return;
  const long L = peak.empty() ? 16384 : std::stol(peak);
  benchmark::RegisterBenchmark("attend_peak_memory", attend_peak_memory)
      ->ArgNames({"L", "d", "H", "causal"})
      ->Args({L, 64, 8, 0})
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

}  // namespace

ATTEND_BENCH_MAIN(register_extra)
