#pragma once
/// \file
/// Rows converted between 16-bit storage and float: widen() for the generic path's inputs (key tiles, whole kv
/// groups and query rows converted, then the float mainloops), narrow() for every path's 16-bit outputs. Eigen 3.4
/// evaluates `.cast<>()` between bfloat16 or half and float one value at a time (its vectorized casts are not used
/// by expressions), which made converting a kv group cost as much as a tenth of a prefill. A bfloat16 is the high
/// half of a float, so both directions are integer operations any compiler vectorizes for the build's target;
/// half takes vcvtph2ps and vcvtps2ph where the CPU has AVX-512 (cpu.hpp) and Eigen's conversion elsewhere. Both
/// give Eigen's bits: widening is exact, narrowing rounds to nearest even (NaN to Eigen's quiet NaN).

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "attend/detail/cpu.hpp"
#include "attend/detail/diagnostics.hpp"
#include "attend/shapes.hpp"

ATTEND_AVX512_WARNINGS_BEGIN  // GCC 12 false positives: see diagnostics.hpp

namespace attend::detail {

#if defined(ATTEND_X86_DISPATCH)
/// dst[0, n) = src[0, n): 16 halves per vcvtph2ps, the tail masked.
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) inline void widen_half_avx512(const Eigen::half* src,
                                                                                        float* dst, Index n) {
  for (Index i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
  }
}

/// dst[0, n) = src[0, n) rounded to half, to nearest even.
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) inline void narrow_half_avx512(const float* src,
                                                                                         Eigen::half* dst, Index n) {
  for (Index i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    const __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_mask_storeu_epi16(dst + i, m, h);
  }
}
#endif

/// dst[0, n) = src[0, n) as float, for S of 16 bits, in portable code (the compiler vectorizes the bfloat16 loop).
template <class S>
void widen_portable(const S* src, float* dst, Index n) {
  static_assert(is_16bit<S>, "widen() converts 16-bit storage");
  if constexpr (std::is_same_v<S, Eigen::bfloat16>) {
    for (Index i = 0; i < n; ++i) {
      std::uint16_t bits;
      std::memcpy(&bits, src + i, sizeof bits);
      const std::uint32_t word = std::uint32_t(bits) << 16;  // the float whose high half is the bfloat16
      std::memcpy(dst + i, &word, sizeof word);
    }
  } else {
    for (Index i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

/// dst[0, n) = src[0, n) rounded to S of 16 bits, as Eigen's conversion rounds, in portable code.
template <class S>
void narrow_portable(const float* src, S* dst, Index n) {
  static_assert(is_16bit<S>, "narrow() converts to 16-bit storage");
  if constexpr (std::is_same_v<S, Eigen::bfloat16>) {
    for (Index i = 0; i < n; ++i) {
      std::uint32_t word;
      std::memcpy(&word, src + i, sizeof word);
      const bool nan = (word & 0x7fffffffu) > 0x7f800000u;
      // Round to nearest even: add just under half of the dropped 16 bits, plus the kept part's lowest bit.
      const std::uint32_t rounded = (word + 0x7fffu + ((word >> 16) & 1u)) >> 16;
      const std::uint16_t bits = std::uint16_t(nan ? ((word >> 16) & 0x8000u) | 0x7fc0u : rounded);
      std::memcpy(static_cast<void*>(dst + i), &bits, sizeof bits);  // bfloat16 holds just these bits
    }
  } else {
    for (Index i = 0; i < n; ++i) dst[i] = static_cast<S>(src[i]);
  }
}

/// dst[0, n) = src[0, n) as float, for S of 16 bits.
template <class S>
void widen(const S* src, float* dst, Index n) {
#if defined(ATTEND_X86_DISPATCH)
  if constexpr (std::is_same_v<S, Eigen::half>)
    if (cpu().avx512) return widen_half_avx512(src, dst, n);
#endif
  widen_portable(src, dst, n);
}

/// dst[0, n) = src[0, n) rounded to S of 16 bits, as Eigen's conversion rounds.
template <class S>
void narrow(const float* src, S* dst, Index n) {
#if defined(ATTEND_X86_DISPATCH)
  if constexpr (std::is_same_v<S, Eigen::half>)
    if (cpu().avx512) return narrow_half_avx512(src, dst, n);
#endif
  narrow_portable(src, dst, n);
}

}  // namespace attend::detail

ATTEND_AVX512_WARNINGS_END
