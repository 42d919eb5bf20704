#pragma once
/// \file
/// The backward's mainloop: one key tile [kt, kt + tk) of a kv group against the query tiles that see it
/// (FlashAttention-2's backward, Algorithm 2 of Dao 2023, with the roles of the loops as there: the key tile is the
/// outer loop, so dK_j and dV_j accumulate in the tile's own workspace and are written once).
///
/// Everything runs on the transposed scores S^T (keys x query rows), so that each result lands where the next
/// product reads it without a copy:
///
///   S^T = K_j Q~^T                     per key panel, straight into the packed left layout (as the forward's S)
///   transform, mask, P^T = exp(S^T - lse)    ScoreTransform (softcap, bias, ALiBi) as in the forward; the lse
///                                      already holds the sink, so P is the forward's probabilities as they are
///   dV_j += P^T dO                     P^T is a packed left operand already
///   dP^T = V_j dO^T                    per key panel, into the same layout as P^T
///   dS^T = P^T o (dP^T - D)            D_i = dO_i . O_i; times 1 - tanh^2(s / softcap) under a softcap
///   dK_j += dS^T Q~                    dS^T is a packed left operand already
///   dQ~^T += K_j^T dS^T                dS^T repacked once as a right operand; the result's columns are dQ rows
///
/// with Q~ = scale * q, so dK = dS^T Q~ needs no scale and dq = scale * dQ~ (applied once, by the schedule).
/// Five products per pair of tiles, as FlashAttention-2; none of them leaves the tile.
///
/// Where the mask cuts the pair, only the panels of keys that some row of the query tile sees are computed, and the
/// entries a row does not see are set to 0 after the exponential. A hidden entry is never exponentiated into the
/// result: P and dS are exactly 0 there, so a hidden key contributes nothing to any gradient. With non-finite
/// inputs (0 * inf = NaN), the three products whose zero weights could meet them run as loops that skip zero
/// weights instead (see finite.hpp).

#include <algorithm>
#include <tuple>
#include <vector>

#include "attend/detail/assert.hpp"
#include "attend/detail/backward_gemm.hpp"
#include "attend/detail/backward_problem.hpp"
#include "attend/detail/finite.hpp"
#include "attend/detail/online_softmax.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/score_transform.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Where a task's dQ~ rows go: row r of the task (its stacked rows) at base + r * stride, d values.
template <class C>
struct DqRows {
  C* base;
  Index stride;
};

/// Scratch space of the backward mainloop for key tiles of up to `keys` keys and query tiles of up to `columns`
/// stacked rows; sized once per thread, reused for every tile.
template <class C>
struct BackwardWorkspace {
  using ColMajor = Eigen::Matrix<C, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  Vector<C> k_lhs;   ///< K_j packed as a left operand, tk x d
  Vector<C> v_lhs;   ///< V_j packed as a left operand, tk x dv
  Vector<C> kt_lhs;  ///< K_j^T packed as a left operand, d x tk
  Vector<C> p;       ///< [tk x columns] S^T, then P^T, then dS^T, in the packed left layout
  Vector<C> dp;      ///< [tk x columns] dP^T in the same layout, then dS^T as a packed right operand
  Vector<C> dcap;    ///< [tk x columns] 1 - tanh^2(s / softcap), under a softcap only
  ColMajor dk, dv;   ///< [tk+, d], [tk+, dv]: the key tile's gradients, column-major as the products write them
  Matrix<C> dq;      ///< a task's dQ~ rows, when their stride in dq is not uniform (see the schedule)
  std::vector<Index> lo, hi;  ///< per column of a query tile: the tile-relative keys its row sees

  BackwardWorkspace(Index keys, Index columns, Index d, Index dv, bool softcap)
      : k_lhs(keys * d),
        v_lhs(keys * dv),
        kt_lhs(keys * d),
        p(keys * columns),
        dp(keys * columns),
        dcap(softcap ? keys * columns : 0),
        dk(padded_column(keys), d),
        dv(padded_column(keys), dv),
        lo(static_cast<std::size_t>(columns)),
        hi(static_cast<std::size_t>(columns)) {}

