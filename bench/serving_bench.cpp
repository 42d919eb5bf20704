// Serving benchmarks: a batch of sequences in one ragged call against the loop of one call per sequence, the same
// decodes through a paged cache, and this machine's memory bandwidth, in one binary and one run. GQA 32/8, d = 128,
// float; the thread count is OMP_NUM_THREADS (the targets are for 2).
//
//   decode_ragged/B:32/min_keys:256/max_keys:8192/real_time
//                                  32 one-query decodes over caches of 256..8192 keys (a fixed seed), one
//                                  multi_head_attention_into(q, k, v, Ragged, ...); B:64/min_keys:64/max_keys:512:
//                                  64 decodes over short caches, each alone too little work to start a team
//   decode_loop/...same args...    the same, one multi_head_attention_into per sequence on its rows
//   decode_paged/...same args...   the same through a PagedKVCache of 16-token pages (the kernel alone,
//                                  detail::paged_attention: no projections)
//   prefill_ragged/B:64/L:128/real_time    64 causal prefills of 128 tokens in one ragged call (and B:128/L:16)
//   prefill_loop/...same args...           the same, one call per sequence
//   prefill_one/L:1024/real_time           one causal prefill of 1024 tokens (the yardstick of the prefill rate)
//   triad/MiB:<n>/real_time, read/MiB:<n>/real_time   bandwidth.hpp; 64 MiB as decode_bench, 512 MiB beyond L3
//
// Counters: GBps (decodes: KV bytes read, 2 * Lk * 8 * 128 * 4 per sequence; bandwidth: bytes moved), GFLOPS
// (useful attention FLOPs, causal counted exactly), omp_threads. Every variant writes into one preallocated output
// (the *_into calls). After the runs the program prints the ratios of the targets, from medians when
// --benchmark_repetitions > 1. Example (about two minutes):
//   OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive ./serving_bench --benchmark_repetitions=5
//       --benchmark_enable_random_interleaving=true   (one command line)

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "bandwidth.hpp"
#include "bench_common.hpp"

