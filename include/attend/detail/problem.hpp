#pragma once
/// \file
/// One grouped-query attention problem as the kernel sees it, built once from a public call's validated
/// arguments: the inputs as row views, the options resolved into the kernel's scalar type, and the sizes every
/// schedule and mainloop derives its tiles from.

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "attend/masks.hpp"
#include "attend/options.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// q [Lq, H*d], k [Lk, G*d], v [Lk, G*dv] and an optional bias [Lq, Lk] shared by all heads. q, the bias and the
/// output are of T; k and v of S: the same type, or 16-bit keys and values under float queries (a 16-bit cache).
/// Everything is computed in C = accumulator_t<T>: float for 16-bit inputs. The views are the caller's: a Problem
/// lives no longer than the call that built it. The mainloops read keys and values only through GroupKeys: k and v
/// are the contiguous storage group_keys() slices, and a problem whose keys live elsewhere (a paged cache) has empty
/// k and v of the right widths and comes with GroupKeys of its own.
template <class T, class S = T>
struct Problem {
  using Input = T;             ///< q, bias, output
  using Storage = S;           ///< k, v
  using C = accumulator_t<T>;  ///< scores, softmax statistics, accumulators
  const ConstRowsRef<T>& q;
  const ConstRowsRef<S>& k;
  const ConstRowsRef<S>& v;
  const ConstRowsRef<T>* bias;
  Mask mask;
  C scale;          ///< folded into the queries: s = (scale * q) . k, one multiply per query instead of per score
  C softcap;        ///< 0: none
  Index positions;  ///< Lq
  Index keys;       ///< Lk
  Index d, dv;
  Index groups;          ///< G, the kv heads
  Index stack;           ///< H / G, the query heads that share one kv head
  std::vector<C> sinks;  ///< empty, or one logit per query head
  std::vector<C> alibi;  ///< empty, or one slope per query head
  Index alibi_diagonal;  ///< ALiBi's distance of query i and key j is |i + alibi_diagonal - j|
};

/// The Problem of a call with validated arguments (check_multi_head() or check_attention() passed). ALiBi measures
/// distances from the mask's diagonal: Lk - Lq, or the one Mask::with_diagonal() fixed, or `alibi_diagonal` when
/// given (blocks of a longer sequence under a mask that has no diagonal, as ring attention's none()).
template <class T, class S>
Problem<T, S> make_problem(const ConstRowsRef<T>& q, const ConstRowsRef<S>& k, const ConstRowsRef<S>& v,
                           const ConstRowsRef<typename type_identity<T>::type>* bias, Heads heads,
                           const Options& options, std::optional<Index> alibi_diagonal = std::nullopt) {
  using C = accumulator_t<T>;
  const Index d = q.cols() / heads.query;
  const auto in_c = [](const std::vector<double>& x) { return std::vector<C>(x.begin(), x.end()); };
  return Problem<T, S>{q,
                       k,
                       v,
                       bias,
                       options.mask,
                       static_cast<C>(scale_for(options, d)),
                       static_cast<C>(options.softcap),
                       q.rows(),
                       k.rows(),
                       d,
                       v.cols() / heads.kv,
                       heads.kv,
                       heads.query / heads.kv,
                       in_c(options.sinks),
                       in_c(options.alibi_slopes),
                       alibi_diagonal.value_or(options.mask.diagonal().value_or(k.rows() - q.rows()))};
}

/// A block of stored rows read in place: row-major, any row stride.
template <class S>
using StoredRows = Eigen::Map<const Matrix<S>, 0, Eigen::OuterStride<>>;

/// The keys [Lk, d] and values [Lk, dv] of one kv group, as stored (S): the key storage the mainloops read. Rows
/// are stored in runs read in place, each a row-major block with a row stride: contiguous matrices are one run
/// (column slices of the problem's k and v), a paged cache is one run per page (`page_rows` rows of every kv head
/// side by side, keys and values each at a fixed offset into the page). The mainloops never index rows across a
/// run: they walk [j0, j1) with for_each_run() and read each run through keys() and values(), so any storage that
/// can say where a row lives and where its run ends plugs in here without touching a schedule.
template <class S>
class GroupKeys {
 public:
  /// One run: the rows of `k` and `v`, read in place.
  GroupKeys(const ConstRowsRef<S>& k, const ConstRowsRef<S>& v)
      : GroupKeys(k.data(), k.rows(), k.cols(), k.outerStride(), v.data(), v.cols(), v.outerStride()) {}
  /// One run of `rows` rows: keys of d values at k (row stride k_stride), values of dv at v.
  GroupKeys(const S* k, Index rows, Index d, Index k_stride, const S* v, Index dv, Index v_stride)
      : k_(k),
        v_(v),
        rows_(rows),
        run_rows_(std::max<Index>(1, rows)),
        d_(d),
        dv_(dv),
        k_stride_(k_stride),
        v_stride_(v_stride) {}

