#pragma once
/// \file
/// The 16-bit prefill mainloop: a query tile of many rows with bfloat16 (or half, rounded to bfloat16) queries,
/// keys and values, its products on AMX tiles or AVX512-BF16 (tile16_products.hpp), everything else in float.
///
/// Per key tile [kt, kt + tk), the verbs of the algorithm:
///   S = Q K^T                 Products::scores: bfloat16 products, float scores
///   transform and mask        s = scale * (q . k) and ScoreTransform in float; the row's visible range
///   online-softmax step       AVX-512 on float: m' = max(m, max_j s_j), p_j = exp(s_j - m'), l' = alpha l + sum p_j
///                             (online_softmax.hpp's rules), O rows rescaled by alpha, P rounded to bfloat16
///   O += P V                  Products::accumulate: bfloat16 weights times bfloat16 values, float accumulators
///
/// The scale is applied to the float scores, not folded into the queries: a bfloat16 query times a scale that is
/// not a power of two would be rounded again. Only what is stored in bfloat16 is rounded: the inputs, the weights
/// the second product consumes, and the output.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attend/detail/assert.hpp"
#include "attend/detail/cpu.hpp"
#include "attend/detail/group_keys.hpp"
#include "attend/detail/online_softmax.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/query_tile.hpp"
#include "attend/detail/score_transform.hpp"
#include "attend/detail/tile16_products.hpp"
#include "attend/detail/vnni_pack.hpp"
#include "attend/shapes.hpp"

// GCC 12's AVX-512 intrinsics start some vectors from the self-initialized `__m512 __Y = __Y`
// (_mm512_undefined_ps), which it reports as used uninitialized once inlined here: a false positive that -Werror
// would make fatal for anyone compiling this header.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(ATTEND_X86_DISPATCH)

namespace attend::detail {

/// Scratch space of the 16-bit mainloop for tiles of up to `rows` rows and key tiles of up to `keys` keys (a
/// multiple of 32); sized once per thread.
struct Tile16Workspace {
  Index rows_pad, keys, d_pad, dv_pad;
  LineVector<std::uint16_t>
      q;                 ///< [rows_pad x d_pad] the tile's stacked queries in bfloat16, unscaled (AMX, DotProducts)
  LineVector<float> qf;  ///< [rows_pad x d_pad] the same in float (WidenProducts)
  LineVector<float> s;   ///< [rows_pad x keys] S, then P in place (WidenProducts)
  LineVector<std::uint16_t> p;  ///< [rows_pad x keys] P in bfloat16 (AMX, DotProducts)
  LineVector<float> o;          ///< [rows_pad x dv_pad] the unnormalized output
  std::vector<float> max, sum;  ///< running m and l per row
  Matrix<float> rows;           ///< [rows, dv] the normalized output rows, after finish()
  Vector<float> lse;            ///< [rows] their log-sum-exp

  Tile16Workspace(Index rows, Index keys_, Index d, Index dv)
      : rows_pad(round_up(rows, 16)),
        keys(round_up(keys_, 32)),
        d_pad(round_up(d, 32)),
        dv_pad(round_up(dv, 16)),
        q(static_cast<std::size_t>(rows_pad * d_pad), 0),
        qf(static_cast<std::size_t>(rows_pad * d_pad), 0.f),
        s(static_cast<std::size_t>(rows_pad * keys), 0.f),
        p(static_cast<std::size_t>(rows_pad * keys), 0),
        o(static_cast<std::size_t>(rows_pad * dv_pad)),
        max(static_cast<std::size_t>(rows_pad)),
        sum(static_cast<std::size_t>(rows_pad)),
        rows(rows, dv),
        lse(rows) {}