namespace {

using bench::Index;
using bench::Mat;

using bench::kHeadDim;
using bench::kKvHeads;
using bench::kQueryHeads;
const attend::Heads kHeads{kQueryHeads, kKvHeads};

attend::Options causal() {
  attend::Options o;
  o.mask = attend::Mask::causal();
  return o;
}

// ------------------------------------------------------------------------------------------------------------
// Decodes over caches of random lengths
// ------------------------------------------------------------------------------------------------------------

// B one-query decodes over caches of lengths uniform in [min_keys, max_keys] (a fixed seed).
struct Decodes {
  attend::Ragged ragged;
  Mat q, k, v;  // q [B, 32*128]; k, v [sum of Lk, 8*128]: every sequence's cache, one after the other
  attend::PagedKVCache<float> paged{16};
  std::vector<int> ids;
  double kv_bytes = 0;
};

const Decodes& decodes(Index sequences, Index min_keys, Index max_keys, bool with_pages) {
  static std::map<std::tuple<Index, Index, Index>, Decodes> all;
  Decodes& d = all[{sequences, min_keys, max_keys}];
  if (d.ragged.q_offsets.empty()) {
    std::mt19937 rng(16);
    std::uniform_int_distribution<Index> length(min_keys, max_keys);
    d.ragged = {{0}, {0}};
    for (Index b = 0; b < sequences; ++b) {
      d.ragged.q_offsets.push_back(b + 1);
      d.ragged.kv_offsets.push_back(d.ragged.kv_offsets.back() + length(rng));
    }
    const Index tk = d.ragged.kv_offsets.back();
    d.q = bench::random_matrix(sequences, kQueryHeads * kHeadDim, 1);
    d.k = bench::random_matrix(tk, kKvHeads * kHeadDim, 2);
    d.v = bench::random_matrix(tk, kKvHeads * kHeadDim, 3);
    d.kv_bytes = 2.0 * double(tk) * kKvHeads * kHeadDim * sizeof(float);
  }
  if (with_pages && d.ids.empty()) {
    for (Index b = 0; b < sequences; ++b) d.ids.push_back(d.paged.add_sequence());
    d.paged.append(d.ids, d.ragged.kv_offsets, d.k, d.v);
  }
  return d;
}

const Decodes& decodes_of(const benchmark::State& state, bool with_pages) {
  return decodes(state.range(0), state.range(1), state.range(2), with_pages);
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
  const Decodes& d = decodes_of(state, false);
  Mat out(d.q.rows(), kQueryHeads * kHeadDim);
  for (auto _ : state) {
    attend::multi_head_attention_into(d.q, d.k, d.v, d.ragged, kHeads, out, causal());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  decode_counters(state, d);
}

void decode_loop(benchmark::State& state) {
  const Decodes& d = decodes_of(state, false);
  Mat out(d.q.rows(), kQueryHeads * kHeadDim);
  for (auto _ : state) {
    for (Index b = 0; b < d.q.rows(); ++b) {
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
  const Decodes& d = decodes_of(state, true);
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

// The targets' case: 32 decodes over 256..8192 keys (1.0 GiB of keys and values); and 64 over short caches of
// 64..512 keys, where one decode alone is too little work to start a team.
void decode_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "min_keys", "max_keys"})->Args({32, 256, 8192})->Args({64, 64, 512});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(decode_ragged)->Apply(decode_args);
BENCHMARK(decode_loop)->Apply(decode_args);
BENCHMARK(decode_paged)->Apply(decode_args);

// ------------------------------------------------------------------------------------------------------------
// 64 causal prefills of 128 tokens, and one of 1024
// ------------------------------------------------------------------------------------------------------------

// B causal prefills of L tokens each.
struct Prefills {
  attend::Ragged ragged;
  Mat q, k, v;
};

const Prefills& prefills(Index sequences, Index length) {
  static std::map<std::pair<Index, Index>, Prefills> all;
  Prefills& p = all[{sequences, length}];
  if (p.ragged.q_offsets.empty()) {
    p.ragged = {{0}, {0}};
    for (Index b = 0; b < sequences; ++b) {
      p.ragged.q_offsets.push_back(length * (b + 1));
      p.ragged.kv_offsets.push_back(length * (b + 1));
    }
    p.q = bench::random_matrix(sequences * length, kQueryHeads * kHeadDim, 4);
    p.k = bench::random_matrix(sequences * length, kKvHeads * kHeadDim, 5);
    p.v = bench::random_matrix(sequences * length, kKvHeads * kHeadDim, 6);
  }
  return p;
}

void prefill_counters(benchmark::State& state, Index sequences, Index length) {
  bench::common_counters(state);
  state.counters["GFLOPS"] =
      bench::rate(1e-9 * double(sequences) * bench::attention_flops(length, length, kHeadDim, kQueryHeads, true, true));
}

void prefill_ragged(benchmark::State& state) {
  const Index sequences = state.range(0), length = state.range(1);
  const Prefills& p = prefills(sequences, length);
  Mat out(p.q.rows(), kQueryHeads * kHeadDim);
  for (auto _ : state) {
    attend::multi_head_attention_into(p.q, p.k, p.v, p.ragged, kHeads, out, causal());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  prefill_counters(state, sequences, length);
}

void prefill_loop(benchmark::State& state) {
  const Index sequences = state.range(0), length = state.range(1);
  const Prefills& p = prefills(sequences, length);
  Mat out(p.q.rows(), kQueryHeads * kHeadDim);
  for (auto _ : state) {
    for (Index b = 0; b < sequences; ++b)
      attend::multi_head_attention_into(p.q.middleRows(length * b, length), p.k.middleRows(length * b, length),
                                        p.v.middleRows(length * b, length), kHeads, out.middleRows(length * b, length),
                                        causal());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  prefill_counters(state, sequences, length);
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

// The targets' case, and 128 prefills of 16 tokens, each alone too little work to start a team.
void prefill_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "L"})->Args({64, 128})->Args({128, 16})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(prefill_ragged)->Apply(prefill_args);
BENCHMARK(prefill_loop)->Apply(prefill_args);
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
    const std::string decodes = "/B:32/min_keys:256/max_keys:8192/real_time";
    const std::string short_decodes = "/B:64/min_keys:64/max_keys:512/real_time";
    const std::string prefills = "/B:64/L:128/real_time", short_prefills = "/B:128/L:16/real_time";
    const auto has = [&](const std::string& a, const std::string& b) { return results_.count(a) && results_.count(b); };
    const auto at = [&](const std::string& n) { return results_.at(n); };
    const auto faster = [&](const char* what, const std::string& family, const std::string& args, const char* target) {
      if (has(family + "_ragged" + args, family + "_loop" + args))
        std::printf("  %s: ragged %.2fx faster than the loop (%s)\n", what,
                    at(family + "_loop" + args).ms / at(family + "_ragged" + args).ms, target);
    };
    std::printf("\nTargets (this run; medians of the repetitions when repeated):\n");
    faster("32 decodes over 256..8192 keys", "decode", decodes, "target >= 1.5x");
    for (const char* triad : {"triad/MiB:64/real_time", "triad/MiB:512/real_time"})
      if (has("decode_ragged" + decodes, triad))
        std::printf("  32 decodes: ragged reads KV at %.1f GB/s, %.0f%% of %s at %.1f GB/s (target >= 75%%)\n",
                    at("decode_ragged" + decodes).gbps, 100 * at("decode_ragged" + decodes).gbps / at(triad).gbps,
                    triad, at(triad).gbps);
    if (has("decode_paged" + decodes, "decode_ragged" + decodes))
      std::printf(
          "  32 decodes: paged (16-token pages) takes %.2fx the time of the contiguous ragged call (target <= "
          "1.10x)\n",
          at("decode_paged" + decodes).ms / at("decode_ragged" + decodes).ms);
    faster("64 prefills of 128", "prefill", prefills, "target >= 1.3x");
    if (has("prefill_ragged" + prefills, "prefill_one/L:1024/real_time"))
      std::printf("  64 prefills: ragged %.1f GFLOP/s, %.0f%% of one 1024-token prefill's %.1f (target >= 80%%)\n",
                  at("prefill_ragged" + prefills).gflops,
                  100 * at("prefill_ragged" + prefills).gflops / at("prefill_one/L:1024/real_time").gflops,
                  at("prefill_one/L:1024/real_time").gflops);
    faster("64 decodes over 64..512 keys", "decode", short_decodes, "no target");
    faster("128 prefills of 16", "prefill", short_prefills, "no target");
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
