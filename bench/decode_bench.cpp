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

#include "bandwidth.hpp"
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
// Memory bandwidth of this machine, same run (bandwidth.hpp)
// ------------------------------------------------------------------------------------------------------------

using bench::read;
using bench::triad;

// 64 MiB per array (192 MiB in all, more than the 16384-token KV cache of 128 MiB); read over 128 MiB, the size
// of that cache.
BENCHMARK(triad)->ArgName("MiB")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(read)->ArgName("MiB")->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();

void register_extra(int&, char**) {}

}  // namespace

ATTEND_BENCH_MAIN(register_extra)
