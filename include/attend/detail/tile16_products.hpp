#pragma once
/// \file
/// The two products of the 16-bit prefill mainloop, on bfloat16 operands with float results, three ways (run-time
/// dispatch, cpu.hpp):
///
///   AmxProducts       AMX: 16 x 16 float C tiles += 16 x 32 A tiles (bfloat16) times 32 x 16 B tiles, one
///                     tdpbf16ps each, 2 x 2 C tiles per step so each A and B tile loaded serves two products.
///   DotProducts       AVX512-BF16 (VectorProducts<DotMultiply>): each 64-byte row of a B tile (16 columns x 2
///                     depth values) times a broadcast pair of A values, one vdpbf16ps per row of A and 16 columns;
///                     register blocks of rows x vectors. A in bfloat16, as for AMX.
///   WidenProducts     AVX-512 (VectorProducts<WidenMultiply>): the same blocks, each B row widened to two float
///                     vectors in registers (a shift and a mask), times broadcast float A values, by fused
///                     multiply-adds. The A operands (queries, weights) stay in float, so nothing beyond the inputs
///                     is rounded; twice the multiply instructions of DotProducts, for the cores where vdpbf16ps
///                     issues at half the FMA rate (Bf16Products in cpu.hpp chooses).
///
/// All read keys and values in the tiles of vnni_pack.hpp (B) and queries and weights row-major (A: bfloat16 for
/// AMX and DotProducts, float for WidenProducts), and write scores and accumulate outputs row-major in float. Rows go
/// in blocks of 16 (AMX tile height); the caller pads the operands (zeros) to whole blocks and keeps padded rows out of
/// its results.
///
///   scores(w, kv, b0, b1, kt, tkp)      S[rows of blocks b0..b1, 0..tkp) = Q K^T for keys [kt, kt + tkp)
///   accumulate(w, kv, b0, b1, kt, tkp)  O[rows of blocks b0..b1, 0..dv_pad) += P V for the same keys
///
/// kt and tkp are multiples of 32. The products accumulate in float (tdpbf16ps and vdpbf16ps add exact products of
/// bfloat16 pairs into float lanes); nothing is rounded here that the caller did not store in bfloat16.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attend/detail/cpu.hpp"
#include "attend/detail/diagnostics.hpp"
#include "attend/detail/vnni_pack.hpp"
#include "attend/shapes.hpp"

#if defined(ATTEND_X86_DISPATCH)
#define ATTEND_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#define ATTEND_TARGET_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,amx-tile,amx-bf16")))

ATTEND_AVX512_WARNINGS_BEGIN  // GCC 12 false positives: see diagnostics.hpp

namespace attend::detail {

/// The operands of one query tile, in the layouts above.
struct Tile16Operands {
  const std::uint16_t* q;  ///< [rows_pad x d_pad] bfloat16 bits, row stride d_pad (AMX, DotProducts)
  const float* qf;         ///< [rows_pad x d_pad] the same queries in float (WidenProducts)
  float* s;                ///< [rows_pad x ld] scores
  const std::uint16_t* p;  ///< [rows_pad x ld] weights, bfloat16 bits (AMX, DotProducts)
  const float* pf;         ///< [rows_pad x ld] weights in float, in place of the scores (WidenProducts)
  float* o;                ///< [rows_pad x dv_pad] unnormalized outputs
  Index ld;                ///< row stride of s and p: the widest key tile
};

struct AmxProducts {
  static constexpr bool kFloatOperands = false;  ///< A operands in bfloat16: the weights are rounded

  /// Loads this thread's tile configuration: 8 tiles of 16 rows x 64 bytes (C: 16 floats; A, B: 32 bfloat16). The
  /// configuration is a constant in memory: GCC 12 drops stores into a local configuration before ldtilecfg
  /// (it does not see the instruction read them).
  ATTEND_TARGET_AMX static void configure() {
    struct alignas(64) Config {
      std::uint8_t palette, start_row;
      std::uint8_t reserved[14];
      std::uint16_t colsb[16];
      std::uint8_t rows[16];
    };
    static const Config config = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};
    _tile_loadconfig(&config);
  }
  /// Gives the tile state back (the OS then need not save it on a context switch).
  ATTEND_TARGET_AMX static void release() { _tile_release(); }

