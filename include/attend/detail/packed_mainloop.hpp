#pragma once
/// \file
/// The packed mainloop: a query tile of many rows (prefill) against key tiles, both products on operands packed
/// once (detail::PackedGemm over Eigen's GEMM kernel). A kv group's keys and values are packed once per thread
/// (PackedKeys), each query tile once, and the scores are computed straight into the packed left layout that the
/// second product reads, so they are never packed at all.
///
/// Per key tile [kt, kt + tk), the verbs of the algorithm:
///   S = Q K^T                 PackedGemm::multiply_add, panel by panel into the packed layout of P
///   transform                 ScoreTransform (softcap on the whole tile, bias entry by entry)
///   mask + online softmax     online_softmax::panel_step, per panel, vectorized across its rows
///   O += P V                  PackedGemm::multiply_add into the column-major accumulator
///
/// With packed keys, key tiles start on panel boundaries (multiples of PackedGemm<T>::nr) and hold whole panels
/// unless they end the keys; packing whole groups or single tiles then gives the same tiles and the same bits.

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "attend/detail/assert.hpp"
#include "attend/detail/finite.hpp"
#include "attend/detail/group_keys.hpp"
#include "attend/detail/online_softmax.hpp"
#include "attend/detail/packed_gemm.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/query_tile.hpp"
#include "attend/detail/score_transform.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Packs keys [kt, kt + tk) of `kv` (stored as S) as right operands of C: K^T [d x tk] at k, V [tk x dv] at v.
/// Keys stored in 16 bits are converted to C first (into `scratch`, grown as needed), then packed as float keys
/// are. Stored rows are packed run by run in place: a panel of keys (PackedGemm::nr of them) packed alone is the
/// same panel, so runs are packed in whole panels, and the few keys of a panel that straddles two runs (runs of
/// rows that are not a multiple of nr) are copied into `scratch` first.
template <class C, class S>
void pack_key_rows(C* k, C* v, const GroupKeys<S>& kv, Index kt, Index tk, Matrix<C>& scratch) {
  if (tk == 0) return;
  using Gemm = PackedGemm<C>;
  const Index d = kv.key_cols(), dv = kv.value_cols(), end = kt + tk;
  const auto room = [&](Index rows) {
    if (scratch.rows() < rows || scratch.cols() < std::max(d, dv)) scratch.resize(std::max(rows, tk), std::max(d, dv));
  };
  Index ld;
  for (Index a = kt; a < end;) {
    Index b = std::min(end, kv.run_end(a));
    if (b < end && b - a < Gemm::nr) {
      // A panel across runs: its keys gathered row by row.
      b = std::min(end, a + Gemm::nr);
      room(b - a);
      for (Index j = a; j < b; ++j) copy_rows(kv.keys(j, j + 1), 0, 1, scratch, j - a);
      Gemm::pack_rhs_transposed(k + (a - kt) * d, scratch.data(), scratch.outerStride(), b - a, d);
    } else {
      if (b < end) b = a + (b - a) / Gemm::nr * Gemm::nr;  // whole panels; the run's last keys go with the next
      if constexpr (!std::is_same_v<C, S>) room(b - a);
      const C* rows = rows_of(kv.keys(a, b), 0, b - a, scratch, 0, ld);
      Gemm::pack_rhs_transposed(k + (a - kt) * d, rows, ld, b - a, d);
    }
    a = b;
  }
  // Values: rows land at their offset in every panel, so runs go in as they are.
  kv.for_each_run(kt, end, [&](Index a, Index b) {
    if constexpr (!std::is_same_v<C, S>) room(b - a);
    const C* rows = rows_of(kv.values(a, b), 0, b - a, scratch, 0, ld);
    Gemm::pack_rhs_rows(v, tk, a - kt, rows, ld, b - a, dv);
  });
}

/// One kv group's keys and values packed as right operands: keys as K^T [d x Lk], values as V [Lk x dv]. Reused
/// by every query tile of the group that runs on this thread.
template <class C>
struct PackedKeys {
  Vector<C> k, v;
  Index keys = 0;
  Index group = -1;   ///< the kv group held (an id its schedule gives), -1 for none
  Matrix<C> scratch;  ///< keys converted from 16-bit storage, or gathered across runs, before packing

