#pragma once
/// \file
/// The rows mainloop's scores over q8 keys as integer dot products (AVX512-VNNI vpdpbusd), the decode loop of an
/// 8-bit KV cache. Widening every key value to float costs two shuffle-port operations per 16 values and leaves
/// one product per lane per FMA; vpdpbusd multiplies 4 bytes by 4 bytes and adds the 4 products into each 32-bit
/// lane in one operation. The query rows are written in two 8-bit digits per block of 32 (Q8Queries: a 15-bit
/// integer 128 hi + lo under one scale), and per block b of a query row r and a key j:
///   s[r, j] += (qs[r, b] ks[j, b]) * ((128 hi[r, b] + lo[r, b]) . k[j, b])      hi, lo, k integers, qs, ks scales
///
/// Layout: one key per 32-bit lane, 16 keys per vector, so the lanes' sums are 16 scores side by side and no
/// horizontal sum follows. A lane needs 4 consecutive values of its key: the 16 keys' 32-byte blocks are transposed
/// as a 16 x 8 matrix of 32-bit groups (32 shuffles for 16 keys x 32 values, shared by every query row), and each
/// 4-value group of a query row is broadcast from memory to all lanes. vpdpbusd takes one operand unsigned: the
/// keys' sign bits are flipped (k + 128) and the query side pays it back with the block's offset,
///   sum_i q_i (k_i + 128) = q . k + 128 sum_i q_i,
/// an integer per query row, digit and block, so the correction costs nothing per key. The integer sums are exact
/// (|128 hi . k + lo . k| <= 129 * 32 * 127 * 127 < 2^31) and lose at most 2^-24 of themselves in the conversion.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "attend/detail/assert.hpp"
#include "attend/detail/cpu.hpp"
#include "attend/detail/diagnostics.hpp"
#include "attend/detail/row_products_narrow.hpp"
#include "attend/quantized.hpp"
#include "attend/shapes.hpp"

#if defined(ATTEND_X86_DISPATCH)
#define ATTEND_TARGET_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
#endif

ATTEND_AVX512_WARNINGS_BEGIN  // GCC 12 false positives: see diagnostics.hpp

namespace attend::detail {

/// A tile's query rows in two 8-bit digits per block of 32 values: with scale = max |x| / 127 and v = x / scale
/// (in [-127, 127]), hi = round(v) and lo = round(128 (v - hi)) (in [-64, 64]), so x = scale (hi + lo / 128) to
/// within scale / 256: one digit alone would round q as coarsely as the keys (a score error about 100 times float's
/// here), the second makes it finer than bfloat16. Each digit carries the offset that pays back the keys' sign flip.
class Q8Queries {
 public:
  static constexpr Index kBlock = 32;

  /// Rounds rows [0, rows) of q (row stride ldq, d a multiple of 32). False, and nothing to read, when some value
  /// is not finite: those rows take the float products, which carry the infinity or NaN as the float call does.
  bool quantize(const float* q, Index ldq, Index rows, Index d) {
    ATTEND_DASSERT(d % kBlock == 0, "q8 queries hold whole blocks");
    d_ = d;
    blocks_ = d / kBlock;
    for (auto* digits : {&hi_, &lo_}) digits->resize(std::size_t(rows * d));
    scales_.resize(std::size_t(rows * blocks_));
    for (auto* offsets : {&hi_offsets_, &lo_offsets_}) offsets->resize(std::size_t(rows * blocks_));
    for (Index r = 0; r < rows; ++r)
      for (Index b = 0; b < blocks_; ++b) {
        const float* x = q + r * ldq + b * kBlock;
        for (Index i = 0; i < kBlock; ++i)
          if (!std::isfinite(x[i])) return false;
        const std::size_t at = std::size_t(r * d + b * kBlock), block = std::size_t(r * blocks_ + b);
        // The high digit is the keys' rounding (quantize_block(): scale = max |x| / 127, 0 for an all-zero block).
        const float scale = quantize_block(x, &hi_[at]);
        std::int32_t hi_sum = 0, lo_sum = 0;
        for (Index i = 0; i < kBlock; ++i) {
          const float v = scale > 0 ? std::clamp(x[i] / scale, -127.0f, 127.0f) : 0.0f;
          lo_[at + i] = static_cast<std::int8_t>(std::round(128 * (v - hi_[at + i])));  // |lo| <= 64
          hi_sum += hi_[at + i];
          lo_sum += lo_[at + i];
        }
        scales_[block] = scale / 128;        // x = (scale / 128) (128 hi + lo)
        hi_offsets_[block] = -128 * hi_sum;  // pays back sum_i hi_i (k_i + 128) - hi . k
        lo_offsets_[block] = -128 * lo_sum;
      }
    return true;
  }