 private:
  /// An odd number of cache lines per column, as PackedWorkspace's accumulator: the transposing store steps
  /// through the columns, and columns of a power-of-two size would all fall into the same few L1 sets.
  static Index padded_column(Index rows) {
    constexpr Index line = 64 / sizeof(C);
    const Index lines = (rows + line - 1) / line;
    return (lines % 2 == 1 ? lines : lines + 1) * line;
  }
};

/// One key tile through the backward mainloop: the constructor (packs the tile), absorb() the query tiles that see
/// it, in increasing order, then finish() (writes dK_j and dV_j).
template <class T>
class BackwardKeyTile {
 public:
  using C = T;
  using Gemm = BackwardGemm<C>;

  BackwardKeyTile(const BackwardProblem<T>& bp, const BackwardTask& task, const BackwardRows<C>& rows,
                  BackwardWorkspace<C>& ws, DqRows<C> dq, Index kt, Index tk)
      : bp_(bp), pb_(bp.pb), task_(task), rows_(rows), ws_(ws), dq_(dq), transform_(bp.pb), kt_(kt), tk_(tk) {
    const Index d = pb_.d, dv = pb_.dv;
    ATTEND_DASSERT(tk >= 1 && tk * d <= ws.k_lhs.size() && tk * dv <= ws.v_lhs.size(), "the key tile fits");
    const auto k = pb_.k.block(kt, task.group * d, tk, d);
    const auto v = pb_.v.block(kt, task.group * dv, tk, dv);
    Gemm::pack_lhs_rows(ws.k_lhs.data(), k.data(), k.outerStride(), tk, d);
    Gemm::pack_lhs_rows(ws.v_lhs.data(), v.data(), v.outerStride(), tk, dv);
    Gemm::pack_lhs_transposed(ws.kt_lhs.data(), k.data(), k.outerStride(), d, tk);
    ws.dk.topRows(tk).setZero();
    ws.dv.topRows(tk).setZero();
    finite_ = all_finite(k) && all_finite(v);
  }