  template <class S>
  void pack(const GroupKeys<S>& kv, Index g) {
    keys = kv.rows();
    k.resize(keys * kv.key_cols());
    v.resize(keys * kv.value_cols());
    pack_key_rows(k.data(), v.data(), kv, 0, keys, scratch);
    group = g;
  }
};

/// Scratch space of the packed mainloop for tiles of up to `rows` rows and key tiles of up to `keys` keys; sized
/// once per thread, reused for every tile.
template <class C>
struct PackedWorkspace {
  using ColMajor = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  Matrix<C> q;               ///< [rows, d]: the tile's stacked, scaled queries
  Matrix<C> acc;             ///< [rows, dv]: the normalized output rows, after finish()
  Vector<C> max;             ///< running row maximum m
  Vector<C> sum;             ///< running row sum l, then the log-sum-exp
  Vector<C> divisor;         ///< what each row divides by at the end
  Vector<C> q_packed;        ///< the tile's queries packed as a left operand
  Vector<C> q_part;          ///< some of the tile's rows packed, for key tiles the others do not see (lazily)
  Vector<C> panels;          ///< [rows x panel_keys] S, then P, in the packed left layout
  ColMajor acc_cols;         ///< [rows+, dv]: the unnormalized output, column-major as the packed product writes it
  Vector<C> k_tile, v_tile;  ///< one key tile packed, when groups are not packed whole (lazily)
  Matrix<C> convert;         ///< key rows converted from 16-bit storage or gathered across runs (lazily)
  std::vector<Index> visible_lo, visible_hi;  ///< per tile row: the keys of a cut tile it sees
  Vector<C> alibi_slope;                      ///< per tile row: ALiBi's slope (ScoreTransform::alibi_rows)
  std::vector<double> alibi_diagonal;         ///< per tile row: its position + D
  Index panel_keys;                           ///< the most keys a tile holds: `keys` rounded up to whole panels

  PackedWorkspace(Index rows, Index keys, Index d, Index dv)
      : q(rows, d),
        acc(rows, dv),
        max(rows),
        sum(rows),
        divisor(rows),
        q_packed(rows * d),
        acc_cols(padded_column(rows), dv),
        visible_lo(static_cast<std::size_t>(rows)),
        visible_hi(static_cast<std::size_t>(rows)),
        alibi_slope(rows),
        alibi_diagonal(static_cast<std::size_t>(rows)),
        panel_keys((keys + PackedGemm<C>::nr - 1) / PackedGemm<C>::nr * PackedGemm<C>::nr) {
    panels.resize(rows * panel_keys);
  }

 private:
  /// A column length for `rows` that is an odd number of cache lines. Row-wise passes over a column-major matrix
  /// step by one column; with columns of a power-of-two size every step lands in the same few L1 sets and each
  /// read misses.
  static Index padded_column(Index rows) {
    constexpr Index line = 64 / sizeof(C);
    const Index lines = (rows + line - 1) / line;
    return (lines % 2 == 1 ? lines : lines + 1) * line;
  }
};

/// One query tile through the packed mainloop: the constructor, absorb() key tiles in increasing order, finish().
/// `packed`, when given, holds the group's keys and values packed whole; without it each key tile is packed as it
/// is absorbed.
template <class T, class S = T>
class PackedTile {
 public:
  using C = accumulator_t<T>;
  using Gemm = PackedGemm<C>;

  PackedTile(const Problem<T, S>& pb, const GroupKeys<S>& kv, const PackedKeys<C>* packed, Index g, Index p0, Index p1,
             PackedWorkspace<C>& ws)
      : tile_(pb, g, p0, p1), kv_(kv), packed_(packed), ws_(ws), transform_(pb) {
    const Index rows = tile_.rows();
    ATTEND_DASSERT(rows <= ws.q.rows(), "the tile's rows fit the packed workspace");
    tile_.load_queries(ws.q);
    ws.max.head(rows).setConstant(-std::numeric_limits<C>::infinity());
    ws.sum.head(rows).setZero();
    ws.acc_cols.topRows(rows).setZero();
    Gemm::pack_lhs_rows(ws.q_packed.data(), ws.q.data(), ws.q.outerStride(), rows, pb.d);
    if (transform_.has_alibi())
      transform_.alibi_rows(
          rows, [&](Index r) { return tile_.position(r); }, [&](Index r) { return tile_.head(r); },
          ws.alibi_slope.data(), ws.alibi_diagonal.data());
  }

  const QueryTile<T, S>& tile() const { return tile_; }

