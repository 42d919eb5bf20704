#pragma once
/// \file
/// The rows mainloop's two products over keys and values stored narrow: 16 bits (bfloat16, half) or 8 bits (q8),
/// with float queries, weights and accumulators: the decode loop of a 16-bit or 8-bit KV cache. Decoding reads
/// every key and value once per step and is bound by memory, so the point is to read 2 bytes (or a little over 1)
/// a value instead of 4: each narrow row is widened to float in registers (bfloat16: a 16-bit shift; half:
/// vcvtph2ps; q8: sign extension, conversion, times the block's scale) and multiplied in float, so neither the
/// float queries nor the weights are rounded. Register blocks of up to 4 rows x 4 keys for the scores and 4 rows x
/// 4 vectors of columns for the weighted sums, so each widened vector serves every row of the block, and the next
/// rows are prefetched so more of them are in flight than a block reads.
///
/// A Source is a row-major narrow matrix that loads 16 columns of a row widened to float: Rows16<S> (16-bit) and
/// RowsQ8<Scale> (8-bit values, one Scale per 32 columns). The code is AVX-512 (F, BW, VL) in functions with their
/// own target attributes, used when the CPU has it and the 16-bit path is not `generic` (cpu.hpp); otherwise
/// available() is false and the rows mainloop converts key tiles to float for detail::RowProducts.

#include <Eigen/Core>
#include <cstdint>
#include <type_traits>

#include "attend/detail/cpu.hpp"
#include "attend/detail/q8_rows.hpp"
#include "attend/shapes.hpp"

#if defined(ATTEND_X86_DISPATCH)
#define ATTEND_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#endif

// GCC 12's AVX-512 intrinsics start some vectors from the self-initialized `__m512 __Y = __Y`
// (_mm512_undefined_ps), which it reports as used uninitialized once inlined here: a false positive that -Werror
// would make fatal for anyone compiling this header.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace attend::detail {

/// Whether this machine and the current 16-bit path run the narrow row products.
inline bool narrow_products_available() {
#if defined(ATTEND_X86_DISPATCH)
  return cpu().avx512 && bf16_path_now() != Bf16Path::generic;
#else
  return false;
#endif
}

#if defined(ATTEND_X86_DISPATCH)

/// 16-bit rows (bfloat16 or half).
template <class S>
struct Rows16 {
  static constexpr int kVectors = 1;  ///< vectors of 16 values one load() gives
  const S* p;
  Index ld;

  ATTEND_TARGET_AVX512 void load(Index r, Index x, const __mmask16* m, __m512* out) const { out[0] = load(r, x, m[0]); }
  /// 16 values of row r from column x widened to float; only the lanes of m are read (the others are 0).
  ATTEND_TARGET_AVX512 __m512 load(Index r, Index x, __mmask16 m) const {
    const __m256i bits = _mm256_maskz_loadu_epi16(m, p + r * ld + x);
    if constexpr (std::is_same_v<S, Eigen::bfloat16>)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));  // bf16 -> f32: << 16
    else
      return _mm512_cvtph_ps(bits);
  }
  ATTEND_TARGET_AVX512 void prefetch(Index r, Index cols) const {
    for (Index x = 0; x < cols; x += 32) _mm_prefetch(reinterpret_cast<const char*>(p + r * ld + x), _MM_HINT_T0);
  }
  Rows16 from(Index r) const { return {p + r * ld, ld}; }
};

/// q8 rows: 8-bit values, one scale per 32 columns.
template <class Scale>
struct RowsQ8 {
  static constexpr int kVectors = 2;  ///< a block of 32 values: two vectors under one scale
  const std::int8_t* q;
  Index ldq;
  const Scale* s;
  Index lds;

