// detail::widen and detail::narrow (convert16.hpp), the vectorized conversions between 16-bit storage and float
// rows: the same bits as Eigen's scalar conversions for every 16-bit pattern (widening) and for floats around
// every rounding case (narrowing: ties to even, the largest finite values and overflow to infinity, subnormals,
// signed zeros, infinities, NaN), on row lengths around the 16-value vectors so a masked tail shows; the portable
// loops and, where the machine has AVX-512, the vcvtph2ps / vcvtps2ph ones.

#include <gtest/gtest.h>

#include <attend/detail/convert16.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::Index;

template <class S>
std::uint16_t bits_of(S x) {
  std::uint16_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
template <class S>
S from_bits(std::uint16_t b) {
  S x;
  std::memcpy(static_cast<void*>(&x), &b, sizeof b);
  return x;
}
std::uint32_t bits_of_float(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

template <class S>
class Convert16 : public ::testing::Test {};
using Types16 = ::testing::Types<Eigen::bfloat16, Eigen::half>;
TYPED_TEST_SUITE(Convert16, Types16);

// NaN compares by class only: the payload of a NaN is not part of either conversion's promise.
bool same_float(float a, float b) { return (std::isnan(a) && std::isnan(b)) || bits_of_float(a) == bits_of_float(b); }

// The conversions this machine can run: the portable loop, the dispatching one, and the AVX-512 one for half.
template <class S>
std::vector<std::pair<const char*, void (*)(const S*, float*, Index)>> widenings() {
  std::vector<std::pair<const char*, void (*)(const S*, float*, Index)>> all = {
      {"portable", &attend::detail::widen_portable<S>}, {"dispatched", &attend::detail::widen<S>}};
#if defined(ATTEND_X86_DISPATCH)
  if constexpr (std::is_same_v<S, Eigen::half>)
    if (attend::detail::cpu().avx512) all.push_back({"avx512", &attend::detail::widen_half_avx512});
#endif
  return all;
}
template <class S>
std::vector<std::pair<const char*, void (*)(const float*, S*, Index)>> narrowings() {
  std::vector<std::pair<const char*, void (*)(const float*, S*, Index)>> all = {
      {"portable", &attend::detail::narrow_portable<S>}, {"dispatched", &attend::detail::narrow<S>}};
#if defined(ATTEND_X86_DISPATCH)
  if constexpr (std::is_same_v<S, Eigen::half>)
    if (attend::detail::cpu().avx512) all.push_back({"avx512", &attend::detail::narrow_half_avx512});
#endif
  return all;
}

TYPED_TEST(Convert16, WideningGivesEigensFloatForEveryBitPattern) {
  using S = TypeParam;
  std::vector<S> src(1 << 16);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = from_bits<S>(std::uint16_t(i));
  for (auto [name, widen] : widenings<S>()) {
    for (Index n : {Index(1) << 16, Index(15), Index(17), Index(33)}) {
      std::vector<float> dst(static_cast<std::size_t>(n), -1.f);
      widen(src.data(), dst.data(), n);
      for (Index i = 0; i < n; ++i)
        ASSERT_TRUE(same_float(dst[i], static_cast<float>(src[i]))) << name << " bits " << std::hex << bits_of(src[i]);
    }
  }
}

TYPED_TEST(Convert16, NarrowingRoundsAsEigenDoes) {
  using S = TypeParam;
  std::vector<float> src;
  // Every 16-bit value, and the floats just above, between and below it: ties, and one ulp either side of them.
  for (std::uint32_t i = 0; i < (1u << 16); i += 7) {
    const float f = static_cast<float>(from_bits<S>(std::uint16_t(i)));
    if (!std::isfinite(f)) continue;
    for (float x : {f, std::nextafter(f, 1e30f), std::nextafter(f, -1e30f)}) src.push_back(x);
    const float next = static_cast<float>(from_bits<S>(std::uint16_t(i + 1)));
    if (std::isfinite(next)) {
      const float mid = f + (next - f) / 2;
      for (float x : {mid, std::nextafter(mid, 1e30f), std::nextafter(mid, -1e30f)}) src.push_back(x);
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float x :
       {0.f, -0.f, inf, -inf, std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
        std::numeric_limits<float>::max(), std::numeric_limits<float>::min(), std::numeric_limits<float>::denorm_min(),
        65504.f, 65519.f, 65520.f, 1e-8f, -1e-8f})
    src.push_back(x);
  std::mt19937 rng(160);
  std::normal_distribution<float> n(0.f, 100.f);
  for (int i = 0; i < 20000; ++i) src.push_back(n(rng));
  for (auto [name, narrow] : narrowings<S>()) {
    for (Index len : {Index(src.size()), Index(15), Index(17)}) {
      std::vector<S> dst(static_cast<std::size_t>(len), from_bits<S>(0x1234));
      narrow(src.data(), dst.data(), len);
      for (Index i = 0; i < len; ++i) {
        const S want = static_cast<S>(src[static_cast<std::size_t>(i)]);
        if (std::isnan(src[static_cast<std::size_t>(i)]))
          ASSERT_TRUE(std::isnan(static_cast<float>(dst[i]))) << name << " " << i;
        else
          ASSERT_EQ(bits_of(dst[i]), bits_of(want)) << name << " float " << src[static_cast<std::size_t>(i)];
      }
    }
  }
}

}  // namespace
