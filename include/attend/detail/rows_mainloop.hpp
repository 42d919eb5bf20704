#pragma once
/// \file
/// The rows mainloop: a query tile of a few rows (decoding: one or a few positions x the group's query heads)
/// against key tiles read in place. Each key serves only a handful of rows, so reading keys is the cost and packing
/// them would cost more than it saves; the products are detail::RowProducts' register-blocked dot products and
/// weighted sums straight on the key and value rows.
///
/// Per key tile [kt, kt + tk), the verbs of the algorithm:
///   S = Q K^T                 scores()      (RowProducts::scores)
///   transform and mask        softmax()     (ScoreTransform, then the visible range of each row)
///   online-softmax step       softmax()     (online_softmax::row_step, rescaling acc)
///   O += P V                  accumulate()  (RowProducts::accumulate)
/// The decode schedule runs the steps of one key tile for every kv group a few key rows at a time
/// (absorb_all()), so memory is read in whole key rows while they are hot.

#include <algorithm>
#include <limits>
#include <type_traits>

#include "attend/detail/assert.hpp"
#include "attend/detail/finite.hpp"
#include "attend/detail/group_keys.hpp"
#include "attend/detail/online_softmax.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/query_tile.hpp"
#include "attend/detail/row_products.hpp"
#include "attend/detail/row_products_narrow.hpp"
#include "attend/detail/row_products_q8.hpp"
#include "attend/detail/score_transform.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Scratch space of the rows mainloop for tiles of up to `rows` rows and key tiles of up to `keys` keys, in the
/// compute type C; sized once per thread, reused for every tile.
template <class C>
struct RowsWorkspace {
  Matrix<C> q;       ///< [rows, d]: the tile's stacked, scaled queries
  Matrix<C> scores;  ///< [rows, keys]: S, then P in place
  Matrix<C> acc;     ///< [rows, dv]: the unnormalized output rows, then the normalized ones
  Vector<C> max;     ///< running row maximum m
  Vector<C> sum;     ///< running row sum l, then the log-sum-exp
  Q8Scratch q8;      ///< q8 keys: the tile's queries in 8-bit digits and a run's widened scales

  /// `converts`: the keys and values are stored narrower than C (16 or 8 bits).
  RowsWorkspace(Index rows, Index keys, Index d, Index dv, bool converts = false)
      : q(rows, d), scores(rows, keys), acc(rows, dv), max(rows), sum(rows), converts_(converts) {}

  /// [keys, d], [keys, dv]: a key tile converted from narrow storage into C, made the first time a tile needs one
  /// (empty when the keys are of C, read in place). The narrow products read 16-bit and 8-bit rows in place and
  /// never need one, and a decode call makes its workspaces anew: made eagerly, they were fresh pages (zeroed by
  /// the kernel) on every call.
  Matrix<C>& converted_keys() { return sized(k_rows_, q.cols()); }
  Matrix<C>& converted_values() { return sized(v_rows_, acc.cols()); }

 private:
  Matrix<C>& sized(Matrix<C>& m, Index cols) {
    if (converts_ && (m.rows() != scores.cols() || m.cols() != cols)) m.resize(scores.cols(), cols);
    return m;
  }
  bool converts_;
  Matrix<C> k_rows_, v_rows_;
};

/// One query tile through the rows mainloop: the constructor, absorb() key tiles in increasing order, finish().
/// Keys and values stored in 16 bits are converted to C a few key rows at a time as they are read, or read in
/// their storage by detail::RowProductsNarrow where the CPU can (as are 8-bit ones).
template <class T, class S = T>
class RowsTile {
 public:
  using C = accumulator_t<T>;

