// Backward benchmarks: attend::multi_head_attention_backward beside its forward (multi_head_attention_with_lse, the
// call a training step makes first) and beside a naive materializing backward, same shapes, same binary.
//
//   attend_forward/L:<L>/d:<d>/H:<H>/G:<G>/causal:<0|1>/real_time    attend::multi_head_attention_with_lse
//   attend_backward/...same args...                                    attend::multi_head_attention_backward
//   naive_backward/...same args...                                     naive_backward() below: per query head the
//                                                                      full P [L, L], five plain Eigen products
//   attend_backward_peak_memory/L:<L>/d:<d>/H:<H>/causal:<0|1>/real_time  only with --attend_peak_memory[=L]:
//                                                                      extra resident memory of one backward (run
//                                                                      it in a process of its own)
//
// Counters: GFLOPS, useful FLOPs per second of real time: the forward's 4*Lq*Lk*d per query head (halved for
// causal), the backward's 2.5 times that (FlashAttention-2's count: five products against the forward's two);
// omp_threads (OMP_NUM_THREADS decides it). Example:
//   OMP_NUM_THREADS=1 ./backward_bench --benchmark_filter='/L:4096/d:128/H:8/G:8/causal:1/'
//       --benchmark_min_time=0.5 --benchmark_repetitions=3    (one command line)

#include <cstdio>
#include <cstring>

#include "bench_common.hpp"

namespace {

using bench::Index;
using Mat = bench::Mat;

struct Shape {
  Index L, d;
  int H, G;
  bool causal;
};

Shape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1), int(state.range(2)), int(state.range(3)), state.range(4) != 0};
}

attend::Options options_of(const Shape& s) {
  attend::Options o;
  if (s.causal) o.mask = attend::Mask::causal();
  return o;
}

/// What a training step has when its backward starts: the inputs, the forward's out and lse, and dout.
struct Step {
  Mat q, k, v, dout;
  attend::AttentionResult<float> forward;
};

const Step& step(const Shape& s) {
  static std::tuple<Index, Index, int, int, bool> key{-1, -1, 0, 0, false};
  static Step st;
  const auto want = std::make_tuple(s.L, s.d, s.H, s.G, s.causal);
  if (key != want) {
    st = Step{};
    const bench::Inputs& in = bench::inputs(s.L, s.L, s.H * s.d, s.G * s.d, s.G * s.d);
    st.q = in.q, st.k = in.k, st.v = in.v;
    st.dout = bench::random_matrix(s.L, s.H * s.d, 4);
    st.forward = attend::multi_head_attention_with_lse(st.q, st.k, st.v, attend::Heads{s.H, s.G}, options_of(s));
    key = want;
  }
  return st;
}

/// The naive materializing backward: per query head h (kv head g = h / (H/G)), the full S = (Q_h scale) K_g^T as
/// one GEMM, P its softmax over the visible keys (bottom-right causal: row i sees keys j <= i + Lk - Lq), then
/// dV_g += P^T dO_h, dP = dO_h V_g^T, dS = P o (dP - D) with D = rowsum(dO_h o O_h), dQ_h = scale dS K_g,
/// dK_g += scale dS^T Q_h: five plain Eigen products. `p` and `dp` are caller-provided [L, L] workspaces (the
/// baseline is given its memory for free); Eigen's GEMM uses OpenMP threads by itself.
void naive_backward(const Mat& q, const Mat& k, const Mat& v, const Mat& out, const Mat& dout, int heads, int kv_heads,
                    bool causal, Mat& p, Mat& dp, Mat& dq, Mat& dk, Mat& dv) {
  const Index lq = q.rows(), lk = k.rows(), d = q.cols() / heads, dvc = v.cols() / kv_heads;
  const int per_group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(float(d));
  p.resize(lq, lk);
  dp.resize(lq, lk);
  dq.setZero(lq, q.cols());
  dk.setZero(lk, k.cols());
  dv.setZero(lk, v.cols());
  for (int h = 0; h < heads; ++h) {
    const int g = h / per_group;
    const auto qh = q.middleCols(h * d, d), kg = k.middleCols(g * d, d), vg = v.middleCols(g * dvc, dvc);
    const auto doh = dout.middleCols(h * dvc, dvc), oh = out.middleCols(h * dvc, dvc);
    p.noalias() = (qh * scale) * kg.transpose();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (lq * lk > (1 << 16))
#endif
    for (Index i = 0; i < lq; ++i) {
      const Index visible = causal ? std::clamp<Index>(i + lk - lq + 1, 0, lk) : lk;
      auto row = p.row(i);
      if (visible == 0) {
        row.setZero();
        continue;
      }
      auto seen = row.head(visible).array();
      seen = (seen - seen.maxCoeff()).exp();
      seen /= seen.sum();
      row.tail(lk - visible).setZero();
    }
    dv.middleCols(g * dvc, dvc).noalias() += p.transpose() * doh;
    dp.noalias() = doh * vg.transpose();
    const Eigen::VectorXf delta = (doh.array() * oh.array()).rowwise().sum();
    p.array() *= (dp.colwise() - delta).array();  // dS = P o (dP - D), in place
    dq.middleCols(h * d, d).noalias() = (p * scale) * kg;
    dk.middleCols(g * d, d).noalias() += (p.transpose() * scale) * qh;
  }
}

