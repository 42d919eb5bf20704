// One attend::multi_head_attention call under callgrind's instrumentation, for scripts/icount_ab.sh: instruction
// counts of two commits' kernels on the same call, which a shared host's timing noise cannot blur.
//
//   icount_driver Lq Lk d H G causal mod
//
// Float inputs (Eigen's Random after srand(1)), H query heads over G kv heads of width d, bottom-right causal when
// `causal` is 1; `mod` 1 adds a sink per head, 2 ALiBi slopes, 3 both (built with ATTEND_ICOUNT_MODS, for trees that
// have them). Only the call is instrumented (valgrind --instr-atstart=no). Prints a hash of the result's bits, so
// two builds can be seen to compute the same values.

#include <valgrind/callgrind.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "attend/attend.hpp"

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s Lq Lk d H G causal mod\n", argv[0]);
    return 2;
  }
  const long Lq = std::atol(argv[1]), Lk = std::atol(argv[2]), d = std::atol(argv[3]);
  const int H = std::atoi(argv[4]), G = std::atoi(argv[5]), causal = std::atoi(argv[6]), mod = std::atoi(argv[7]);
  using Mat = attend::Matrix<float>;
  std::srand(1);
  const Mat q = Mat::Random(Lq, H * d), k = Mat::Random(Lk, G * d), v = Mat::Random(Lk, G * d);
  attend::Options options;
  if (causal) options.mask = attend::Mask::causal();
#ifdef ATTEND_ICOUNT_MODS
  // bench::modifiers() of bench/bench_common.hpp, written out: that header needs Google Benchmark, and an old tree
  // without the modifiers could not compile its body.
  if (mod & 1)
    for (int h = 0; h < H; ++h) options.sinks.push_back(-1.0 + 2.0 * h / std::max(1, H - 1));
  if (mod & 2) options.alibi_slopes = attend::geometric_alibi_slopes(H);
#else
  if (mod != 0) {
    std::fprintf(stderr, "this tree has no score modifiers (mod %d)\n", mod);
    return 2;
  }
#endif
  CALLGRIND_START_INSTRUMENTATION;
  const Mat out = attend::multi_head_attention(q, k, v, attend::Heads{H, G}, options);
  CALLGRIND_STOP_INSTRUMENTATION;
  std::uint64_t hash = 1469598103934665603ull;  // FNV-1a over the result's bytes
  const auto* bytes = reinterpret_cast<const unsigned char*>(out.data());
  for (std::size_t i = 0; i < std::size_t(out.size()) * sizeof(float); ++i) hash = (hash ^ bytes[i]) * 1099511628211ull;
  std::printf("%016llx\n", static_cast<unsigned long long>(hash));
}