  /// The loops go over chunks of 4 row blocks x 4 key blocks (64 rows of queries and 64 keys, 16 KiB each at d =
  /// 128), so that within a chunk every tile load hits L1: tile loads from L2 halve AMX's rate.
  ATTEND_TARGET_AMX static void scores(const Tile16Operands& w, const VnniKeys& kv, Index b0, Index b1, Index kt,
                                       Index tkp) {
    constexpr Index kChunk = 4;
    for (Index bc = b0; bc < b1; bc += kChunk) {
      const Index bc1 = std::min(b1, bc + kChunk);
      for (Index n0 = 0; n0 < tkp / 16; n0 += kChunk) {
        const Index n1 = std::min(tkp / 16, n0 + kChunk);
        Index b = bc;
        for (; b + 2 <= bc1; b += 2) scores_blocks<true>(w, kv, b, kt, n0, n1);
        if (b < bc1) scores_blocks<false>(w, kv, b, kt, n0, n1);
      }
    }
  }

  /// Value columns go in pairs of blocks in the outer loop: their tiles (keys x 32 columns) stay in L1 while the
  /// weights of every row pair stream past them.
  ATTEND_TARGET_AMX static void accumulate(const Tile16Operands& w, const VnniKeys& kv, Index b0, Index b1, Index kt,
                                           Index tkp) {
    const Index cols = kv.dv_pad / 16;
    Index c = 0;
    for (; c + 2 <= cols; c += 2) {
      Index b = b0;
      for (; b + 2 <= b1; b += 2) accumulate_blocks<true, true>(w, kv, b, c, kt, tkp);
      if (b < b1) accumulate_blocks<false, true>(w, kv, b, c, kt, tkp);
    }
    if (c < cols) {
      Index b = b0;
      for (; b + 2 <= b1; b += 2) accumulate_blocks<true, false>(w, kv, b, c, kt, tkp);
      if (b < b1) accumulate_blocks<false, false>(w, kv, b, c, kt, tkp);
    }
  }

