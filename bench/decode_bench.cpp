// Decode benchmarks: a few new queries over a long KV cache, GQA with 32 query heads over 8 kv heads, d = 128,
// against the naive baseline (per query head, materialized scores over the whole cache), and this machine's
// memory bandwidth measured in the same run.
//
//   attend_decode/S:<cache>/Lq:<n>/real_time    attend::multi_head_attention(q [n, 32*128], k, v [S, 8*128],
//                                               Heads{32, 8}, Mask::causal())
//   naive_decode/...same args...                bench::naive_attention, one query head at a time
//   attend_decode16/...same args.../type:<1|2>  float q over k, v rounded to bfloat16 (1) or half (2): a 16-bit
//                                               KV cache (GBps counts the 16-bit bytes read)
//   triad/MiB:<per array>/real_time             a[i] = b[i] + s * c[i] (STREAM triad, float, OpenMP static split)
//   read/MiB:<array>/real_time                  sum of an array (read-only bandwidth)
//
// Counters: GBps (attention: KV bytes read = S * 8 kv heads * 128 * 2 (K and V) * 4 bytes per call; triad: 3
// arrays; read: 1 array, per second of real time), GFLOPS (useful attention FLOPs), omp_threads.

#include <cstdlib>
#include <memory>

#include "bench_common.hpp"

namespace {

using bench::Index;
using bench::Mat;

constexpr int kQueryHeads = 32;
constexpr int kKvHeads = 8;
constexpr Index kHeadDim = 128;

void decode_counters(benchmark::State& state, Index cache, Index lq, std::size_t bytes_per_value = sizeof(float)) {
  bench::common_counters(state);
  const double kv_bytes = double(cache) * kKvHeads * kHeadDim * 2 * double(bytes_per_value);
  state.counters["GBps"] = bench::rate(1e-9 * kv_bytes);
  state.counters["GFLOPS"] =
      bench::rate(1e-9 * bench::attention_flops(lq, cache, kHeadDim, kQueryHeads, /*causal=*/true, /*exact=*/true));
  state.counters["KV_MiB"] = kv_bytes / (1 << 20);
}

void attend_decode(benchmark::State& state) {
  const Index cache = state.range(0), lq = state.range(1);
  const bench::Inputs& in = bench::inputs(lq, cache, kQueryHeads * kHeadDim, kKvHeads * kHeadDim, kKvHeads * kHeadDim);
  attend::Options options;
  options.mask = attend::Mask::causal();
  for (auto _ : state) {
    Mat out = attend::multi_head_attention(in.q, in.k, in.v, attend::Heads{kQueryHeads, kKvHeads}, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  decode_counters(state, cache, lq);
}

void naive_decode(benchmark::State& state) {
  const Index cache = state.range(0), lq = state.range(1);
  const bench::Inputs& in = bench::inputs(lq, cache, kQueryHeads * kHeadDim, kKvHeads * kHeadDim, kKvHeads * kHeadDim);
  Mat scores(lq, cache), out(lq, kQueryHeads * kHeadDim);
  for (auto _ : state) {
    bench::naive_attention(in.q, in.k, in.v, kQueryHeads, kKvHeads, /*causal=*/true, scores, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  decode_counters(state, cache, lq);
}

void decode_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"S", "Lq"});
  for (int cache : {4096, 16384})
    for (int lq : {1, 4}) b->Args({cache, lq});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(attend_decode)->Apply(decode_args);
BENCHMARK(naive_decode)->Apply(decode_args);

template <class S>
void decode16(benchmark::State& state, Index cache, Index lq) {
  const bench::Inputs& in = bench::inputs(lq, cache, kQueryHeads * kHeadDim, kKvHeads * kHeadDim, kKvHeads * kHeadDim);
  const bench::Inputs16<S>& kv = bench::inputs16<S>(in);
  attend::Options options;
  options.mask = attend::Mask::causal();
  for (auto _ : state) {
    Mat out = attend::multi_head_attention(in.q, kv.k, kv.v, attend::Heads{kQueryHeads, kKvHeads}, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(attend::bf16_path());
}

void attend_decode16(benchmark::State& state) {
  const Index cache = state.range(0), lq = state.range(1);
  if (state.range(2) == 1)
    decode16<Eigen::bfloat16>(state, cache, lq);
  else
    decode16<Eigen::half>(state, cache, lq);
  decode_counters(state, cache, lq, 2);
}

void decode16_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"S", "Lq", "type"});
  for (int type : {1, 2})
    for (int cache : {4096, 16384})
      for (int lq : {1, 4}) b->Args({cache, lq, type});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(attend_decode16)->Apply(decode16_args);

// ------------------------------------------------------------------------------------------------------------
// Memory bandwidth of this machine, same run
// ------------------------------------------------------------------------------------------------------------

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Array = std::unique_ptr<float[], FreeDeleter>;

// 64-byte aligned, first touched by the threads that will use each part (static split, like the kernels' loops).
Array make_array(Index n, float value) {
  const std::size_t bytes = ((std::size_t(n) * sizeof(float) + 63) / 64) * 64;
  Array a(static_cast<float*>(std::aligned_alloc(64, bytes)));
  float* p = a.get();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (Index i = 0; i < n; ++i) p[i] = value;
  return a;
}

void triad(benchmark::State& state) {
  const Index n = state.range(0) * (Index(1) << 20) / Index(sizeof(float));
  Array a = make_array(n, 0.0f), b = make_array(n, 1.0f), c = make_array(n, 2.0f);
  float* __restrict pa = a.get();
  const float* __restrict pb = b.get();
  const float* __restrict pc = c.get();
  const float s = 3.0f;
  for (auto _ : state) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (Index i = 0; i < n; ++i) pa[i] = pb[i] + s * pc[i];
    benchmark::DoNotOptimize(pa);
    benchmark::ClobberMemory();
  }
  bench::common_counters(state);
  state.counters["GBps"] = bench::rate(1e-9 * 3.0 * double(n) * sizeof(float));
}

void read(benchmark::State& state) {
  const Index n = state.range(0) * (Index(1) << 20) / Index(sizeof(float));
  Array a = make_array(n, 1.0f);
  const float* __restrict pa = a.get();
  for (auto _ : state) {
    float sum = 0;
    // Contiguous parts per thread, each summed by Eigen's vectorized reduction (several accumulators).
#if defined(_OPENMP)
#pragma omp parallel reduction(+ : sum)
#endif
    {
      Index part = 0, parts = 1;
#if defined(_OPENMP)
      part = omp_get_thread_num();
      parts = omp_get_num_threads();
#endif
      const Index begin = n * part / parts, end = n * (part + 1) / parts;
      sum += Eigen::Map<const Eigen::ArrayXf>(pa + begin, end - begin).sum();
    }
    benchmark::DoNotOptimize(sum);
  }
  bench::common_counters(state);
  state.counters["GBps"] = bench::rate(1e-9 * double(n) * sizeof(float));
}

// 64 MiB per array (192 MiB in all, more than the 16384-token KV cache of 128 MiB); read over 128 MiB, the size
// of that cache.
BENCHMARK(triad)->ArgName("MiB")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(read)->ArgName("MiB")->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();

void register_extra(int&, char**) {}

}  // namespace

ATTEND_BENCH_MAIN(register_extra)