  RowsTile(const Problem<T, S>& pb, const GroupKeys<S>& kv, Index g, Index p0, Index p1, RowsWorkspace<C>& ws)
      : tile_(pb, g, p0, p1), kv_(kv), ws_(ws), transform_(pb) {
    const Index rows = tile_.rows();
    ATTEND_DASSERT(rows <= ws.q.rows(), "the tile's rows fit the rows workspace");
    tile_.load_queries(ws.q);
    if constexpr (is_16bit<S> || is_q8<S>) narrow_ = narrow_products_available();
    if constexpr (is_q8<S> && std::is_same_v<C, float>) {
      integer_ =
          narrow_ && cpu().avx512vnni && ws.q8.queries.quantize(ws.q.data(), ws.q.outerStride(), rows, ws.q.cols());
    }
    if (splits_pairs())
      for (Index r = 0; r < rows; ++r) permute_pairs(ws.q.row(r).data(), ws.q.cols(), true);  // see detail::pairs()
    ws.max.head(rows).setConstant(-std::numeric_limits<C>::infinity());
    ws.sum.head(rows).setZero();
    ws.acc.topRows(rows).setZero();
  }

  const QueryTile<T, S>& tile() const { return tile_; }

  /// Folds keys [kt, kt + tk) (within tile().keys()) into the running softmax. A value row whose key is hidden
  /// from a query (by the mask or a -inf bias) is never multiplied into that query's output, so infinities or NaN
  /// stored there cannot leak through 0 * inf.
  void absorb(Index kt, Index tk) { absorb_all(this, 1, kt, tk, tk); }

  /// absorb(kt, tk) for `count` tiles at once, `step` key rows at a time through all of them: the scores, then
  /// each tile's softmax step, then the weighted values. With the tiles of every kv group over the same keys
  /// (decoding), memory is then read a few whole key rows at a time rather than as one page-strided column slice
  /// per group. Forced inline so that the caller's constant step reaches the loops.
  EIGEN_ALWAYS_INLINE static void absorb_all(RowsTile* tiles, Index count, Index kt, Index tk, Index step) {
    // A step also ends where a run of stored rows (a page) ends, so that each step reads one block of rows with
    // the products' full register blocks. The tiles share their runs: every kv group's rows lie in the same pages.
    const auto next = [&](Index j) { return std::min({j + step, kt + tk, tiles[0].kv_.run_end(j)}); };
    for (Index i = 0; i < count; ++i) tiles[i].begin(kt, tk);
    for (Index j = kt; j < kt + tk; j = next(j))
      for (Index i = 0; i < count; ++i) tiles[i].scores(j, next(j));
    for (Index i = 0; i < count; ++i) tiles[i].softmax();
    for (Index j = kt; j < kt + tk; j = next(j))
      for (Index i = 0; i < count; ++i) tiles[i].accumulate(j, next(j));
  }

  /// Leaves in ws.acc the normalized rows (position-major stack) and in ws.sum each row's log-sum-exp of its
  /// visible scaled scores (-inf, with a zero row, when it saw no key).
  void finish() {
    auto l = ws_.sum.head(tile_.rows());
    for (Index r = 0; r < tile_.rows(); ++r) {
      if (l[r] == C(0))
        ws_.acc.row(r).setZero();  // saw no key: zeros, as the contract says, whatever V held
      else
        ws_.acc.row(r) /= l[r];                                                         // O = acc / l
      if (splits_pairs()) permute_pairs(ws_.acc.row(r).data(), ws_.acc.cols(), false);  // back to the columns' order
      l[r] = online_softmax::log_sum_exp(ws_.max[r], l[r]);
    }
  }