  Tile16Operands operands() { return {q.data(), qf.data(), s.data(), p.data(), s.data(), o.data(), keys}; }
};

/// The softmax step on one row of float scores, in AVX-512 (see the file comment). The exponential is 2^x with
/// x = (s - m) log2(e), folded into one fused multiply-subtract: x = n + f with n an integer, 2^f by a degree-4
/// polynomial on [-1/2, 1/2] (relative error below 3e-6, far under the bfloat16 rounding of the weights that
/// follows), then scaled by 2^n (vscalefps, which underflows to exactly 0).
struct RowSoftmax16 {
  /// 2^x; with kMayHoldNegInf, x = -inf gives 0 (else it may be NaN: only a bias makes -inf scores). NaN stays NaN.
  template <bool kMayHoldNegInf>
  ATTEND_TARGET_BF16 static __m512 exp2(__m512 x) {
    if constexpr (kMayHoldNegInf)
      x = _mm512_max_ps(_mm512_set1_ps(-150.f), x);  // 2^-150 rounds to 0; max(c, NaN) keeps the NaN
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 y = _mm512_set1_ps(9.560519836e-03f);  // 2^f, minimax on [-1/2, 1/2]
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.591712286e-02f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.402498165e-01f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.931219575e-01f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.999991905e-01f));
    return _mm512_scalef_ps(y, n);  // 2^f 2^n
  }

  /// Lanes [j, j + 16) that lie in [lo, hi).
  ATTEND_TARGET_BF16 static __mmask16 visible(Index j, Index lo, Index hi) {
    const Index a = std::clamp<Index>(lo - j, 0, 16), b = std::clamp<Index>(hi - j, 0, 16);
    return static_cast<__mmask16>(((1u << b) - 1) & ~((1u << a) - 1));
  }

  /// Row of scores s (keys [0, width)), visible keys [lo, hi) with lo < hi <= width, width a multiple of 32:
  /// scores are s * scale. Updates m and l, writes the weights (0 outside [lo, hi)) to p, in bfloat16 (P is
  /// std::uint16_t, an A operand of AMX and vdpbf16ps) or in float (P is float: in place of the scores), and returns
  /// alpha = exp(m_old - m_new) (0 on the row's first visible tile) for the caller's accumulator, or 1 when the
  /// maximum did not move.
  template <bool kMayHoldNegInf, class P>
  ATTEND_TARGET_BF16 static float step(float* s, P* p, Index width, Index lo, Index hi, float scale, float& m,
                                       float& l) {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const bool whole = lo == 0 && hi == width;
    __m512 vmax = _mm512_set1_ps(neg_inf);
    if (whole)
      for (Index j = 0; j < width; j += 16) vmax = _mm512_max_ps(_mm512_loadu_ps(s + j), vmax);
    else
      for (Index j = lo / 16 * 16; j < hi; j += 16)
        vmax = _mm512_mask_max_ps(vmax, visible(j, lo, hi), _mm512_loadu_ps(s + j), vmax);
    const float m_tile = _mm512_reduce_max_ps(vmax) * scale;  // scale > 0: max(scale s) = scale max(s)
    const float m_new = std::max(m, m_tile);                  // m' = max(m, max_j s_j)
    if (m_new == neg_inf) {  // only -inf scores so far (a bias): no weight, nothing moves
      std::fill_n(p, width, P(0));
      return 1;
    }
    constexpr float log2e = 1.44269504088896341f;
    const __m512 vscale = _mm512_set1_ps(scale * log2e), vm = _mm512_set1_ps(m_new * log2e);
    __m512 vsum = _mm512_setzero_ps();
    for (Index j = 0; j < width; j += 32) {
      // p_j = exp(s_j - m') = 2^((s_j - m') log2 e), two vectors at a time (one conversion to bfloat16).
      __m512 e0 = exp2<kMayHoldNegInf>(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vscale, vm));
      __m512 e1 = exp2<kMayHoldNegInf>(_mm512_fmsub_ps(_mm512_loadu_ps(s + j + 16), vscale, vm));
      if (!whole) {
        e0 = _mm512_maskz_mov_ps(visible(j, lo, hi), e0);
        e1 = _mm512_maskz_mov_ps(visible(j + 16, lo, hi), e1);
      }
      vsum = _mm512_add_ps(vsum, _mm512_add_ps(e0, e1));
      if constexpr (std::is_same_v<P, float>) {
        _mm512_storeu_ps(p + j, e0);
        _mm512_storeu_ps(p + j + 16, e1);
      } else {
        _mm512_storeu_si512(p + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));  // P rounded to bfloat16
      }
    }
    const float alpha = m_new == m ? 1.f : std::exp(m - m_new);  // std::exp: exactly 0 on the first visible tile
    l = l * alpha + _mm512_reduce_add_ps(vsum);                  // l' = alpha l + sum_j p_j
    m = m_new;
    return alpha;
  }

  /// o[0, n) *= alpha (n a multiple of 16).
  ATTEND_TARGET_BF16 static void rescale(float* o, Index n, float alpha) {
    const __m512 a = _mm512_set1_ps(alpha);
    for (Index c = 0; c < n; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), a));
  }
};