  /// Folds keys [kt, kt + tk) (within tile().keys()) into the running softmax. A value row whose key is hidden
  /// from a query (by the mask or a -inf bias) is never multiplied into that query's output, so infinities or NaN
  /// stored there cannot leak through 0 * inf.
  void absorb(Index kt, Index tk) {
    ATTEND_DASSERT(!packed_ || (kt % Gemm::nr == 0 && (tk % Gemm::nr == 0 || kt + tk == tile_.problem().keys)),
                   "key tiles of keys packed whole hold whole panels");
    ATTEND_DASSERT(tk <= ws_.panel_keys, "a key tile fits the packed workspace");
    const auto part = tile_.rows_seeing(kt, tk);
    if (part.r0 < part.r1) absorb_rows(kt, tk, part.cut_by_mask, part.r0, part.r1);
  }

  /// Leaves in ws.acc the normalized rows (position-major stack) and in ws.sum each row's log-sum-exp of its
  /// visible scaled scores (-inf, with a zero row, when it saw no key).
  void finish() {
    const Index rows = tile_.rows();
    auto l = ws_.sum.head(rows);
    // Normalize column by column where the product left the rows (vectorized), then transpose once.
    auto divisor = ws_.divisor.head(rows);
    for (Index r = 0; r < rows; ++r) divisor[r] = online_softmax::divisor(l[r]);
    for (Index c = 0; c < tile_.problem().dv; ++c) ws_.acc_cols.col(c).head(rows).array() /= divisor.array();
    Gemm::transpose(ws_.acc.data(), ws_.acc.outerStride(), ws_.acc_cols.data(), ws_.acc_cols.outerStride(), rows,
                    tile_.problem().dv);
    for (Index r = 0; r < rows; ++r) {
      if (l[r] == C(0)) ws_.acc.row(r).setZero();  // saw no key: zeros, as the contract says, whatever V held
      l[r] = online_softmax::log_sum_exp(ws_.max[r], l[r]);
    }
  }

