#pragma once
// Shared by the *_bench.cpp programs: deterministic inputs, the naive materializing attention baseline,
// counters, and a main() that records the build in Google Benchmark's JSON context.
//
// Conventions of every benchmark here (scripts/bench_report.py relies on them):
//   - names are `<family>/<arg>:<value>/.../real_time`; attend and its naive baseline share the arguments, and
//     their family names differ only in the prefix (`attend_` / `naive_`);
//   - UseRealTime(): the kernels run OpenMP threads, so wall time is what counts. The thread count is set by
//     OMP_NUM_THREADS (never ->Threads(), which would run copies of the benchmark) and recorded in the counter
//     `omp_threads`;
//   - rate counters are per second of real time: `GFLOPS` (useful attention FLOPs, 4*Lq*Lk*d per query head,
//     halved for a causal square), `GBps` (bytes of KV cache or of the arrays a bandwidth kernel moves).

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <attend/attend.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace bench {

using attend::Index;
using Mat = attend::Matrix<float>;

/// The decode benchmarks' layer (decode_bench, serving_bench): GQA 32/8, head dim 128.
constexpr int kQueryHeads = 32;
constexpr int kKvHeads = 8;
constexpr attend::Index kHeadDim = 128;

/// OpenMP threads a parallel region would use now (1 without OpenMP).
inline int omp_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Uniform [-1, 1) entries times `scale`, the same for the same (rows, cols, seed) on every run.
inline Mat random_matrix(Index rows, Index cols, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Mat m(rows, cols);
  float* p = m.data();
  for (Index i = 0, n = m.size(); i < n; ++i) p[i] = scale * dist(gen);
  return m;
}

/// q [Lq, qcols], k [Lk, kcols], v [Lk, vcols]. The last set built is kept, so the repetitions of one benchmark
/// and an attend/naive pair of the same shape do not pay for generating it again.
struct Inputs {
  Mat q, k, v;
};

inline const Inputs& inputs(Index lq, Index lk, Index qcols, Index kcols, Index vcols) {
  static std::tuple<Index, Index, Index, Index, Index> key{-1, -1, -1, -1, -1};
  static Inputs in;
  const auto want = std::make_tuple(lq, lk, qcols, kcols, vcols);
  if (key != want) {
    in = Inputs{};  // free the previous set first
    in.q = random_matrix(lq, qcols, 1);
    in.k = random_matrix(lk, kcols, 2);
    in.v = random_matrix(lk, vcols, 3);
    key = want;
  }
  return in;
}

/// The 16-bit copies of the last Inputs (rounded once, kept as the float ones are).
template <class S>
struct Inputs16 {
  attend::Matrix<S> q, k, v;
};
/// Keyed by the float inputs' shapes: inputs() keeps one set in one object, so its address never changes.
template <class S>
inline const Inputs16<S>& inputs16(const Inputs& in) {
  static std::array<Index, 6> key{-1, -1, -1, -1, -1, -1};
  static Inputs16<S> out;
  const std::array<Index, 6> want{in.q.rows(), in.q.cols(), in.k.rows(), in.k.cols(), in.v.rows(), in.v.cols()};
  if (key != want) {
    out = Inputs16<S>{in.q.cast<S>(), in.k.cast<S>(), in.v.cast<S>()};
    key = want;
  }
  return out;
}

/// Options with the score modifiers numbered `mod`: 0 none, 1 a sink per head (logits from -1 to 1), 2 ALiBi
/// (geometric_alibi_slopes), 3 both.
inline attend::Options modifiers(long mod, int heads) {
  attend::Options o;
  if (mod & 1)
    for (int h = 0; h < heads; ++h) o.sinks.push_back(-1.0 + 2.0 * h / std::max(1, heads - 1));
  if (mod & 2) o.alibi_slopes = attend::geometric_alibi_slopes(heads);
  return o;
}

/// Storage types by number, for benchmark arguments: 0 float, 1 bfloat16, 2 half.
inline const char* storage_name(long type) { return type == 1 ? "bf16" : type == 2 ? "half" : "float"; }

/// The naive materializing baseline: per query head h (kv head h / (H/G)), the full score matrix
/// S = (Q_h * scale) * K_g^T as one GEMM, the mask applied by zeroing hidden entries after a stable softmax over
/// the visible ones (bottom-right causal: row i sees keys j <= i + Lk - Lq), then O_h = P * V_g.
///
/// `scores` and `out` are caller-provided workspaces (resized when needed, so repeated calls allocate nothing):
/// the baseline is given its memory for free. Eigen's GEMM uses OpenMP threads by itself; the softmax rows are
/// split over threads too.
inline void naive_attention(const Mat& q, const Mat& k, const Mat& v, int heads, int kv_heads, bool causal, Mat& scores,
                            Mat& out) {
  const Index lq = q.rows(), lk = k.rows(), d = q.cols() / heads, dv = v.cols() / kv_heads;
  const int per_group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(float(d));
  if (scores.rows() != lq || scores.cols() != lk) scores.resize(lq, lk);
  if (out.rows() != lq || out.cols() != heads * dv) out.resize(lq, heads * dv);
  for (int h = 0; h < heads; ++h) {
    const int g = h / per_group;
    // The scalar on an operand: Eigen folds it into the GEMM ((Q K^T) * scale would be a separate, slow pass).
    scores.noalias() = (q.middleCols(h * d, d) * scale) * k.middleCols(g * d, d).transpose();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (lq > 1 && lq * lk > (1 << 16))
#endif
    for (Index i = 0; i < lq; ++i) {
      const Index visible = causal ? std::clamp<Index>(i + lk - lq + 1, 0, lk) : lk;
      auto row = scores.row(i);
      if (visible == 0) {
        row.setZero();
        continue;
      }
      auto seen = row.head(visible).array();
      const float m = seen.maxCoeff();
      seen = (seen - m).exp();
      seen /= seen.sum();
      // Hidden keys get weight 0 exactly (Eigen's vectorized exp(-inf) would be ~1e-38, not 0).
      row.tail(lk - visible).setZero();
    }
    out.middleCols(h * dv, dv).noalias() = scores * v.middleCols(g * dv, dv);
  }
}

/// Useful attention FLOPs: 4 * Lq * Lk * d per query head (two products of 2*Lq*Lk*d), counting only the key
/// positions each query can see. For a causal square this is the "halved" count (L*L/2, not L(L+1)/2)
/// when `exact` is false.
inline double attention_flops(Index lq, Index lk, Index d, int heads, bool causal, bool exact) {
  double pairs = double(lq) * double(lk);
  if (causal) {
    if (exact) {
      pairs = 0;
      for (Index i = 0; i < lq; ++i) pairs += double(std::clamp<Index>(i + lk - lq + 1, 0, lk));
    } else {
      pairs /= 2;
    }
  }
  return 4.0 * pairs * double(d) * heads;
}

/// Counters every benchmark carries.
inline void common_counters(benchmark::State& state) { state.counters["omp_threads"] = omp_threads(); }

/// A rate counter of `per_iteration` units per iteration, reported per second of real time (UseRealTime()).
inline benchmark::Counter rate(double per_iteration) {
  return benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

/// Records the build in the JSON "context" so a report names what produced the numbers.
inline void add_context() {
  benchmark::AddCustomContext("attend_version", ATTEND_VERSION_STRING);
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
#if defined(__VERSION__)
  benchmark::AddCustomContext("compiler", __VERSION__);
#endif
#if defined(_OPENMP)
  benchmark::AddCustomContext("openmp", std::to_string(_OPENMP));
#else
  benchmark::AddCustomContext("openmp", "off");
#endif
  benchmark::AddCustomContext("omp_max_threads", std::to_string(omp_threads()));
#if defined(NDEBUG)
  benchmark::AddCustomContext("ndebug", "1");
#else
  benchmark::AddCustomContext("ndebug", "0");
#endif
}

/// Removes `--<name>=<value>` (or `--<name>`) from argv; returns the value ("" when given without one), or
/// `fallback` when absent. Lets a bench program take its own options before Google Benchmark sees argv.
inline std::string take_flag(int& argc, char** argv, const char* name, const std::string& fallback) {
  const std::string prefix = std::string("--") + name;
  std::string value = fallback;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == prefix) {
      value = "";
    } else if (arg.rfind(prefix + "=", 0) == 0) {
      value = arg.substr(prefix.size() + 1);
    } else {
      argv[out++] = argv[i];
      continue;
    }
  }
  argc = out;
  return value;
}

}  // namespace bench

/// main() of a bench program: `register_extra(argc, argv)` may take its own flags and register benchmarks.
#define ATTEND_BENCH_MAIN(register_extra)                             \
  int main(int argc, char** argv) {                                   \
    register_extra(argc, argv);                                       \
    benchmark::Initialize(&argc, argv);                               \
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1; \
    bench::add_context();                                             \
    benchmark::RunSpecifiedBenchmarks();                              \
    benchmark::Shutdown();                                            \
    return 0;                                                         \
  }
