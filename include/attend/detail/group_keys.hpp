#pragma once
/// \file
/// The key storage the mainloops read: GroupKeys<S>, one kv group's keys and values as runs of stored rows read in
/// place (contiguous matrices are one run, a paged cache one run per page), for every storage the kernel takes:
/// rows of S (float, double, bfloat16, half) and q8 rows (Q8<Scale>). rows_of() gives a run's rows in the compute
/// type, the generic path of narrow storage.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "attend/detail/assert.hpp"
#include "attend/detail/convert16.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/q8_rows.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// A block of stored rows read in place: row-major, any row stride.
template <class S>
using StoredRows = Eigen::Map<const Matrix<S>, 0, Eigen::OuterStride<>>;

/// Where one side (the keys or the values) of a kv group's rows of S lies: `cols` values a row, `stride` apart.
/// Contiguous rows start at `base`; in a paged store every page is an array of Page and a run's rows start `offset`
/// Pages into its page.
template <class S>
struct RunRows {
  using Page = S;               ///< what a page table points to
  using Block = StoredRows<S>;  ///< rows of one run, read in place
  const S* base;
  Index offset, stride, cols;

  /// n rows from row r of the run in `page` (null: the contiguous rows at base).
  Block block(const Page* page, Index r, Index n) const {
    const S* p = page ? page + offset : base;
    return Block(r == 0 ? p : p + r * stride, n, cols, Eigen::OuterStride<>(stride));  // no offset from a null base
  }
};

/// q8 rows: the 8-bit values and their scales (one per 32 columns). A page is bytes: a run's values start `offset`
/// bytes into it and its scales `scale_offset` bytes (an offset aligned for Scale).
template <class Scale>
struct RunRows<Q8<Scale>> {
  using Page = std::int8_t;
  using Block = Q8Rows<Scale>;
  const std::int8_t* base;
  const Scale* scale_base;
  Index offset, stride, scale_offset, scale_stride, cols;

  Block block(const Page* page, Index r, Index n) const {
    const std::int8_t* q = page ? page + offset : base;
    const Scale* s = page ? reinterpret_cast<const Scale*>(page + scale_offset) : scale_base;
    return Block(r == 0 ? q : q + r * stride, stride, r == 0 ? s : s + r * scale_stride, scale_stride, n, cols);
  }
};

/// The one run of a contiguous view.
template <class S>
RunRows<S> run_rows(const ConstRowsRef<S>& m) {
  return {m.data(), 0, m.outerStride(), m.cols()};
}
template <class Scale>
RunRows<Q8<Scale>> run_rows(const Q8Rows<Scale>& m) {
  return {m.values(0), m.scales(0), 0, m.value_stride(), 0, m.scale_stride(), m.cols()};
}

/// The keys [Lk, d] and values [Lk, dv] of one kv group, as stored (S): the key storage the mainloops read. Rows
/// are stored in runs read in place: contiguous matrices are one run (column slices of the problem's k and v), a
/// paged cache is one run per page (`page_rows` rows of every kv head side by side, keys and values each at a fixed
/// offset into the page). The mainloops never index rows across a run: they walk [j0, j1) with for_each_run() and
/// read each run through keys() and values() (Block: an Eigen::Map of rows of S, or Q8Rows), so any storage that can
/// say where a row lives and where its run ends plugs in here without touching a schedule.
template <class S>
class GroupKeys {
 public:
  using Rows = RunRows<S>;
  using Page = typename Rows::Page;
  using Block = typename Rows::Block;

  /// One run: the rows of the views k and v, read in place.
  GroupKeys(const storage_view<S>& k, const storage_view<S>& v)
      : GroupKeys(nullptr, std::max<Index>(1, k.rows()), k.rows(), run_rows(k), run_rows(v)) {}
  /// Runs of `page_rows` rows: rows [i * page_rows, (i + 1) * page_rows) in pages[i], keys and values where k and v
  /// say (their offsets into a page).
  GroupKeys(const Page* const* pages, Index page_rows, Index rows, const Rows& k, const Rows& v)
      : pages_(pages), rows_(rows), run_rows_(page_rows), k_(k), v_(v) {}