 private:
  /// Rows [r0, r1) of the tile against keys [kt, kt + tk).
  void absorb_rows(Index kt, Index tk, bool cut_by_mask, Index r0, Index r1) {
    const Problem<T, S>& pb = tile_.problem();
    const Index d = pb.d, dv = pb.dv;

    // Rows that see none of the tile are left out. When they are only a prefix, the packed queries serve from
    // the panel that holds row r0 on (whole panels of mr rows come first, so rows from a multiple of mr on are
    // packed exactly as they would be alone); otherwise the rows that remain are packed afresh.
    const C* q = ws_.q_packed.data();
    if (r1 == tile_.rows()) {
      r0 = r0 / Gemm::mr * Gemm::mr;
      q += r0 * d;
    } else {
      if (ws_.q_part.size() < (r1 - r0) * d) ws_.q_part.resize(ws_.q.rows() * d);
      Gemm::pack_lhs_rows(ws_.q_part.data(), ws_.q.row(r0).data(), ws_.q.outerStride(), r1 - r0, d);
      q = ws_.q_part.data();
    }
    const Index rows = r1 - r0;
    const C *k, *v;
    Index v_stride, v_offset;
    if (packed_) {
      k = packed_->k.data() + kt * d;
      v = packed_->v.data();
      v_stride = packed_->keys;
      v_offset = kt;
    } else {
      if (ws_.k_tile.size() < tk * d) ws_.k_tile.resize(ws_.panel_keys * d);  // sized for the largest tile
      if (ws_.v_tile.size() < tk * dv) ws_.v_tile.resize(ws_.panel_keys * dv);
      pack_key_rows(ws_.k_tile.data(), ws_.v_tile.data(), kv_, kt, tk, ws_.convert);
      k = ws_.k_tile.data();
      v = ws_.v_tile.data();
      v_stride = tk;
      v_offset = 0;
    }

    // Where the mask cuts the tile, row r sees keys [lo[r], hi[r]) of it; both bounds grow with r. A panel of rows
    // then needs only the keys up to its last row's end, in whole panels of nr keys (seen[i] of them; a causal
    // diagonal tile is a triangle, so S and P V over it cost about half a full tile).
    Index* lo = nullptr;
    Index* hi = nullptr;
    if (cut_by_mask) {
      lo = ws_.visible_lo.data();
      hi = ws_.visible_hi.data();
      for (Index r = 0; r < rows; ++r) std::tie(lo[r], hi[r]) = tile_.visible(r0 + r, kt, tk, true);
    }
    const auto seen = [&](Index i, Index h) {
      if (!lo) return tk;
      Index end = 0;
      for (Index r = i; r < i + h; ++r) end = std::max(end, hi[r]);
      return std::min(tk, (end + Gemm::nr - 1) / Gemm::nr * Gemm::nr);
    };

    // S = Q K^T: panel (i, h) is the column-major h x tk block at s + i * tk, exactly where packing P would put it.
    // The product adds to what the panel holds: zeros, or the additive terms of the score transform when no softcap
    // comes before them (ScoreTransform::terms_before_product()), which then cost no pass of their own.
    C* const s = ws_.panels.data();
    const bool terms_first = transform_.terms_before_product();
    const auto positions = [&](Index row) { return [&, row](Index r) { return tile_.position(row + r); }; };
    Gemm::for_each_panel(rows, [&](Index i, Index h) {
      const Index row = r0 + i;
      if (terms_first)  // s = bias - m |i + D - j|
        transform_.template panel_start<Gemm::mr>(s + i * tk, h, kt, tk, positions(row), ws_.alibi_slope.data() + row,
                                                  ws_.alibi_diagonal.data() + row);
      else
        std::fill_n(s + i * tk, h * tk, C(0));
      Gemm::multiply_add(s + i * tk, h, q + i * d, k, h, d, seen(i, h));  // s += scale q . k
    });
    // Otherwise the score transform: softcap over the whole tile, then bias and ALiBi panel by panel, each panel's
    // terms just before its softmax step, so the step reads the panel while it is still in L1 (the whole tile of
    // scores is an L2-sized working set, and a separate pass over it for the terms is one more trip through L2).
    transform_.cap(Eigen::Map<Eigen::Array<C, Eigen::Dynamic, 1>>(s, rows * tk));
    // The terms, the mask and the online-softmax step.
    Gemm::for_each_panel(rows, [&](Index i, Index h) {
      const Index row = r0 + i;
      if (transform_.has_terms() && !terms_first)
        transform_.template panel_terms<Gemm::mr>(s + i * tk, h, kt, tk, positions(row), ws_.alibi_slope.data() + row,
                                                  ws_.alibi_diagonal.data() + row);
      online_softmax::panel_step<Gemm::mr>(s + i * tk, h, tk, ws_.max.data() + row, ws_.sum.data() + row,
                                           lo ? lo + i : nullptr, lo ? hi + i : nullptr, transform_.score_kind(),
                                           [&](const auto& alpha) {  // acc' = alpha acc
                                             for (Index c = 0; c < dv; ++c)
                                               ws_.acc_cols.col(c).segment(row, h).array() *= alpha;
                                           });
    });

    // O += P V. Zero weights times non-finite values would poison the row: see finite.hpp.
    bool skip_zero_weights = false;
    if constexpr (!is_q8<S>)  // q8 values are finite: no weight is ever skipped for them
      skip_zero_weights = (cut_by_mask || transform_.has_bias()) && !values_finite(kv_, kt, kt + tk);
    if (skip_zero_weights) {
      if constexpr (!is_q8<S>)
        Gemm::for_each_panel(rows, [&](Index i, Index h) {
          for (Index r = 0; r < h; ++r)
            for (Index j = 0; j < tk; ++j) {
              const C w = s[i * tk + j * h + r];
              if (w != C(0)) ws_.acc_cols.row(r0 + i + r) += w * kv_.values(kt + j, kt + j + 1).template cast<C>();
            }
        });
    } else if (lo) {  // each panel over the keys its rows see (the weights beyond are zeros)
      Gemm::for_each_panel(rows, [&](Index i, Index h) {
        Gemm::multiply_add(ws_.acc_cols.data() + r0 + i, ws_.acc_cols.rows(), s + i * tk, v, h, seen(i, h), dv,
                           v_stride, v_offset);
      });
    } else {
      Gemm::multiply_add(ws_.acc_cols.data() + r0, ws_.acc_cols.rows(), s, v, rows, tk, dv, v_stride, v_offset);
    }
  }

  QueryTile<T, S> tile_;
  const GroupKeys<S>& kv_;
  const PackedKeys<C>* packed_;
  PackedWorkspace<C>& ws_;
  ScoreTransform<T, S> transform_;
};

}  // namespace attend::detail