 private:
  // Row blocks b (and b + 1 when kTwo) against the pairs of 16-key blocks [n0, n1): C tiles 0, 1 (rows b) and 2, 3
  // (rows b + 1), A tiles 4, 5, B tiles 6, 7.
  template <bool kTwo>
  ATTEND_TARGET_AMX static void scores_blocks(const Tile16Operands& w, const VnniKeys& kv, Index b, Index kt, Index n0,
                                              Index n1) {
    const Index q_stride = kv.d_pad * 2, s_stride = w.ld * 4;
    const std::uint16_t* q0 = w.q + b * 16 * kv.d_pad;
    for (Index n = n0; n < n1; n += 2) {
      _tile_zero(0);
      _tile_zero(1);
      if constexpr (kTwo) {
        _tile_zero(2);
        _tile_zero(3);
      }
      for (Index d = 0; d < kv.d_pad / 32; ++d) {
        _tile_loadd(4, q0 + d * 32, q_stride);
        if constexpr (kTwo) _tile_loadd(5, q0 + 16 * kv.d_pad + d * 32, q_stride);
        _tile_loadd(6, kv.key_tile(kt / 16 + n, d), 64);
        _tile_loadd(7, kv.key_tile(kt / 16 + n + 1, d), 64);
        _tile_dpbf16ps(0, 4, 6);  // S[rows b, keys n]     += Q K^T
        _tile_dpbf16ps(1, 4, 7);  // S[rows b, keys n + 1] += Q K^T
        if constexpr (kTwo) {
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      float* s0 = w.s + b * 16 * w.ld + n * 16;
      _tile_stored(0, s0, s_stride);
      _tile_stored(1, s0 + 16, s_stride);
      if constexpr (kTwo) {
        _tile_stored(2, s0 + 16 * w.ld, s_stride);
        _tile_stored(3, s0 + 16 * w.ld + 16, s_stride);
      }
    }
  }

  // Row blocks b (and b + 1) x value column blocks c (and c + 1): the C tiles are loaded from O, accumulate over
  // every 32-key step of the tile, and are stored back.
  template <bool kTwoRows, bool kTwoCols>
  ATTEND_TARGET_AMX static void accumulate_blocks(const Tile16Operands& w, const VnniKeys& kv, Index b, Index c,
                                                  Index kt, Index tkp) {
    const Index o_stride = kv.dv_pad * 4, p_stride = w.ld * 2;
    float* o0 = w.o + b * 16 * kv.dv_pad + c * 16;
    float* o1 = o0 + 16 * kv.dv_pad;
    _tile_loadd(0, o0, o_stride);
    if constexpr (kTwoCols) _tile_loadd(1, o0 + 16, o_stride);
    if constexpr (kTwoRows) _tile_loadd(2, o1, o_stride);
    if constexpr (kTwoRows && kTwoCols) _tile_loadd(3, o1 + 16, o_stride);
    const std::uint16_t* p0 = w.p + b * 16 * w.ld;
    for (Index m = 0; m < tkp / 32; ++m) {
      _tile_loadd(4, p0 + m * 32, p_stride);
      if constexpr (kTwoRows) _tile_loadd(5, p0 + 16 * w.ld + m * 32, p_stride);
      _tile_loadd(6, kv.value_tile(kt / 32 + m, c), 64);
      if constexpr (kTwoCols) _tile_loadd(7, kv.value_tile(kt / 32 + m, c + 1), 64);
      _tile_dpbf16ps(0, 4, 6);  // O[rows b, cols c] += P V
      if constexpr (kTwoCols) _tile_dpbf16ps(1, 4, 7);
      if constexpr (kTwoRows) _tile_dpbf16ps(2, 5, 6);
      if constexpr (kTwoRows && kTwoCols) _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, o0, o_stride);
    if constexpr (kTwoCols) _tile_stored(1, o0 + 16, o_stride);
    if constexpr (kTwoRows) _tile_stored(2, o1, o_stride);
    if constexpr (kTwoRows && kTwoCols) _tile_stored(3, o1 + 16, o_stride);
  }
};

/// How the AVX-512 products multiply one 64-byte B tile row (16 columns x 2 depth values) by a pair of A values
/// into a float accumulator of 16 columns: two policies for VectorProducts below.
///
///   WidenMultiply  the B row widened to two float vectors (the even depth values << 16, the odd ones masked), the
///                  A pair as two broadcast floats, two fused multiply-adds. A in float: nothing is rounded.
///   DotMultiply    the B row as it is, the A pair as one broadcast 32-bit lane of two bfloat16, one vdpbf16ps.
///                  A in bfloat16, as for AMX.
struct WidenMultiply {
  static constexpr bool kFloatOperands = true;
  struct Row {
    __m512 even, odd;
  };
  struct Pair {
    __m512 even, odd;
  };
  ATTEND_TARGET_BF16 static Row row(const std::uint16_t* b) {
    const __m512i x = _mm512_loadu_si512(b);
    return {_mm512_castsi512_ps(_mm512_slli_epi32(x, 16)),
            _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000u))))};
  }
  ATTEND_TARGET_BF16 static Pair pair(const float* a) { return {_mm512_set1_ps(a[0]), _mm512_set1_ps(a[1])}; }
  ATTEND_TARGET_BF16 static __m512 madd(__m512 acc, const Row& b, const Pair& a) {
    return _mm512_fmadd_ps(a.odd, b.odd, _mm512_fmadd_ps(a.even, b.even, acc));  // acc += a0 b0 + a1 b1
  }
  static const float* queries(const Tile16Operands& w) { return w.qf; }
  static const float* weights(const Tile16Operands& w) { return w.pf; }
};

struct DotMultiply {
  static constexpr bool kFloatOperands = false;
  using Row = __m512bh;
  using Pair = __m512bh;
  ATTEND_TARGET_BF16 static Row row(const std::uint16_t* b) { return (__m512bh)_mm512_loadu_si512(b); }
  ATTEND_TARGET_BF16 static Pair pair(const std::uint16_t* a) {
    std::int32_t bits;
    std::memcpy(&bits, a, sizeof bits);
    return (__m512bh)_mm512_set1_epi32(bits);
  }
  ATTEND_TARGET_BF16 static __m512 madd(__m512 acc, Row b, Pair a) {
    return _mm512_dpbf16_ps(acc, b, a);  // acc += a0 b0 + a1 b1, exact products summed in float
  }
  static const std::uint16_t* queries(const Tile16Operands& w) { return w.q; }
  static const std::uint16_t* weights(const Tile16Operands& w) { return w.p; }
};

