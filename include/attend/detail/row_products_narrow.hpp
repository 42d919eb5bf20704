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

#include "attend/detail/assert.hpp"
#include "attend/detail/cpu.hpp"
#include "attend/detail/diagnostics.hpp"
#include "attend/detail/q8_rows.hpp"
#include "attend/shapes.hpp"

#if defined(ATTEND_X86_DISPATCH)
#define ATTEND_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#endif

ATTEND_AVX512_WARNINGS_BEGIN  // GCC 12 false positives: see diagnostics.hpp

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
  /// Whether whole chunks of 32 values load as their even and odd elements (see load_pairs() and pairs()).
  static constexpr bool kSplitsPairs = std::is_same_v<S, Eigen::bfloat16>;
  const S* p;
  Index ld;

  /// bfloat16 only: the 32 values of row r from column x (all inside the row) as two float vectors, the even
  /// elements x, x + 2, ... and the odd ones x + 1, x + 3, ... A 32-bit lane holds an even value in its low half
  /// and the next odd one in its high half, and a bfloat16 is the high half of a float: the even one is the lane
  /// shifted left by 16, the odd one the lane with its low half cleared. One load and two single-cycle integer
  /// operations for 32 values, instead of two loads and two widening shuffles (which compete with the FMAs for
  /// the shuffle port) and two shifts.
  ATTEND_TARGET_AVX512 void load_pairs(Index r, Index x, __m512* out) const {
    const __m512i lanes = _mm512_loadu_si512(p + r * ld + x);
    out[0] = _mm512_castsi512_ps(_mm512_slli_epi32(lanes, 16));
    out[1] = _mm512_castsi512_ps(_mm512_and_si512(lanes, _mm512_set1_epi32(int(0xffff0000u))));
  }

  ATTEND_TARGET_AVX512 void load(Index r, Index x, const __mmask16* m, __m512* out) const { out[0] = load(r, x, m[0]); }
  /// 16 values of row r from column x (all inside the row) widened to float, with an unmasked load.
  ATTEND_TARGET_AVX512 void load(Index r, Index x, __m512* out) const {
    out[0] = widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + r * ld + x)));
  }
  /// 16 values of row r from column x widened to float; only the lanes of m are read (the others are 0).
  ATTEND_TARGET_AVX512 __m512 load(Index r, Index x, __mmask16 m) const {
    return widen(_mm256_maskz_loadu_epi16(m, p + r * ld + x));
  }
  ATTEND_TARGET_AVX512 void prefetch(Index r, Index cols) const {
    for (Index x = 0; x < cols; x += 32) _mm_prefetch(reinterpret_cast<const char*>(p + r * ld + x), _MM_HINT_T1);
  }
  Rows16 from(Index r) const { return {p + r * ld, ld}; }

 private:
  /// 16 values of S to float (exact).
  ATTEND_TARGET_AVX512 static __m512 widen(__m256i bits) {
    if constexpr (std::is_same_v<S, Eigen::bfloat16>)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));  // bf16 -> f32: << 16
    else
      return _mm512_cvtph_ps(bits);
  }
};

/// q8 rows: 8-bit values, one scale per 32 columns.
template <class Scale>
struct RowsQ8 {
  static constexpr int kVectors = 2;  ///< a block of 32 values: two vectors under one scale
  static constexpr bool kSplitsPairs = false;
  const std::int8_t* q;
  Index ldq;
  const Scale* s;
  Index lds;

  /// The block of row r from column x (a multiple of 32) widened and scaled: 2 vectors, one scale load. q8 rows
  /// hold whole blocks, so every lane is read (m is all ones) and each half is sign-extended straight from memory,
  /// with no shuffle to split a wider load.
  ATTEND_TARGET_AVX512 void load(Index r, Index x, [[maybe_unused]] const __mmask16* m, __m512* out) const {
    ATTEND_DASSERT(m[0] == 0xffff && m[1] == 0xffff, "q8 rows are read in whole blocks");
    load(r, x, out);
  }
  ATTEND_TARGET_AVX512 void load(Index r, Index x, __m512* out) const {
    const std::int8_t* p = q + r * ldq + x;
    const __m512 scale = _mm512_set1_ps(static_cast<float>(s[r * lds + x / 32]));
    for (int h = 0; h < 2; ++h) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h));
      out[h] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), scale);  // value = scale * q
    }
  }

  RowsQ8(const std::int8_t* q_, Index ldq_, const Scale* s_, Index lds_) : q(q_), ldq(ldq_), s(s_), lds(lds_) {}

  ATTEND_TARGET_AVX512 void prefetch(Index r, Index cols) const {
    for (Index x = 0; x < cols; x += 64) _mm_prefetch(reinterpret_cast<const char*>(q + r * ldq + x), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(s + r * lds), _MM_HINT_T1);
  }
  RowsQ8 from(Index r) const { return {q + r * ldq, ldq, s + r * lds, lds}; }
};

/// The pair-split layout of a float row of n values for a source that splits pairs (Rows16<bfloat16>): every whole
/// chunk of 32 values [x, x + 32) holds its 16 even elements, then its 16 odd ones; a last partial chunk keeps its
/// order. The products read queries and accumulate outputs in this layout so that they meet the values as
/// load_pairs() gives them; pairs(row, n, true) makes it in place, pairs(row, n, false) undoes it.
ATTEND_TARGET_AVX512 inline void pairs(float* row, Index n, bool split) {
  // Split: the even elements of a || b, then the odd ones. Join: elements 0..15 of e and o interleaved, then 16..31.
  const __m512i first = split ? _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0)
                              : _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i second = split ? _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1)
                               : _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (Index x = 0; x + 32 <= n; x += 32) {
    const __m512 a = _mm512_loadu_ps(row + x), b = _mm512_loadu_ps(row + x + 16);
    _mm512_storeu_ps(row + x, _mm512_permutex2var_ps(a, first, b));
    _mm512_storeu_ps(row + x + 16, _mm512_permutex2var_ps(a, second, b));
  }
}

