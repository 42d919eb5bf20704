// Decode benchmarks: a few new queries over a long KV cache, GQA with 32 query heads over 8 kv heads, d = 128,
// against the naive baseline (per query head, materialized scores over the whole cache), and this machine's
// memory bandwidth measured in the same run.
//
//   attend_decode/S:<cache>/Lq:<n>/real_time    attend::multi_head_attention(q [n, 32*128], k, v [S, 8*128],
//                                               Heads{32, 8}, Mask::causal())
//   naive_decode/...same args...                bench::naive_attention, one query head at a time
//   attend_decode_mod/...same args.../mod:<0-3> attend_decode with score modifiers: none (0), a sink per head (1),
//                                               ALiBi slopes (2), both (3)
//   attend_decode16/...same args.../type:<1|2>  float q over k, v rounded to bfloat16 (1) or half (2): a 16-bit
//                                               KV cache (GBps counts the 16-bit bytes read)
//   attend_decode_q8/...same args.../scales:<1|2>  float q over k, v in q8: a Q8Matrix (float scales, 1) through
//                                               multi_head_attention, or an 8-bit KVCache (half scales, 2), the
//                                               layers' cache, read as its layer reads it (GBps: bytes stored)
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

using bench::kHeadDim;
using bench::kKvHeads;
using bench::kQueryHeads;

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

// attend_decode with score modifiers (bench::modifiers): none (0), a sink per head (1), ALiBi (2), both (3).
void attend_decode_mod(benchmark::State& state) {
  const Index cache = state.range(0), lq = state.range(1);
  const bench::Inputs& in = bench::inputs(lq, cache, kQueryHeads * kHeadDim, kKvHeads * kHeadDim, kKvHeads * kHeadDim);
  attend::Options options = bench::modifiers(state.range(2), kQueryHeads);
  options.mask = attend::Mask::causal();
  for (auto _ : state) {
    Mat out = attend::multi_head_attention(in.q, in.k, in.v, attend::Heads{kQueryHeads, kKvHeads}, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  decode_counters(state, cache, lq);
}

BENCHMARK(attend_decode_mod)
    ->ArgNames({"S", "Lq", "mod"})
    ->ArgsProduct({{16384}, {1}, {0, 1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
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

// float q over k, v quantized to q8 (32 int8 values and a scale per block): scales 1 is a Q8Matrix (float scales)
// through the public multi_head_attention; scales 2 is an 8-bit KVCache (half scales, the layers' cache) read by
// the kernel as its layer reads it. GBps counts the bytes stored, scales included.
void attend_decode_q8(benchmark::State& state) {
  const Index cache = state.range(0), lq = state.range(1);
  const bool half_scales = state.range(2) == 2;
  const bench::Inputs& in = bench::inputs(lq, cache, kQueryHeads * kHeadDim, kKvHeads * kHeadDim, kKvHeads * kHeadDim);
  const attend::Heads heads{kQueryHeads, kKvHeads};
  attend::Options options;
  options.mask = attend::Mask::causal();
  double bytes = 0;
  if (half_scales) {
    attend::KVCache<float, attend::q8> kv;
    kv.append(in.k, in.v);
    const attend::detail::ConstRowsRef<float> q(in.q);
    Mat out(lq, kQueryHeads * kHeadDim);
    for (auto _ : state) {
      attend::detail::attention(attend::detail::make_problem(q, kv.keys(), kv.values(), nullptr, heads, options), out,
                                nullptr);
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
    bytes = double(kv.bytes());
  } else {
    const attend::Q8Matrix k = attend::quantize_q8(in.k), v = attend::quantize_q8(in.v);
    for (auto _ : state) {
      Mat out = attend::multi_head_attention(in.q, k, v, heads, options);
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
    bytes = double(k.rows()) * double(k.cols() + v.cols()) * (1 + sizeof(float) / 32.0);  // values + a scale per 32
  }
  decode_counters(state, cache, lq);
  state.counters["GBps"] = bench::rate(1e-9 * bytes);
  state.counters["KV_MiB"] = bytes / (1 << 20);
}

void decode_q8_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"S", "Lq", "scales"});
  for (int scales : {2, 1})
    for (int cache : {4096, 16384})
      for (int lq : {1, 4}) b->Args({cache, lq, scales});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(attend_decode_q8)->Apply(decode_q8_args);

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