  /// Folds the query positions [p0, p1) (all of the task's heads) into dK_j and dV_j and their rows' dQ~.
  void absorb(Index p0, Index p1) {
    const Problem<T, T>& pb = pb_;
    const KeyRange first = pb.mask.keys(p0, pb.positions, pb.keys);
    const KeyRange last = pb.mask.keys(p1 - 1, pb.positions, pb.keys);
    // Keys of the tile some row sees, as whole panels of the packed key tile: [lo, hi).
    const Index seen_lo = std::max<Index>(first.begin - kt_, 0), seen_hi = std::min(last.end - kt_, tk_);
    if (seen_lo >= seen_hi) return;
    Index lo, hi;
    std::tie(lo, hi) = Gemm::panels_holding(tk_, seen_lo, seen_hi);
    const bool cut = !(last.begin <= kt_ + lo && first.end >= kt_ + hi);
    const Index c0 = p0 * task_.heads, n = (p1 - p0) * task_.heads, keys = hi - lo;
    ATTEND_DASSERT(n * tk_ <= ws_.p.size(), "the query tile fits the backward workspace");
    const Index d = pb.d, dv = pb.dv, R = rows_.rows;
    C* const p = ws_.p.data();
    C* const dp = ws_.dp.data();
    // Panel (i, h) of the keys, i in [lo, hi), is the column-major h x n block at offset (i - lo) * n.
    const auto panels = [&](auto&& f) {
      Gemm::for_each_panel(tk_, [&](Index i, Index h) {
        if (i >= lo && i < hi) f(i, h, (i - lo) * n);
      });
    };

    // S^T = K_j Q~^T.
    panels([&](Index i, Index h, Index at) {
      std::fill_n(p + at, h * n, C(0));
      Gemm::multiply_add(p + at, h, ws_.k_lhs.data() + i * d, rows_.q_cols.data() + c0 * d, h, d, n);
    });
    // The score transform, in the forward's order: softcap (keeping 1 - tanh^2 for the chain rule), bias, ALiBi.
    Eigen::Map<Eigen::Array<C, Eigen::Dynamic, 1>> s(p, keys * n);
    if (pb.softcap > 0) {
      Eigen::Map<Eigen::Array<C, Eigen::Dynamic, 1>> dcap(ws_.dcap.data(), keys * n);
      s = (s * (C(1) / pb.softcap)).tanh();  // t = tanh(s / c)
      dcap = C(1) - s.square();              // ds / ds_raw = 1 - t^2
      s *= pb.softcap;                       // s = c t
    }
    if (transform_.has_terms())
      panels([&](Index i, Index h, Index at) {
        for (Index c = 0; c < n; ++c) transform_.add_terms(p + at + c * h, position(c0 + c), head(c0 + c), kt_ + i, h);
      });
    // P^T = exp(S^T - lse): the forward's probabilities, sink included (the lse holds it).
    const Eigen::Map<const Eigen::Array<C, 1, Eigen::Dynamic>> lse(rows_.lse.data() + c0, n);
    // Column by column (one query row, the panel's keys contiguous): Eigen vectorizes an expression on one
    // column, not one broadcasting a row across columns.
    panels([&](Index, Index h, Index at) {
      for (Index c = 0; c < n; ++c) {
        Eigen::Map<Eigen::Array<C, Eigen::Dynamic, 1>> col(p + at + c * h, h);
        online_softmax::exp_shifted(col, lse[c], transform_.score_kind());  // -inf (a bias hiding keys) exactly 0
      }
    });
    if (cut) hide(lo, hi, c0, n);

    if (!finite_ || !rows_.finite) return absorb_non_finite(lo, hi, c0, n);

    // dV_j += P^T dO.
    Gemm::multiply_add(ws_.dv.data() + lo, ws_.dv.outerStride(), p, rows_.do_depth.data(), keys, n, dv, R, c0);
    // dP^T = V_j dO^T, then dS^T = P^T o (dP^T - D) (o (1 - t^2)). Hidden entries stay 0: P^T is 0 there.
    const Eigen::Map<const Eigen::Array<C, 1, Eigen::Dynamic>> delta(rows_.delta.data() + c0, n);
    panels([&](Index i, Index h, Index at) {
      std::fill_n(dp + at, h * n, C(0));
      Gemm::multiply_add(dp + at, h, ws_.v_lhs.data() + i * dv, rows_.do_cols.data() + c0 * dv, h, dv, n);
      for (Index c = 0; c < n; ++c) {
        Eigen::Map<Eigen::Array<C, Eigen::Dynamic, 1>> ds(p + at + c * h, h);
        const Eigen::Map<const Eigen::Array<C, Eigen::Dynamic, 1>> dpt(dp + at + c * h, h);
        if (pb.softcap > 0)
          ds *=
              (dpt - delta[c]) * Eigen::Map<const Eigen::Array<C, Eigen::Dynamic, 1>>(ws_.dcap.data() + at + c * h, h);
        else
          ds *= dpt - delta[c];
      }
    });
    // dK_j += dS^T Q~.
    Gemm::multiply_add(ws_.dk.data() + lo, ws_.dk.outerStride(), p, rows_.q_depth.data(), keys, n, d, R, c0);
    // dQ~^T += K_j^T dS^T: column c of the result is dQ~ row c0 + c.
    Gemm::lhs_to_rhs(dp, p, keys, n);
    Gemm::multiply_add(dq_.base + c0 * dq_.stride, dq_.stride, ws_.kt_lhs.data(), dp, d, keys, n, keys, 0, tk_, lo);
  }

  /// Writes dK_j and dV_j, rows [kt, kt + tk) of a kv group's gradients: at dk (row stride ldk) and dv (ldv).
  void finish(C* dk, Index ldk, C* dv, Index ldv) const {
    Gemm::transpose(dk, ldk, ws_.dk.data(), ws_.dk.outerStride(), tk_, pb_.d);
    Gemm::transpose(dv, ldv, ws_.dv.data(), ws_.dv.outerStride(), tk_, pb_.dv);
  }

 private:
  Index position(Index r) const { return r / task_.heads; }
  Index head(Index r) const { return task_.head0 + r % task_.heads; }