void counters(benchmark::State& state, const Shape& s, double factor) {
  bench::common_counters(state);
  state.counters["GFLOPS"] = bench::rate(1e-9 * factor * bench::attention_flops(s.L, s.L, s.d, s.H, s.causal, false));
}

void attend_forward(benchmark::State& state) {
  const Shape s = shape_of(state);
  const Step& st = step(s);
  for (auto _ : state) {
    auto r = attend::multi_head_attention_with_lse(st.q, st.k, st.v, attend::Heads{s.H, s.G}, options_of(s));
    benchmark::DoNotOptimize(r.out.data());
    benchmark::ClobberMemory();
  }
  counters(state, s, 1.0);
}

void attend_backward(benchmark::State& state) {
  const Shape s = shape_of(state);
  const Step& st = step(s);
  for (auto _ : state) {
    auto g = attend::multi_head_attention_backward(st.q, st.k, st.v, st.forward.out, st.forward.lse, st.dout,
                                                   attend::Heads{s.H, s.G}, options_of(s));
    benchmark::DoNotOptimize(g.dq.data());
    benchmark::ClobberMemory();
  }
  counters(state, s, 2.5);
}

void naive_backward(benchmark::State& state) {
  const Shape s = shape_of(state);
  const Step& st = step(s);
  Mat p, dp, dq, dk, dv;
  for (auto _ : state) {
    naive_backward(st.q, st.k, st.v, st.forward.out, st.dout, s.H, s.G, s.causal, p, dp, dq, dk, dv);
    benchmark::DoNotOptimize(dq.data());
    benchmark::ClobberMemory();
  }
  counters(state, s, 2.5);
}

// One argument list for the three, so every backward row has its forward and naive twins.
void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"L", "d", "H", "G", "causal"});
  for (int causal : {0, 1})
    for (int d : {64, 128})
      for (int L : {1024, 4096}) b->Args({L, d, 8, 8, causal});
  // GQA (8 query heads over 2 kv heads) and MQA (over 1), d = 128: the split decompositions.
  for (int G : {2, 1}) b->Args({4096, 128, 8, G, 1});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(attend_forward)->Apply(args);
BENCHMARK(attend_backward)->Apply(args);
BENCHMARK(naive_backward)->Apply(args);

// ------------------------------------------------------------------------------------------------------------
// Peak memory of one backward (opt-in), measured as attention_bench measures the forward's.
// ------------------------------------------------------------------------------------------------------------

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

bool reset_peak() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

void attend_backward_peak_memory(benchmark::State& state) {
  const Index L = state.range(0), d = state.range(1);
  const int H = int(state.range(2));
  const Shape s{L, d, H, H, state.range(3) != 0};
  const Step& st = step(s);
  const double mib = 1.0 / 1024.0;
  double extra = 0, peak = 0;
  bool reset = true;
  for (auto _ : state) {
    state.PauseTiming();
    reset = reset_peak() && reset;
    const long before = status_kib("VmRSS");
    state.ResumeTiming();
    auto g = attend::multi_head_attention_backward(st.q, st.k, st.v, st.forward.out, st.forward.lse, st.dout,
                                                   attend::Heads{H, H}, options_of(s));
    benchmark::DoNotOptimize(g.dq.data());
    state.PauseTiming();
    const long hwm = status_kib("VmHWM");
    const double gradients_kib = double(g.dq.size() + g.dk.size() + g.dv.size()) * sizeof(float) / 1024.0;
    extra = std::max(extra, (double(hwm - before) - gradients_kib) * mib);
    peak = std::max(peak, double(hwm) * mib);
    state.ResumeTiming();
  }
  counters(state, s, 2.5);
  const double matrix_mib = double(L) * H * d * sizeof(float) / (1 << 20);
  state.counters["inputs_MiB"] = 5 * matrix_mib + double(L) * H * sizeof(float) / (1 << 20);  // q k v out dout, lse
  state.counters["gradients_MiB"] = 3 * matrix_mib;
  state.counters["extra_MiB"] = extra;  // peak resident growth during the call beyond the gradients
  state.counters["peak_MiB"] = peak;
  state.counters["hwm_reset"] = reset ? 1 : 0;
}

void register_extra(int& argc, char** argv) {
  const std::string peak = bench::take_flag(argc, argv, "attend_peak_memory", "none");
  if (peak == "none") return;
  const long L = peak.empty() ? 16384 : std::stol(peak);
  benchmark::RegisterBenchmark("attend_backward_peak_memory", attend_backward_peak_memory)
      ->ArgNames({"L", "d", "H", "causal"})
      ->Args({L, 64, 8, 0})
      ->Args({L, 64, 8, 1})
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

}  // namespace

ATTEND_BENCH_MAIN(register_extra)