/// The products over a Source (Rows16 or RowsQ8) of narrow keys or values. For a Source that splits pairs, q and
/// acc are in the pair-split layout (pairs()).
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

  /// Asks for rows [0, rows) of `cols` values to be brought into L2: the next key rows while the current ones are
  /// multiplied, so that more of them are in flight than the register blocks read. Into L2 (prefetcht1), not L1: a
  /// step's rows through every kv group are about as many bytes as L1 holds, and prefetches into L1 hold its few
  /// line fill buffers, which the loads of the rows being multiplied wait for.
  ATTEND_TARGET_AVX512 static void prefetch(const Source& rows_from, Index rows, Index cols) {
    for (Index r = 0; r < rows; ++r) rows_from.prefetch(r, cols);
  }

 private:
  static constexpr int kBlockRows = 4;

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

  /// acc[r][c] += q_r . k_c over W vectors: k's in kp, q's row r read from q + r * ldq, only the lanes of m[v]
  /// when m is given (a tail). Inlined into each loop of scores_block, where m is a constant.
  template <int R, int C, int W>
  ATTEND_TARGET_AVX512 EIGEN_ALWAYS_INLINE static void fmadd_block(__m512 (&acc)[R][C], const __m512 (&kp)[C][W],
                                                                   const float* q, Index ldq, const __mmask16* m) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < W; ++v) {
        const float* qv = q + r * ldq + 16 * v;
        const __m512 qp = m ? _mm512_maskz_loadu_ps(m[v], qv) : _mm512_loadu_ps(qv);
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(qp, kp[c][v], acc[r][c]);  // s += q . k
      }
  }

  // R rows against C keys (k's rows 0..C): R x C vector accumulators across the depth, then their horizontal sums.
  template <int R, int C>
  ATTEND_TARGET_AVX512 static void scores_block(float* s, Index lds, const float* q, Index ldq, const Source& k,
                                                Index depth) {
    constexpr int V = Source::kVectors;
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    Index x = 0;
    if constexpr (Source::kSplitsPairs)
      for (; x + 32 <= depth; x += 32) {  // q's even and odd elements meet k's (pair-split layout)
        __m512 kp[C][2];
        for (int c = 0; c < C; ++c) k.load_pairs(c, x, kp[c]);
        fmadd_block(acc, kp, q + x, ldq, nullptr);
      }
    // Whole vectors with unmasked loads: with masked ones in the loop, GCC 12 also stored every accumulator to the
    // stack on each pass (16 stores per 16 FMAs, the store port the bottleneck of half scores).
    for (; x + 16 * V <= depth; x += 16 * V) {
      __m512 kp[C][V];
      for (int c = 0; c < C; ++c) k.load(c, x, kp[c]);
      fmadd_block(acc, kp, q + x, ldq, nullptr);
    }
    if (x < depth) {  // the tail, masked
      __mmask16 m[V];
      for (int v = 0; v < V; ++v) m[v] = first_lanes(depth - x - 16 * v);
      __m512 kp[C][V];
      for (int c = 0; c < C; ++c) k.load(c, x, m, kp[c]);
      fmadd_block(acc, kp, q + x, ldq, m);
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
  template <int R, int C, bool Pairs = false>
  ATTEND_TARGET_AVX512 static void accumulate_block(float* acc, Index lda, const float* p, Index ldp, const Source& v,
                                                    Index x0, Index keys, Index cols) {
    constexpr int V = Pairs ? 2 : Source::kVectors;
    static_assert(C % V == 0, "whole loads of the source");
    __mmask16 m[C];
    for (int c = 0; c < C; ++c) m[c] = first_lanes(cols - 16 * c);
    __m512 a[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) a[r][c] = _mm512_maskz_loadu_ps(m[c], acc + r * lda + 16 * c);
    for (Index j = 0; j < keys; ++j) {
      __m512 vp[C];
      for (int c = 0; c < C; c += V) {
        if constexpr (Pairs)
          v.load_pairs(j, x0 + 16 * c, vp + c);  // whole chunks of 32 columns, pair-split as acc is
        else
          v.load(j, x0 + 16 * c, m + c, vp + c);
      }
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
    constexpr bool pairs = Source::kSplitsPairs;
    Index x = 0;
    for (; x + 64 <= cols; x += 64) accumulate_block<R, 4, pairs>(acc + x, lda, p, ldp, v, x, keys, 64);
    if constexpr (pairs)
      for (; x + 32 <= cols; x += 32) accumulate_block<R, 2, true>(acc + x, lda, p, ldp, v, x, keys, 32);
    for (; x < cols; x += 16 * V) accumulate_block<R, V>(acc + x, lda, p, ldp, v, x, keys, cols - x);
  }
};

/// The Source of narrow storage rows starting at row j: Rows16 for 16-bit rows (a run of GroupKeys: rows of S read in
/// place with a row stride), RowsQ8 for q8 rows.
template <class S>
auto narrow_rows(const Eigen::Map<const Matrix<S>, 0, Eigen::OuterStride<>>& rows, Index j) {
  return Rows16<S>{rows.data() + j * rows.outerStride(), rows.outerStride()};
}
template <class Scale>
auto narrow_rows(const Q8Rows<Scale>& rows, Index j) {
  return RowsQ8<Scale>(rows.values(j), rows.value_stride(), rows.scales(j), rows.scale_stride());
}

#endif  // ATTEND_X86_DISPATCH

}  // namespace attend::detail

ATTEND_AVX512_WARNINGS_END