  /// Row r's high and low digits (d values each).
  const std::int8_t* hi(Index r) const { return &hi_[std::size_t(r * d_)]; }
  const std::int8_t* lo(Index r) const { return &lo_[std::size_t(r * d_)]; }
  /// The scale of 128 hi + lo in block b of row r, and the digits' offsets there.
  float scale(Index r, Index b) const { return scales_[std::size_t(r * blocks_ + b)]; }
  std::int32_t hi_offset(Index r, Index b) const { return hi_offsets_[std::size_t(r * blocks_ + b)]; }
  std::int32_t lo_offset(Index r, Index b) const { return lo_offsets_[std::size_t(r * blocks_ + b)]; }

 private:
  Index d_ = 0, blocks_ = 0;
  std::vector<std::int8_t> hi_, lo_;
  std::vector<float> scales_;
  std::vector<std::int32_t> hi_offsets_, lo_offsets_;
};

/// The rows mainloop's scratch for q8 keys: the tile's queries in digits, and a run's half scales widened to float.
struct Q8Scratch {
  Q8Queries queries;
  std::vector<float> key_scales;
};

#if defined(ATTEND_X86_DISPATCH)

/// `blocks` scales of each of rows [0, n) of half-scale q8 rows, widened into out (row j at out + j * blocks): the
/// products then read float scales whichever storage holds them.
ATTEND_TARGET_AVX512_VNNI inline void widen_scales(const RowsQ8<Eigen::half>& rows, Index n, Index blocks, float* out) {
  for (Index j = 0; j < n; ++j)
    for (Index b = 0; b < blocks; b += 16) {
      const __mmask16 m = first_lanes(blocks - b);
      const __m256i bits = _mm256_maskz_loadu_epi16(m, rows.s + j * rows.lds + b);
      _mm512_mask_storeu_ps(out + j * blocks + b, m, _mm512_cvtph_ps(bits));
    }
}

/// The scores of the rows mainloop over q8 key rows with float scales, from Q8Queries.
struct RowProductsQ8 {
  /// s[r, j] = q[r0 + r] . k[j] for r < rows, j < keys, over `depth` values (a multiple of 32), in the scale of the
  /// dequantized values.
  ATTEND_TARGET_AVX512_VNNI static void scores(float* s, Index lds, const Q8Queries& q, Index r0, Index rows,
                                               const RowsQ8<float>& k, Index keys, Index depth) {
    if (rows == 0 || keys == 0) return;  // empty operands may have null data
    ATTEND_DASSERT(depth % 32 == 0, "q8 keys hold whole blocks");
    for (Index j = 0; j < keys; j += 16) {
      const Index n = std::min<Index>(16, keys - j);
      const __mmask16 valid = first_lanes(n);
      // The lanes past the last key read key j again: their sums are never stored.
      const std::int8_t* key[16];
      for (Index i = 0; i < 16; ++i) key[i] = k.q + (j + (i < n ? i : 0)) * k.ldq;
      __m512 scales[4];
      for (Index b = 0; b < depth / 32; ++b) {
        __m512i t[8];
        transpose(key, 32 * b, t);
        if (b % 4 == 0) block_scales(k, j, n, depth / 32, b, scales);
        const __m512 ks = scales[b % 4];
        for (Index r = 0; r < rows; ++r) {
          const __m512i hi = digit_dot(q.hi(r0 + r) + 32 * b, q.hi_offset(r0 + r, b), t);
          const __m512i lo = digit_dot(q.lo(r0 + r) + 32 * b, q.lo_offset(r0 + r, b), t);
          const __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(hi, 7), lo);  // (128 hi + lo) . k, exact
          float* out = s + r * lds + j;
          const __m512 before = b == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(valid, out);
          const __m512 scale = _mm512_mul_ps(ks, _mm512_set1_ps(q.scale(r0 + r, b)));                  // qs ks
          _mm512_mask_storeu_ps(out, valid, _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, before));  // s += ...
        }
      }
    }
  }

 private:
  // t[g] = the 32-bit groups g of the blocks at column x of the 16 keys, lane i from key i, with the sign bits
  // flipped (k + 128, unsigned). Rows i and i + 8 share a vector (one 256-bit half each) so that three rounds of
  // in-lane unpacks and one of 64-bit permutes transpose both halves at once.
  ATTEND_TARGET_AVX512_VNNI static void transpose(const std::int8_t* const* key, Index x, __m512i* t) {
    const __m512i flip = _mm512_set1_epi8(char(0x80));
    __m512i z[8];
    for (int i = 0; i < 8; ++i) {
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(key[i] + x));
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(key[i + 8] + x));
      z[i] = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), flip);
    }
    // u[4h + g]: per 128-bit lane, group g (lane 0 of each half) or g + 4 (lane 1) of keys 4h .. 4h + 3.
    __m512i u[8];
    for (int h = 0; h < 8; h += 4) {
      const __m512i a0 = _mm512_unpacklo_epi32(z[h], z[h + 1]), a1 = _mm512_unpackhi_epi32(z[h], z[h + 1]);
      const __m512i a2 = _mm512_unpacklo_epi32(z[h + 2], z[h + 3]), a3 = _mm512_unpackhi_epi32(z[h + 2], z[h + 3]);
      u[h] = _mm512_unpacklo_epi64(a0, a2);
      u[h + 1] = _mm512_unpackhi_epi64(a0, a2);
      u[h + 2] = _mm512_unpacklo_epi64(a1, a3);
      u[h + 3] = _mm512_unpackhi_epi64(a1, a3);
    }
    // Keys 0-3 and 4-7 (and 8-11, 12-15) side by side: 128-bit lanes 0 or 1 of each half of u[g] and u[g + 4].
    const __m512i first = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0),
                  second = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    for (int g = 0; g < 4; ++g) {
      t[g] = _mm512_permutex2var_epi64(u[g], first, u[g + 4]);
      t[g + 4] = _mm512_permutex2var_epi64(u[g], second, u[g + 4]);
    }
  }

  // Per key lane: digit . k over one block of 32 values, from the transposed keys t (k + 128) and the digit's
  // offset (-128 sum of its values).
  ATTEND_TARGET_AVX512_VNNI static __m512i digit_dot(const std::int8_t* digit, std::int32_t offset, const __m512i* t) {
    __m512i dot = _mm512_set1_epi32(offset);
    for (int g = 0; g < 8; ++g) {
      std::int32_t group;  // the digit's values 4g .. 4g + 3, broadcast to every key's lane
      std::memcpy(&group, digit + 4 * g, sizeof group);
      dot = _mm512_dpbusd_epi32(dot, t[g], _mm512_set1_epi32(group));  // += sum digit_i (k_i + 128)
    }
    return dot;
  }

  // out[c], c < 4: lane i holds the scale of block b0 + c of row j + i of `rows` (rows past the n valid ones read
  // row j again; blocks past the last are 0). The 16 rows' scales of 4 blocks are loaded as 16 short vectors and
  // transposed (12 inserts and 8 unpacks): a gather per block costs several times as much here.
  ATTEND_TARGET_AVX512_VNNI static void block_scales(const RowsQ8<float>& rows, Index j, Index n, Index blocks,
                                                     Index b0, __m512* out) {
    const __mmask8 m = __mmask8(first_lanes(std::min<Index>(blocks - b0, 4)));
    __m128 x[16];
    for (Index i = 0; i < 16; ++i) x[i] = _mm_maskz_loadu_ps(m, rows.s + (j + (i < n ? i : 0)) * rows.lds + b0);
    __m512 z[4];  // z[c]: rows c, c + 4, c + 8, c + 12 in its four 128-bit lanes
    for (int c = 0; c < 4; ++c) {
      z[c] = _mm512_insertf32x4(_mm512_castps128_ps512(x[c]), x[c + 4], 1);
      z[c] = _mm512_insertf32x4(_mm512_insertf32x4(z[c], x[c + 8], 2), x[c + 12], 3);
    }
    // A 4 x 4 transpose in every 128-bit lane: lane L of out[c] then holds block c of rows 4L .. 4L + 3.
    const __m512 t0 = _mm512_unpacklo_ps(z[0], z[1]), t1 = _mm512_unpackhi_ps(z[0], z[1]);
    const __m512 t2 = _mm512_unpacklo_ps(z[2], z[3]), t3 = _mm512_unpackhi_ps(z[2], z[3]);
    const __m512d d0 = _mm512_castps_pd(t0), d1 = _mm512_castps_pd(t1);
    const __m512d d2 = _mm512_castps_pd(t2), d3 = _mm512_castps_pd(t3);
    out[0] = _mm512_castpd_ps(_mm512_unpacklo_pd(d0, d2));
    out[1] = _mm512_castpd_ps(_mm512_unpackhi_pd(d0, d2));
    out[2] = _mm512_castpd_ps(_mm512_unpacklo_pd(d1, d3));
    out[3] = _mm512_castpd_ps(_mm512_unpackhi_pd(d1, d3));
  }
};

#endif  // ATTEND_X86_DISPATCH

}  // namespace attend::detail

ATTEND_AVX512_WARNINGS_END
