// Serving benchmarks: a batch of sequences in one ragged call against the loop of one call per sequence, the same
// decodes through a paged cache, and this machine's memory bandwidth, in one binary and one run. GQA 32/8, d = 128,
// float; the thread count is OMP_NUM_THREADS (the targets are for 2).
//
//   decode_ragged/B:32/real_time           32 one-query decodes over caches of 256..8192 keys (fixed seed), one
//                                          multi_head_attention_into(q, k, v, Ragged, ...)
//   decode_loop/B:32/real_time             the same, one multi_head_attention per sequence on its rows
//   decode_paged/B:32/page:16/real_time    the same through a PagedKVCache of 16-token pages (the kernel alone,
//                                          detail::paged_attention: no projections)
//   prefill_ragged/B:64/L:128/real_time    64 causal prefills of 128 tokens in one ragged call
//   prefill_loop/B:64/L:128/real_time      the same, one call per sequence
//   prefill_one/L:1024/real_time           one causal prefill of 1024 tokens (the yardstick of the prefill rate)
//   triad/MiB:<n>/real_time, read/MiB:<n>/real_time   bandwidth.hpp; 64 MiB as decode_bench, 512 MiB beyond L3
//
// Counters: GBps (decodes: KV bytes read, 2 * Lk * 8 * 128 * 4 per sequence; bandwidth: bytes moved), GFLOPS
// (useful attention FLOPs, causal counted exactly), omp_threads. Every variant writes into one preallocated output
// (the *_into calls). After the runs the program prints the ratios of
// the targets, from medians when --benchmark_repetitions > 1. Example (about two minutes):
//   OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive ./serving_bench --benchmark_repetitions=5
//       --benchmark_enable_random_interleaving=true   (one command line)

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bandwidth.hpp"
#include "bench_common.hpp"