  /// Sets the entries of panels [lo, hi) that their row does not see to 0: column c (row c0 + c) sees the keys of
  /// its position's range. Rows whose range misses the tile (no key visible) become all 0.
  void hide(Index lo, Index hi, Index c0, Index n) {
    const Problem<T, T>& pb = pb_;
    for (Index c = 0; c < n; ++c) {
      const KeyRange vis = pb.mask.keys(position(c0 + c), pb.positions, pb.keys);
      const Index a = std::clamp<Index>(vis.begin - kt_, lo, hi);
      ws_.lo[c] = a;
      ws_.hi[c] = std::clamp<Index>(vis.end - kt_, a, hi);
    }
    C* const p = ws_.p.data();
    Gemm::for_each_panel(tk_, [&](Index i, Index h) {
      if (i < lo || i >= hi) return;
      C* panel = p + (i - lo) * n;
      for (Index c = 0; c < n; ++c) {
        const Index a = std::clamp<Index>(ws_.lo[c] - i, 0, h), b = std::clamp<Index>(ws_.hi[c] - i, a, h);
        std::fill(panel + c * h, panel + c * h + a, C(0));
        std::fill(panel + c * h + b, panel + (c + 1) * h, C(0));
      }
    });
  }

  /// The rest of absorb() when some input of the pair is not finite: the products that could meet a zero weight
  /// with a non-finite value (dV += P^T dO, dK += dS^T Q~, dQ~ += dS K) skip zero weights, so a key or query row
  /// hidden from another never reaches its gradients through 0 * inf. dS is 0 wherever P is.
  void absorb_non_finite(Index lo, Index hi, Index c0, Index n) {
    const Problem<T, T>& pb = pb_;
    const Index d = pb.d, dv = pb.dv, g = task_.group;
    C* const p = ws_.p.data();
    C* const dp = ws_.dp.data();
    const auto entries = [&](auto&& f) {  // f(weight, tile-relative key, task row) for every nonzero weight
      Gemm::for_each_panel(tk_, [&](Index i, Index h) {
        if (i < lo || i >= hi) return;
        const C* panel = p + (i - lo) * n;
        for (Index c = 0; c < n; ++c)
          for (Index r = 0; r < h; ++r)
            if (panel[c * h + r] != C(0)) f(panel[c * h + r], i + r, c0 + c);
      });
    };
    const auto dout_row = [&](Index r) { return bp_.dout.block(position(r), head(r) * dv, 1, dv); };
    entries([&](C w, Index j, Index r) { ws_.dv.row(j) += w * dout_row(r); });  // dV_j += P^T dO
    Gemm::for_each_panel(tk_, [&](Index i, Index h) {
      if (i < lo || i >= hi) return;
      const Index at = (i - lo) * n;
      std::fill_n(dp + at, h * n, C(0));
      Gemm::multiply_add(dp + at, h, ws_.v_lhs.data() + i * dv, rows_.do_cols.data() + c0 * dv, h, dv, n);
      for (Index c = 0; c < n; ++c)
        for (Index r = 0; r < h; ++r) {
          C& w = p[at + c * h + r];
          if (w == C(0)) continue;
          w *= dp[at + c * h + r] - rows_.delta[c0 + c];  // dS = P (dP - D)
          if (pb.softcap > 0) w *= ws_.dcap[at + c * h + r];
        }
    });
    const auto k_row = [&](Index j) { return pb.k.block(kt_ + j, g * d, 1, d); };
    entries([&](C w, Index j, Index r) {
      ws_.dk.row(j) += w * pb.q.block(position(r), head(r) * d, 1, d) * pb.scale;                     // dK_j += dS^T Q~
      Eigen::Map<Eigen::Matrix<C, 1, Eigen::Dynamic>>(dq_.base + r * dq_.stride, d) += w * k_row(j);  // dQ~ += dS K
    });
  }

  const BackwardProblem<T>& bp_;
  const Problem<T, T>& pb_;
  const BackwardTask& task_;
  const BackwardRows<C>& rows_;
  BackwardWorkspace<C>& ws_;
  DqRows<C> dq_;
  ScoreTransform<T, T> transform_;
  Index kt_, tk_;
  bool finite_ = true;
};

}  // namespace attend::detail
