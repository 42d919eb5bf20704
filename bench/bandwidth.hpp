#pragma once
// This machine's memory bandwidth, measured in the same run as the kernels it is a yardstick for: a STREAM triad
// and a read-only sum over OpenMP threads (the thread count the kernels get). decode_bench and serving_bench
// register them: bandwidth-bound kernels report their bytes per second against these.
//
//   triad/MiB:<per array>/real_time   a[i] = b[i] + s * c[i] (float, OpenMP static split); GBps counts 3 arrays
//   read/MiB:<array>/real_time        sum of an array; GBps counts 1 array

#include <cstdlib>
#include <memory>

#include "bench_common.hpp"

namespace bench {

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Array = std::unique_ptr<float[], FreeDeleter>;

// 64-byte aligned, first touched by the threads that will use each part (static split, like the kernels' loops).
inline Array make_array(Index n, float value) {
  const std::size_t bytes = ((std::size_t(n) * sizeof(float) + 63) / 64) * 64;
  Array a(static_cast<float*>(std::aligned_alloc(64, bytes)));
  float* p = a.get();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (Index i = 0; i < n; ++i) p[i] = value;
  return a;
}

inline void triad(benchmark::State& state) {
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

inline void read(benchmark::State& state) {
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

}  // namespace bench