namespace {

using bench::Index;
using bench::Mat;

constexpr int kQueryHeads = 32;
constexpr int kKvHeads = 8;
constexpr Index kHeadDim = 128;
const attend::Heads kHeads{kQueryHeads, kKvHeads};

attend::Options causal() {
  attend::Options o;
  o.mask = attend::Mask::causal();
  return o;
}

// ------------------------------------------------------------------------------------------------------------
// 32 decodes over caches of random lengths
// ------------------------------------------------------------------------------------------------------------

struct Decodes {
  attend::Ragged ragged;
  Mat q, k, v;  // q [32, 32*128]; k, v [sum of Lk, 8*128]: every sequence's cache, one after the other
  attend::PagedKVCache<float> paged{16};
  std::vector<int> ids;
  double kv_bytes = 0;
};

const Decodes& decodes(bool with_pages) {
  static Decodes d;
  static bool paged_filled = false;
  if (d.ragged.q_offsets.empty()) {
    std::mt19937 rng(16);
    std::uniform_int_distribution<Index> length(256, 8192);
    d.ragged = {{0}, {0}};
    for (int b = 0; b < 32; ++b) {
      d.ragged.q_offsets.push_back(b + 1);
      d.ragged.kv_offsets.push_back(d.ragged.kv_offsets.back() + length(rng));
    }
    const Index tk = d.ragged.kv_offsets.back();
    d.q = bench::random_matrix(32, kQueryHeads * kHeadDim, 1);
    d.k = bench::random_matrix(tk, kKvHeads * kHeadDim, 2);
    d.v = bench::random_matrix(tk, kKvHeads * kHeadDim, 3);
    d.kv_bytes = 2.0 * double(tk) * kKvHeads * kHeadDim * sizeof(float);
  }
  if (with_pages && !paged_filled) {
    for (int b = 0; b < 32; ++b) d.ids.push_back(d.paged.add_sequence());
    d.paged.append(d.ids, d.ragged.kv_offsets, d.k, d.v);
    paged_filled = true;
  }
  return d;
}

void decode_counters(benchmark::State& state, const Decodes& d) {
  bench::common_counters(state);
  state.counters["GBps"] = bench::rate(1e-9 * d.kv_bytes);
  double flops = 0;
  for (std::size_t b = 0; b + 1 < d.ragged.kv_offsets.size(); ++b)
    flops += bench::attention_flops(1, d.ragged.kv_offsets[b + 1] - d.ragged.kv_offsets[b], kHeadDim, kQueryHeads,
                                    /*causal=*/true, /*exact=*/true);
  state.counters["GFLOPS"] = bench::rate(1e-9 * flops);
  state.counters["KV_MiB"] = d.kv_bytes / (1 << 20);
}

void decode_ragged(benchmark::State& state) {
  const Decodes& d = decodes(false);
  Mat out(d.q.rows(), kQueryHeads * kHeadDim);
  for (auto _ : state) {
    attend::multi_head_attention_into(d.q, d.k, d.v, d.ragged, kHeads, out, causal());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  decode_counters(state, d);
}

void decode_loop(benchmark::State& state) {
  const Decodes& d = decodes(false);
  Mat out(d.q.rows(), kQueryHeads * kHeadDim);
  for (auto _ : state) {
    for (Index b = 0; b < 32; ++b) {
      const Index k0 = d.ragged.kv_offsets[b], lk = d.ragged.kv_offsets[b + 1] - k0;
      attend::multi_head_attention_into(d.q.row(b), d.k.middleRows(k0, lk), d.v.middleRows(k0, lk), kHeads, out.row(b),
                                        causal());
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  decode_counters(state, d);
}

void decode_paged(benchmark::State& state) {
  const Decodes& d = decodes(true);
  Mat out(d.q.rows(), kQueryHeads * kHeadDim);
  const Index width = kKvHeads * kHeadDim;
  for (auto _ : state) {
    attend::detail::paged_attention<float>(d.q, d.paged, d.ids, d.ragged.q_offsets, kHeads, width, width, causal(), out,
                                           nullptr);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  decode_counters(state, d);
}

BENCHMARK(decode_ragged)->ArgName("B")->Arg(32)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(decode_loop)->ArgName("B")->Arg(32)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(decode_paged)->ArgNames({"B", "page"})->Args({32, 16})->Unit(benchmark::kMillisecond)->UseRealTime();

// ------------------------------------------------------------------------------------------------------------
// 64 causal prefills of 128 tokens, and one of 1024
// ------------------------------------------------------------------------------------------------------------

struct Prefills {
  attend::Ragged ragged;
  Mat q, k, v;
};

const Prefills& prefills() {
  static Prefills p;
  if (p.ragged.q_offsets.empty()) {
    p.ragged = {{0}, {0}};
    for (int b = 0; b < 64; ++b) {
      p.ragged.q_offsets.push_back(128 * (b + 1));
      p.ragged.kv_offsets.push_back(128 * (b + 1));
    }
    p.q = bench::random_matrix(64 * 128, kQueryHeads * kHeadDim, 4);
    p.k = bench::random_matrix(64 * 128, kKvHeads * kHeadDim, 5);
    p.v = bench::random_matrix(64 * 128, kKvHeads * kHeadDim, 6);
  }
  return p;
}

void prefill_counters(benchmark::State& state, Index sequences, Index length) {
  bench::common_counters(state);
  state.counters["GFLOPS"] =
      bench::rate(1e-9 * double(sequences) * bench::attention_flops(length, length, kHeadDim, kQueryHeads, true, true));
}

void prefill_ragged(benchmark::State& state) {
  const Prefills& p = prefills();
  Mat out(p.q.rows(), kQueryHeads * kHeadDim);
  for (auto _ : state) {
    attend::multi_head_attention_into(p.q, p.k, p.v, p.ragged, kHeads, out, causal());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  prefill_counters(state, 64, 128);
}

void prefill_loop(benchmark::State& state) {
  const Prefills& p = prefills();
  Mat out(p.q.rows(), kQueryHeads * kHeadDim);
  for (auto _ : state) {
    for (Index b = 0; b < 64; ++b)
      attend::multi_head_attention_into(p.q.middleRows(128 * b, 128), p.k.middleRows(128 * b, 128),
                                        p.v.middleRows(128 * b, 128), kHeads, out.middleRows(128 * b, 128), causal());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  prefill_counters(state, 64, 128);
}

void prefill_one(benchmark::State& state) {
  const Index L = state.range(0);
  const bench::Inputs& in = bench::inputs(L, L, kQueryHeads * kHeadDim, kKvHeads * kHeadDim, kKvHeads * kHeadDim);
  Mat out(L, kQueryHeads * kHeadDim);
  for (auto _ : state) {
    attend::multi_head_attention_into(in.q, in.k, in.v, kHeads, out, causal());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  prefill_counters(state, 1, L);
}

BENCHMARK(prefill_ragged)->ArgNames({"B", "L"})->Args({64, 128})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(prefill_loop)->ArgNames({"B", "L"})->Args({64, 128})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(prefill_one)->ArgName("L")->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

// ------------------------------------------------------------------------------------------------------------
// Memory bandwidth, same run
// ------------------------------------------------------------------------------------------------------------

using bench::read;
using bench::triad;

// 64 MiB per array as decode_bench (its yardstick); 512 MiB per array, far beyond the caches, as the decodes' 1 GiB
// of keys and values are.
BENCHMARK(triad)->ArgName("MiB")->Arg(64)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(read)->ArgName("MiB")->Arg(128)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

// ------------------------------------------------------------------------------------------------------------
// The targets' ratios, from this run
// ------------------------------------------------------------------------------------------------------------

// The console reporter, keeping each benchmark's real time and counters: the median over repetitions when there
// are several, else the one run.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if (r.run_type == Run::RT_Iteration || median) {
        const std::string name = r.run_name.str();
        if (median || !seen_median_[name]) {
          Result& x = results_[name];
          x.ms = r.GetAdjustedRealTime();
          x.gbps = r.counters.count("GBps") ? double(r.counters.at("GBps")) : 0;
          x.gflops = r.counters.count("GFLOPS") ? double(r.counters.at("GFLOPS")) : 0;
        }
        if (median) seen_median_[name] = true;
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    const auto has = [&](const char* n) { return results_.count(n) > 0; };
    const auto at = [&](const char* n) { return results_.at(n); };
    std::printf("\nTargets (this run; medians of the repetitions when repeated):\n");
    if (has("decode_ragged/B:32/real_time") && has("decode_loop/B:32/real_time"))
      std::printf("  32 decodes: ragged %.2fx faster than the loop (target >= 1.5x)\n",
                  at("decode_loop/B:32/real_time").ms / at("decode_ragged/B:32/real_time").ms);
    for (const char* triad : {"triad/MiB:64/real_time", "triad/MiB:512/real_time"})
      if (has("decode_ragged/B:32/real_time") && has(triad))
        std::printf("  32 decodes: ragged reads KV at %.1f GB/s, %.0f%% of %s at %.1f GB/s (target >= 75%%)\n",
                    at("decode_ragged/B:32/real_time").gbps,
                    100 * at("decode_ragged/B:32/real_time").gbps / at(triad).gbps, triad, at(triad).gbps);
    if (has("decode_paged/B:32/page:16/real_time") && has("decode_ragged/B:32/real_time"))
      std::printf(
          "  32 decodes: paged (16-token pages) takes %.2fx the time of the contiguous ragged call (target <= "
          "1.10x)\n",
          at("decode_paged/B:32/page:16/real_time").ms / at("decode_ragged/B:32/real_time").ms);
    if (has("prefill_ragged/B:64/L:128/real_time") && has("prefill_loop/B:64/L:128/real_time"))
      std::printf("  64 prefills: ragged %.2fx faster than the loop (target >= 1.3x)\n",
                  at("prefill_loop/B:64/L:128/real_time").ms / at("prefill_ragged/B:64/L:128/real_time").ms);
    if (has("prefill_ragged/B:64/L:128/real_time") && has("prefill_one/L:1024/real_time"))
      std::printf("  64 prefills: ragged %.1f GFLOP/s, %.0f%% of one 1024-token prefill's %.1f (target >= 80%%)\n",
                  at("prefill_ragged/B:64/L:128/real_time").gflops,
                  100 * at("prefill_ragged/B:64/L:128/real_time").gflops / at("prefill_one/L:1024/real_time").gflops,
                  at("prefill_one/L:1024/real_time").gflops);
  }

 private:
  struct Result {
    double ms = 0, gbps = 0, gflops = 0;
  };
  std::map<std::string, Result> results_;
  std::map<std::string, bool> seen_median_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  bench::add_context();
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