 private:
  // Whether the narrow products read the key and value rows in place (else tiles are converted to C).
  bool narrow() const { return narrow_; }
  // Whether they pair-split 32-value chunks (bfloat16 storage): then the tile's queries and accumulator rows are
  // kept in the pair-split layout from the constructor to finish() (detail::pairs() in row_products_narrow.hpp).
  bool splits_pairs() const {
#if defined(ATTEND_X86_DISPATCH)
    if constexpr (std::is_same_v<S, Eigen::bfloat16>) return narrow_;
#endif
    return false;
  }
  // detail::pairs() on a float row of n values: into the pair-split layout (split) or back.
  static void permute_pairs([[maybe_unused]] C* row, [[maybe_unused]] Index n, [[maybe_unused]] bool split) {
#if defined(ATTEND_X86_DISPATCH)
    if constexpr (std::is_same_v<C, float>) detail::pairs(row, n, split);
#endif
  }

#if defined(ATTEND_X86_DISPATCH)
  // Key rows [a, b) of q8 storage with float scales, as RowProductsQ8 reads them: in place when stored so
  // (Q8Matrix), else with the run's half scales widened into the workspace (an 8-bit cache).
  auto q8_keys(Index a, Index b) {
    const auto rows = narrow_rows(kv_.keys(a, b), 0);
    if constexpr (std::is_same_v<decltype(rows), const RowsQ8<float>>) {
      return rows;
    } else {
      const Index blocks = tile_.problem().d / Q8Queries::kBlock;
      std::vector<float>& scales = ws_.q8.key_scales;
      scales.resize(std::size_t((b - a) * blocks));
      widen_scales(rows, b - a, blocks, scales.data());
      return RowsQ8<float>(rows.q, rows.ldq, scales.data(), blocks);
    }
  }
#endif

  // How many of the tile's key rows after the run [a, b) the narrow products prefetch while [a, b) is read: as
  // many, as far as they lie in the run that follows.
  Index rows_ahead(Index a, Index b) const {
    return b < kt_ + tk_ ? std::min({b - a, kt_ + tk_ - b, kv_.run_end(b) - b}) : 0;
  }

  // begin(kt, tk), scores() on consecutive key ranges covering the tile, softmax(), then accumulate() on
  // consecutive ranges covering it again.
  void begin(Index kt, Index tk) {
    ATTEND_DASSERT(tk <= ws_.scores.cols(), "a key tile fits the rows workspace");
    part_ = tile_.rows_seeing(kt, tk);
    kt_ = kt;
    tk_ = tk;
  }

  /// S = Q K^T for keys [j0, j1) of the tile begun, one run of stored rows at a time.
  void scores(Index j0, Index j1) {
    const Index r0 = part_.r0, rows = part_.r1 - part_.r0;
    if (rows == 0) return;
    const auto q = ws_.q.middleRows(r0, rows);
    kv_.for_each_run(j0, j1, [&](Index a, Index b) {
      C* s = &ws_.scores(0, a - kt_);
#if defined(ATTEND_X86_DISPATCH)
      if constexpr (is_16bit<S> || is_q8<S>)
        if (narrow()) {
          using Products = RowProductsNarrow<decltype(narrow_rows(kv_.keys(a, b), 0))>;
          const Index ahead = rows_ahead(a, b);
          if (ahead > 0) Products::prefetch(narrow_rows(kv_.keys(b, b + ahead), 0), ahead, kv_.key_cols());
          if constexpr (is_q8<S> && std::is_same_v<C, float>)
            if (integer_) {
              RowProductsQ8::scores(s, ws_.scores.outerStride(), ws_.q8.queries, r0, rows, q8_keys(a, b), b - a,
                                    tile_.problem().d);
              return;
            }
          Products::scores(s, ws_.scores.outerStride(), q.data(), q.outerStride(), rows, narrow_rows(kv_.keys(a, b), 0),
                           b - a, tile_.problem().d);
          return;
        }
#endif
      Index ldk;
      const C* k = rows_of(kv_.keys(a, b), 0, b - a, ws_.converted_keys(), a - kt_, ldk);
      RowProducts<C>::scores(s, ws_.scores.outerStride(), q.data(), q.outerStride(), rows, k, ldk, b - a,
                             tile_.problem().d);
    });
  }