/// One query tile through the 16-bit mainloop: the constructor, absorb() key tiles in increasing order (each
/// starting on a multiple of 32 keys), finish(). Keys and values come packed whole (VnniKeys).
template <class T, class S, class Products>
class Tile16 {
 public:
  using C = float;

  Tile16(const Problem<T, S>& pb, const GroupKeys<S>& kv, const VnniKeys& packed, Index g, Index p0, Index p1,
         Tile16Workspace& ws)
      : tile_(pb, g, p0, p1), kv_(kv), packed_(packed), ws_(ws), transform_(pb) {
    const Index rows = tile_.rows();
    ATTEND_DASSERT(rows <= ws.rows_pad && packed.d_pad == ws.d_pad && packed.dv_pad == ws.dv_pad,
                   "the tile fits the 16-bit workspace");
    // The stacked queries as bfloat16, unscaled; rows past the tile stay zero.
    const Index d = pb.d;
    for (Index r = 0; r < rows; ++r) {
      const T* q = pb.q.data() + tile_.position(r) * pb.q.outerStride() + tile_.head(r) * d;
      if constexpr (Products::kFloatOperands) {
        float* dst = ws.qf.data() + r * ws.d_pad;
        for (Index t = 0; t < d; ++t) dst[t] = static_cast<float>(q[t]);
      } else if constexpr (std::is_same_v<T, Eigen::bfloat16>) {
        std::memcpy(ws.q.data() + r * ws.d_pad, q, static_cast<std::size_t>(d) * sizeof(std::uint16_t));
      } else {
        std::uint16_t* dst = ws.q.data() + r * ws.d_pad;
        for (Index t = 0; t < d; ++t) dst[t] = bf16_bits(q[t]);
      }
    }
    std::fill_n(ws.max.begin(), rows, -std::numeric_limits<float>::infinity());
    std::fill_n(ws.sum.begin(), rows, 0.f);
    std::fill_n(ws.o.begin(), ws.rows_pad * ws.dv_pad, 0.f);
    Products::configure();
  }
  Tile16(const Tile16&) = delete;
  Tile16& operator=(const Tile16&) = delete;
  ~Tile16() { Products::release(); }

  const QueryTile<T, S>& tile() const { return tile_; }

  /// Folds keys [kt, kt + tk) (within tile().keys(), kt a multiple of 32) into the running softmax.
  void absorb(Index kt, Index tk) {
    ATTEND_DASSERT(kt % 32 == 0 && round_up(tk, 32) <= ws_.keys, "16-bit key tiles start on 32 keys and fit");
    const auto part = tile_.rows_seeing(kt, tk);
    if (part.r0 >= part.r1) return;
    const Index tkp = round_up(tk, 32), b0 = part.r0 / 16, b1 = (part.r1 + 15) / 16;
    const Tile16Operands w = ws_.operands();
    Products::scores(w, packed_, b0, b1, kt, tkp);  // S = Q K^T
    softmax(kt, tk, tkp, b0 * 16, std::min(b1 * 16, tile_.rows()), part.cut_by_mask);
    accumulate(w, kt, tk, tkp, b0, b1, part.cut_by_mask);  // O += P V
  }

  /// Leaves in ws.rows the normalized rows (position-major stack) and in ws.lse each row's log-sum-exp of its
  /// visible scaled scores (-inf, with a zero row, when it saw no key).
  void finish() {
    const Index dv = tile_.problem().dv;
    for (Index r = 0; r < tile_.rows(); ++r) {
      const float l = ws_.sum[r];
      const Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>> o(ws_.o.data() + r * ws_.dv_pad, dv);
      if (l == 0.f)
        ws_.rows.row(r).setZero();  // saw no key: zeros, whatever V held
      else
        ws_.rows.row(r) = o / l;  // O = acc / l
      ws_.lse[r] = online_softmax::log_sum_exp(ws_.max[r], l);
    }
  }