/// The AVX-512 products: register blocks of A rows x B vectors, each B tile row loaded once for the block's rows and
/// each A pair once for the block's vectors, the multiply of the Multiply policy.
template <class Multiply>
struct VectorProducts {
  static constexpr bool kFloatOperands = Multiply::kFloatOperands;
  static void configure() {}
  static void release() {}

  ATTEND_TARGET_BF16 static void scores(const Tile16Operands& w, const VnniKeys& kv, Index b0, Index b1, Index kt,
                                        Index tkp) {
    const Index r1 = b1 * 16;
    for (Index r = b0 * 16; r < r1; r += 8) scores_rows<8>(w, kv, r, kt, tkp);
  }

  ATTEND_TARGET_BF16 static void accumulate(const Tile16Operands& w, const VnniKeys& kv, Index b0, Index b1, Index kt,
                                            Index tkp) {
    const Index r1 = b1 * 16, cols = kv.dv_pad / 16;
    for (Index r = b0 * 16; r < r1; r += 4) {
      Index c = 0;
      for (; c + 4 <= cols; c += 4) accumulate_rows<4, 4>(w, kv, r, c, kt, tkp);
      for (; c < cols; ++c) accumulate_rows<4, 1>(w, kv, r, c, kt, tkp);
    }
  }

 private:
  // R rows against 32 keys (two vectors), over dim pairs.
  template <int R>
  ATTEND_TARGET_BF16 static void scores_rows(const Tile16Operands& w, const VnniKeys& kv, Index r, Index kt,
                                             Index tkp) {
    const auto* q = Multiply::queries(w);
    for (Index n = 0; n < tkp / 16; n += 2) {
      __m512 acc[R][2];
      for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
      for (Index d = 0; d < kv.d_pad / 32; ++d) {
        const std::uint16_t* k0 = kv.key_tile(kt / 16 + n, d);
        const std::uint16_t* k1 = kv.key_tile(kt / 16 + n + 1, d);
        for (int t = 0; t < 16; ++t) {
          const typename Multiply::Row x0 = Multiply::row(k0 + t * 32), x1 = Multiply::row(k1 + t * 32);
          for (int i = 0; i < R; ++i) {
            const typename Multiply::Pair a = Multiply::pair(q + (r + i) * kv.d_pad + d * 32 + 2 * t);
            acc[i][0] = Multiply::madd(acc[i][0], x0, a);  // S[r, keys] += q . k, two dims at a time
            acc[i][1] = Multiply::madd(acc[i][1], x1, a);
          }
        }
      }
      for (int i = 0; i < R; ++i) {
        _mm512_storeu_ps(w.s + (r + i) * w.ld + n * 16, acc[i][0]);
        _mm512_storeu_ps(w.s + (r + i) * w.ld + n * 16 + 16, acc[i][1]);
      }
    }
  }

  // R rows x C column blocks of 16, over key pairs.
  template <int R, int C>
  ATTEND_TARGET_BF16 static void accumulate_rows(const Tile16Operands& w, const VnniKeys& kv, Index r, Index c,
                                                 Index kt, Index tkp) {
    const auto* p = Multiply::weights(w);
    __m512 acc[R][C];
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) acc[i][j] = _mm512_loadu_ps(w.o + (r + i) * kv.dv_pad + (c + j) * 16);
    for (Index m = 0; m < tkp / 32; ++m) {
      const std::uint16_t* v[C];
      for (int j = 0; j < C; ++j) v[j] = kv.value_tile(kt / 32 + m, c + j);
      for (int t = 0; t < 16; ++t) {
        typename Multiply::Row x[C];
        for (int j = 0; j < C; ++j) x[j] = Multiply::row(v[j] + t * 32);
        for (int i = 0; i < R; ++i) {
          const typename Multiply::Pair a = Multiply::pair(p + (r + i) * w.ld + m * 32 + 2 * t);
          for (int j = 0; j < C; ++j) acc[i][j] = Multiply::madd(acc[i][j], x[j], a);  // O += p v, two keys
        }
      }
    }
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) _mm512_storeu_ps(w.o + (r + i) * kv.dv_pad + (c + j) * 16, acc[i][j]);
  }
};

using WidenProducts = VectorProducts<WidenMultiply>;
using DotProducts = VectorProducts<DotMultiply>;

}  // namespace attend::detail

#endif  // ATTEND_X86_DISPATCH

ATTEND_AVX512_WARNINGS_END