  /// The block of row r from column x (a multiple of 32) widened and scaled: 2 vectors, one scale load.
  ATTEND_TARGET_AVX512 void load(Index r, Index x, const __mmask16* m, __m512* out) const {
    const __m256i bytes = _mm256_maskz_loadu_epi8(__mmask32(m[0]) | (__mmask32(m[1]) << 16), q + r * ldq + x);
    const __m512 scale = _mm512_set1_ps(static_cast<float>(s[r * lds + x / 32]));
    out[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(bytes))), scale);
    out[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(bytes, 1))), scale);
  }

  RowsQ8(const std::int8_t* q_, Index ldq_, const Scale* s_, Index lds_) : q(q_), ldq(ldq_), s(s_), lds(lds_) {}

  ATTEND_TARGET_AVX512 void prefetch(Index r, Index cols) const {
    for (Index x = 0; x < cols; x += 64) _mm_prefetch(reinterpret_cast<const char*>(q + r * ldq + x), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(s + r * lds), _MM_HINT_T0);
  }
  RowsQ8 from(Index r) const { return {q + r * ldq, ldq, s + r * lds, lds}; }
};

#endif

#if defined(ATTEND_X86_DISPATCH)

/// The products over a Source (Rows16 or RowsQ8) of narrow keys or values.
template <class Source>
struct RowProductsNarrow {
  /// s[r, j] = q[r, :] . k[j, :] for r < rows, j < keys, over `depth` values; k narrow.
  ATTEND_TARGET_AVX512 static void scores(float* s, Index lds, const float* q, Index ldq, Index rows, const Source& k,
                                          Index keys, Index depth) {
    if (rows == 0 || keys == 0) return;  // empty operands may have null data
    // Every widened key vector serves all the rows of a block (up to 4): widening, not loading, is the cost.
    Index r = 0;
    for (; r + kBlockRows <= rows; r += kBlockRows)
      scores_rows<kBlockRows, 4>(s + r * lds, lds, q + r * ldq, ldq, k, keys, depth);
    switch (rows - r) {
      case 3:
        scores_rows<3, 4>(s + r * lds, lds, q + r * ldq, ldq, k, keys, depth);
        break;
      case 2:
        scores_rows<2, 4>(s + r * lds, lds, q + r * ldq, ldq, k, keys, depth);
        break;
      case 1:
        scores_rows<1, 8>(s + r * lds, lds, q + r * ldq, ldq, k, keys, depth);
        break;
      default:
        break;
    }
  }

  /// acc[r, :] += sum over j < keys of p[r, j] * v[j, :] for r < rows, over `cols` values; v narrow.
  ATTEND_TARGET_AVX512 static void accumulate(float* acc, Index lda, const float* p, Index ldp, Index rows,
                                              const Source& v, Index keys, Index cols) {
    if (rows == 0 || keys == 0 || cols == 0) return;
    Index r = 0;
    for (; r + kBlockRows <= rows; r += kBlockRows)
      accumulate_rows<kBlockRows>(acc + r * lda, lda, p + r * ldp, ldp, v, keys, cols);
    for (; r < rows; ++r) accumulate_rows<1>(acc + r * lda, lda, p + r * ldp, ldp, v, keys, cols);
  }

  /// Asks for rows [0, rows) of `cols` values to be brought into the cache: the next key rows while the current
  /// ones are multiplied, so that more of them are in flight than the register blocks read.
  ATTEND_TARGET_AVX512 static void prefetch(const Source& rows_from, Index rows, Index cols) {
    for (Index r = 0; r < rows; ++r) rows_from.prefetch(r, cols);
  }

 private:
  static constexpr int kBlockRows = 4;

  ATTEND_TARGET_AVX512 static __mmask16 lanes(Index n) {
    return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  }