  /// The score transform and the online-softmax step of the tile begun, row by row: the scores become the
  /// weights P, 0 where a key is hidden.
  void softmax() {
    const Index kt = kt_, tk = tk_, r0 = part_.r0, rows = part_.r1 - part_.r0;
    const bool cut_by_mask = part_.cut_by_mask;
    skip_zero_weights_ = false;
    if (rows == 0) return;
    auto m = ws_.max.segment(r0, rows);
    auto l = ws_.sum.segment(r0, rows);
    auto acc = ws_.acc.middleRows(r0, rows);
    auto s = ws_.scores.topLeftCorner(rows, tk);

    transform_.rows(
        s, kt, [&](Index r) { return tile_.position(r0 + r); }, [&](Index r) { return tile_.head(r0 + r); });
    for (Index r = 0; r < rows; ++r) {
      const auto [lo, hi] = tile_.visible(r0 + r, kt, tk, cut_by_mask);
      s.row(r).head(lo).setZero();  // hidden: 0, never exponentiated (see online_softmax.hpp)
      s.row(r).tail(tk - hi).setZero();
      if (lo == hi) continue;  // nothing visible here: m, l and acc stay as they are
      online_softmax::row_step(m[r], l[r], s.row(r).segment(lo, hi - lo).array(), transform_.score_kind(),
                               [&](C alpha) { acc.row(r) *= alpha; });  // acc' = alpha acc
    }
    // Zero weights times non-finite values would poison the row: see finite.hpp.
    skip_zero_weights_ = (cut_by_mask || transform_.has_bias()) && !values_finite(kv_, kt, kt + tk);
  }

  /// O += P V for keys [j0, j1) of the tile begun, after softmax(), one run of stored rows at a time.
  void accumulate(Index j0, Index j1) {
    const Index r0 = part_.r0, rows = part_.r1 - part_.r0;
    if (rows == 0) return;
    auto acc = ws_.acc.middleRows(r0, rows);
    const Index ldp = ws_.scores.outerStride(), dv = tile_.problem().dv;
    if constexpr (!is_q8<S>)  // q8 values are finite: no weight is ever skipped for them
      if (skip_zero_weights_) {
        const C* p = &ws_.scores(0, j0 - kt_);
        for (Index j = 0; j < j1 - j0; ++j) {
          const auto value = kv_.values(j0 + j, j0 + j + 1);
          const auto weigh = [&](const auto& row) {  // acc_r += p_rj v_j where p_rj != 0
            for (Index r = 0; r < rows; ++r)
              if (p[r * ldp + j] != C(0)) acc.row(r) += p[r * ldp + j] * row;
          };
          if (splits_pairs()) {  // the value row converted into the tile's scratch rows, in acc's layout
            auto row = ws_.converted_values().row(j0 + j - kt_);
            row = value.template cast<C>();
            permute_pairs(row.data(), dv, true);
            weigh(row);
          } else {
            weigh(value.template cast<C>());
          }
        }
        return;
      }
    kv_.for_each_run(j0, j1, [&](Index a, Index b) {
      const C* p = &ws_.scores(0, a - kt_);
#if defined(ATTEND_X86_DISPATCH)
      if constexpr (is_16bit<S> || is_q8<S>)
        if (narrow()) {
          using Products = RowProductsNarrow<decltype(narrow_rows(kv_.values(a, b), 0))>;
          const Index ahead = rows_ahead(a, b);
          if (ahead > 0) Products::prefetch(narrow_rows(kv_.values(b, b + ahead), 0), ahead, kv_.value_cols());
          Products::accumulate(acc.data(), acc.outerStride(), p, ldp, rows, narrow_rows(kv_.values(a, b), 0), b - a,
                               dv);
          return;
        }
#endif
      Index ldv;
      const C* v = rows_of(kv_.values(a, b), 0, b - a, ws_.converted_values(), a - kt_, ldv);
      RowProducts<C>::accumulate(acc.data(), acc.outerStride(), p, ldp, rows, v, ldv, b - a, dv);
    });
  }

  QueryTile<T, S> tile_;
  const GroupKeys<S>& kv_;
  RowsWorkspace<C>& ws_;
  ScoreTransform<T, S> transform_;
  // The key tile begun (begin()).
  typename QueryTile<T, S>::Part part_{false, 0, 0};
  Index kt_ = 0, tk_ = 0;
  bool skip_zero_weights_ = false;
  bool narrow_ = false;   // narrow_products_available(), read once per tile so its layout cannot change midway
  bool integer_ = false;  // q8 keys: the scores as integer products (row_products_q8.hpp), on CPUs with AVX512-VNNI
};

}  // namespace attend::detail