 private:
  /// Where row r's weights go: bfloat16 for AMX and DotProducts, float in place of the scores for WidenProducts.
  using Weight = std::conditional_t<Products::kFloatOperands, float, std::uint16_t>;
  Weight* weights(Index r) {
    if constexpr (Products::kFloatOperands)
      return ws_.s.data() + r * ws_.keys;
    else
      return ws_.p.data() + r * ws_.keys;
  }

  /// The score transform and the online-softmax step for rows [r0, r1) of the tile against keys [kt, kt + tk),
  /// whose scores fill columns [0, tkp) of S (columns tk.. are padding and hidden).
  void softmax(Index kt, Index tk, Index tkp, Index r0, Index r1, bool cut_by_mask) {
    const float scale = tile_.problem().scale;
    const bool terms = transform_.has_terms() || tile_.problem().softcap > 0;
    for (Index r = r0; r < r1; ++r) {
      float* s = ws_.s.data() + r * ws_.keys;
      Weight* p = weights(r);
      const auto [lo, hi] = tile_.visible(r, kt, tk, cut_by_mask);
      if (lo >= hi) {  // the row sees none of these keys: no weight, m, l and O unchanged
        std::fill_n(p, tkp, Weight(0));
        continue;
      }
      float row_scale = scale;
      if (terms) {  // s = scale * (q . k), then softcap, bias and ALiBi: in place, by the one ScoreTransform
        auto row = Eigen::Map<Eigen::Array<float, 1, Eigen::Dynamic>>(s, tk);
        row *= scale;
        transform_.cap(row);
        transform_.add_terms(s, tile_.position(r), tile_.head(r), kt, tk);
        row_scale = 1;
      }
      const float alpha = transform_.has_bias()
                              ? RowSoftmax16::step<true>(s, p, tkp, lo, hi, row_scale, ws_.max[r], ws_.sum[r])
                              : RowSoftmax16::step<false>(s, p, tkp, lo, hi, row_scale, ws_.max[r], ws_.sum[r]);
      if (alpha != 1.f) RowSoftmax16::rescale(ws_.o.data() + r * ws_.dv_pad, ws_.dv_pad, alpha);  // acc' = alpha acc
    }
  }

  /// O += P V. A zero weight times a non-finite value would poison a row (0 * inf = NaN, also in the tile
  /// products): where the mask or a bias zeroes weights and a 32-key block of values holds a non-finite one, that
  /// tile's weighted sum skips zero weights instead, in float.
  void accumulate(const Tile16Operands& w, Index kt, Index tk, Index tkp, Index b0, Index b1, bool cut_by_mask) {
    bool finite = true;
    for (Index m = kt / 32; m < (kt + tkp) / 32; ++m) finite = finite && packed_.finite_v[static_cast<std::size_t>(m)];
    if (finite || !(cut_by_mask || transform_.has_bias())) {
      Products::accumulate(w, packed_, b0, b1, kt, tkp);
      return;
    }
    const Index dv = tile_.problem().dv;
    for (Index r = b0 * 16; r < std::min(b1 * 16, tile_.rows()); ++r)
      for (Index j = 0; j < tk; ++j) {
        float pj;
        if constexpr (Products::kFloatOperands) {
          pj = weights(r)[j];
        } else {
          const std::uint32_t bits = std::uint32_t(weights(r)[j]) << 16;  // bfloat16 -> float
          std::memcpy(&pj, &bits, sizeof pj);
        }
        if (pj == 0.f) continue;
        Eigen::Map<Eigen::Matrix<float, 1, Eigen::Dynamic>>(ws_.o.data() + r * ws_.dv_pad, dv) +=
            pj * kv_.values(kt + j, kt + j + 1).template cast<float>();
      }
  }

  QueryTile<T, S> tile_;
  const GroupKeys<S>& kv_;
  const VnniKeys& packed_;
  Tile16Workspace& ws_;
  ScoreTransform<T, S> transform_;
};

}  // namespace attend::detail

#endif  // ATTEND_X86_DISPATCH

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