  // The four lane sums of a, b, c, d, together: halves added across the vectors first, so the whole reduction is
  // a few shuffles and adds instead of one horizontal sum each.
  ATTEND_TARGET_AVX512 static __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));     // a a b b
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xee));     // c c d d
    const __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));  // a b c d
    // Each 128-bit lane now holds 4 partial sums of one vector: transpose the 4 lanes as a 4 x 4 matrix, add rows.
    const __m128 a4 = _mm512_castps512_ps128(x), b4 = _mm512_extractf32x4_ps(x, 1);
    const __m128 c4 = _mm512_extractf32x4_ps(x, 2), d4 = _mm512_extractf32x4_ps(x, 3);
    return _mm_hadd_ps(_mm_hadd_ps(a4, b4), _mm_hadd_ps(c4, d4));
  }

  // R rows against C keys (k's rows 0..C): R x C vector accumulators across the depth, then their horizontal sums.
  template <int R, int C>
  ATTEND_TARGET_AVX512 static void scores_block(float* s, Index lds, const float* q, Index ldq, const Source& k,
                                                Index depth) {
    constexpr int V = Source::kVectors;
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    for (Index x = 0; x < depth; x += 16 * V) {
      __mmask16 m[V];
      for (int v = 0; v < V; ++v) m[v] = lanes(depth - x - 16 * v);
      __m512 kp[C][V];
      for (int c = 0; c < C; ++c) k.load(c, x, m, kp[c]);
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) {
          const __m512 qp = _mm512_maskz_loadu_ps(m[v], q + r * ldq + x + 16 * v);
          for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(qp, kp[c][v], acc[r][c]);  // s += q . k
        }
    }
    for (int r = 0; r < R; ++r) {
      if constexpr (C == 4)
        _mm_storeu_ps(s + r * lds, sum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
      else
        for (int c = 0; c < C; ++c) s[r * lds + c] = _mm512_reduce_add_ps(acc[r][c]);
    }
  }

  template <int R, int C>
  ATTEND_TARGET_AVX512 static void scores_rows(float* s, Index lds, const float* q, Index ldq, const Source& k,
                                               Index keys, Index depth) {
    Index j = 0;
    for (; j + C <= keys; j += C) scores_block<R, C>(s + j, lds, q, ldq, k.from(j), depth);
    for (; j < keys; ++j) scores_block<R, 1>(s + j, lds, q, ldq, k.from(j), depth);
  }

  // R rows x C vectors of columns [x0, x0 + 16 C) (C a multiple of the Source's vectors per load): the
  // accumulators stay in registers across all keys, and each key's value vectors are loaded (and widened) once for
  // the R rows.
  template <int R, int C>
  ATTEND_TARGET_AVX512 static void accumulate_block(float* acc, Index lda, const float* p, Index ldp, const Source& v,
                                                    Index x0, Index keys, Index cols) {
    constexpr int V = Source::kVectors;
    static_assert(C % V == 0, "whole loads of the source");
    __mmask16 m[C];
    for (int c = 0; c < C; ++c) m[c] = lanes(cols - 16 * c);
    __m512 a[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) a[r][c] = _mm512_maskz_loadu_ps(m[c], acc + r * lda + 16 * c);
    for (Index j = 0; j < keys; ++j) {
      __m512 vp[C];
      for (int c = 0; c < C; c += V) v.load(j, x0 + 16 * c, m + c, vp + c);
      for (int r = 0; r < R; ++r) {
        const __m512 w = _mm512_set1_ps(p[r * ldp + j]);
        for (int c = 0; c < C; ++c) a[r][c] = _mm512_fmadd_ps(w, vp[c], a[r][c]);  // acc += p v
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) _mm512_mask_storeu_ps(acc + r * lda + 16 * c, m[c], a[r][c]);
  }

  template <int R>
  ATTEND_TARGET_AVX512 static void accumulate_rows(float* acc, Index lda, const float* p, Index ldp, const Source& v,
                                                   Index keys, Index cols) {
    constexpr int V = Source::kVectors;
    Index x = 0;
    for (; x + 64 <= cols; x += 64) accumulate_block<R, 4>(acc + x, lda, p, ldp, v, x, keys, 64);
    for (; x < cols; x += 16 * V) accumulate_block<R, V>(acc + x, lda, p, ldp, v, x, keys, cols - x);
  }
};

/// The Source of narrow storage rows starting at row j: Rows16 for 16-bit views, RowsQ8 for q8 views.
template <class S>
auto narrow_rows(const ConstRowsRef<S>& rows, Index j) {
  return Rows16<S>{rows.data() + j * rows.outerStride(), rows.outerStride()};
}
template <class Scale>
auto narrow_rows(const Q8Rows<Scale>& rows, Index j) {
  return RowsQ8<Scale>(rows.values(j), rows.value_stride(), rows.scales(j), rows.scale_stride());
}

#endif  // ATTEND_X86_DISPATCH

}  // namespace attend::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