  /// Lk.
  Index rows() const { return rows_; }
  Index key_cols() const { return k_.cols; }
  Index value_cols() const { return v_.cols; }

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

  /// Keys [j0, j1), rows of one run, in place.
  Block keys(Index j0, Index j1) const { return block(k_, j0, j1); }
  /// Values [j0, j1), rows of one run, in place.
  Block values(Index j0, Index j1) const { return block(v_, j0, j1); }
  /// Key row j (d values of S; dense storage only).
  const S* key_row(Index j) const { return keys(j, j + 1).data(); }
  /// Value row j (dv values of S; dense storage only).
  const S* value_row(Index j) const { return values(j, j + 1).data(); }

 private:
  Block block(const Rows& side, Index j0, Index j1) const {
    ATTEND_DASSERT(j0 == j1 || j1 <= run_end(j0), "a block of stored rows lies in one run");
    if (!pages_ || j0 == j1) return side.block(nullptr, j0 == j1 ? 0 : j0, j1 - j0);
    return side.block(pages_[static_cast<std::size_t>(j0 / run_rows_)], j0 % run_rows_, j1 - j0);
  }

  const Page* const* pages_;  ///< paged: each run's page; contiguous: null (the sides' bases hold the one run)
  Index rows_, run_rows_;
  Rows k_, v_;
};

/// Every group's keys and values, column slices of the problem's k and v. Without keys nothing is read from them,
/// and a column block of an empty matrix away from its start would offset its null data pointer (undefined
/// behaviour), so then each group gets the first group's columns: no rows, the group's widths (which the
/// workspaces are sized by).
template <class T, class S>
std::vector<GroupKeys<S>> group_keys(const Problem<T, S>& pb) {
  std::vector<GroupKeys<S>> slices;
  slices.reserve(static_cast<std::size_t>(pb.groups));
  for (Index g = 0; g < pb.groups; ++g)
    if (pb.keys == 0)
      slices.emplace_back(pb.k.leftCols(pb.d), pb.v.leftCols(pb.dv));
    else
      slices.emplace_back(pb.k.middleCols(g * pb.d, pb.d), pb.v.middleCols(g * pb.dv, pb.dv));
  return slices;
}

/// Rows [j0, j1) of stored rows converted into `scratch` at row scratch_row (a copy even when they are of C).
template <class C, class Rows>
void copy_rows(const Rows& rows, Index j0, Index j1, Matrix<C>& scratch, Index scratch_row) {
  if constexpr (std::is_same_v<C, float> && is_16bit<typename Rows::Scalar>) {
    for (Index j = j0; j < j1; ++j)  // convert16.hpp: vectorized, where Eigen's cast is not
      widen(rows.data() + j * rows.outerStride(), scratch.row(scratch_row + j - j0).data(), rows.cols());
  } else {
    scratch.block(scratch_row, 0, j1 - j0, rows.cols()) = rows.middleRows(j0, j1 - j0).template cast<C>();
  }
}
template <class C, class Scale>
void copy_rows(const Q8Rows<Scale>& rows, Index j0, Index j1, Matrix<C>& scratch, Index scratch_row) {
  Index stride;
  rows_of(rows, j0, j1, scratch, scratch_row, stride);
}

/// Rows [j0, j1) of dense stored rows (a ConstRowsRef, or one run of GroupKeys) in the compute type C: a view of
/// the rows themselves when they are of C, else the rows converted into `scratch` (rows j0.. land at scratch row
/// scratch_row.., in its first columns: one scratch serves keys and values of other widths). The generic path for
/// 16-bit storage: tiles converted to float, then the float mainloops. (q8 rows: q8_rows.hpp.)
template <class C, class Rows>
const C* rows_of(const Rows& rows, Index j0, Index j1, Matrix<C>& scratch, Index scratch_row, Index& stride) {
  if constexpr (std::is_same_v<C, typename Rows::Scalar>) {
    (void)scratch, (void)scratch_row;
    stride = rows.outerStride();
    return rows.data() + j0 * rows.outerStride();
  } else {
    copy_rows(rows, j0, j1, scratch, scratch_row);
    stride = scratch.outerStride();
    return scratch.data() + scratch_row * scratch.outerStride();
  }
}

}  // namespace attend::detail