  /// Runs of `page_rows` rows: row j of the keys starts at pages[j / page_rows] + k_offset + (j % page_rows) *
  /// k_stride, row j of the values at pages[j / page_rows] + v_offset + (j % page_rows) * v_stride.
  GroupKeys(const S* const* pages, Index page_rows, Index rows, Index d, Index k_offset, Index k_stride, Index dv,
            Index v_offset, Index v_stride)
      : pages_(pages),
        rows_(rows),
        run_rows_(page_rows),
        d_(d),
        dv_(dv),
        k_stride_(k_stride),
        v_stride_(v_stride),
        k_offset_(k_offset),
        v_offset_(v_offset) {}

  /// Lk.
  Index rows() const { return rows_; }
  Index key_cols() const { return d_; }
  Index value_cols() const { return dv_; }
  Index key_stride() const { return k_stride_; }
  Index value_stride() const { return v_stride_; }

  /// The end of the run that holds row j (at most rows()).
  Index run_end(Index j) const { return std::min(rows_, (j / run_rows_ + 1) * run_rows_); }
  /// Calls f(a, b) for the runs [a, b) that cover rows [j0, j1), in order.
  template <class F>
  void for_each_run(Index j0, Index j1, F&& f) const {
    for (Index a = j0; a < j1;) {
      const Index b = std::min(j1, run_end(a));
      f(a, b);
      a = b;
    }
  }

  /// Key row j (d values).
  const S* key_row(Index j) const { return row(k_, k_offset_, k_stride_, j); }
  /// Value row j (dv values).
  const S* value_row(Index j) const { return row(v_, v_offset_, v_stride_, j); }
  /// Keys [j0, j1), rows of one run, in place.
  StoredRows<S> keys(Index j0, Index j1) const { return block(key_row(j0), j1 - j0, d_, k_stride_); }
  /// Values [j0, j1), rows of one run, in place.
  StoredRows<S> values(Index j0, Index j1) const { return block(value_row(j0), j1 - j0, dv_, v_stride_); }

 private:
  const S* row(const S* base, Index offset, Index stride, Index j) const {
    if (pages_) return pages_[j / run_rows_] + offset + (j % run_rows_) * stride;
    return j == 0 ? base : base + j * stride;  // an empty matrix's data may be null: no offset from it
  }
  static StoredRows<S> block(const S* p, Index n, Index cols, Index stride) {
    return StoredRows<S>(p, n, cols, Eigen::OuterStride<>(stride));
  }

  const S* const* pages_ = nullptr;  ///< paged: each run's first row; contiguous: null (k_, v_ hold the one run)
  const S* k_ = nullptr;
  const S* v_ = nullptr;
  Index rows_, run_rows_, d_, dv_, k_stride_, v_stride_;
  Index k_offset_ = 0, v_offset_ = 0;
};

/// Every group's keys and values, column slices of the problem's k and v. Without keys nothing is read from them,
/// and a column block of an empty matrix would offset its null data pointer (undefined behaviour), so then each
/// group gets the empty matrices' data itself, with the group's widths.
template <class T, class S>
std::vector<GroupKeys<S>> group_keys(const Problem<T, S>& pb) {
  std::vector<GroupKeys<S>> slices;
  slices.reserve(static_cast<std::size_t>(pb.groups));
  for (Index g = 0; g < pb.groups; ++g)
    if (pb.keys == 0)
      slices.emplace_back(pb.k.data(), Index(0), pb.d, pb.k.outerStride(), pb.v.data(), pb.dv, pb.v.outerStride());
    else
      slices.emplace_back(pb.k.middleCols(g * pb.d, pb.d), pb.v.middleCols(g * pb.dv, pb.dv));
  return slices;
}

/// Rows [j0, j1) of `rows` (stored rows of S: a ConstRowsRef or one run of GroupKeys) in the compute type C: a view
/// of the rows themselves when S is C, else the rows converted into `scratch` (rows j0.. land at scratch row
/// scratch_row..). The generic path for 16-bit storage: tiles converted to float, then the float mainloops.
template <class C, class Rows>
const C* rows_of(const Rows& rows, Index j0, Index j1, Matrix<C>& scratch, Index scratch_row, Index& stride) {
  if constexpr (std::is_same_v<C, typename Rows::Scalar>) {
    (void)scratch, (void)scratch_row;
    stride = rows.outerStride();
    return rows.data() + j0 * rows.outerStride();
  } else {
    // The scratch may be wider than these rows (one scratch serves keys and values of other widths).
    scratch.block(scratch_row, 0, j1 - j0, rows.cols()) = rows.middleRows(j0, j1 - j0).template cast<C>();
    stride = scratch.outerStride();
    return scratch.data() + scratch_row * scratch.outerStride();
  }
}

}  // namespace attend::detail
