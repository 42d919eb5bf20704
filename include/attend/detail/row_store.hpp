#pragma once
/// \file
/// A growable store of rows, the storage behind every cache: tokens are appended over time and read in place as
/// one row-major block. Capacity doubles, so appending n tokens one at a time copies O(n) rows in total.

#include <algorithm>
#include <utility>

#include "attend/detail/assert.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

template <class T>
class RowStore {
 public:
  RowStore() = default;
  RowStore(const RowStore&) = default;
  RowStore& operator=(const RowStore&) = default;
  /// A moved-from store is empty and reusable (Eigen leaves the moved-from matrix empty; the count follows it).
  RowStore(RowStore&& other) noexcept : rows_(std::move(other.rows_)), size_(std::exchange(other.size_, 0)) {}
  RowStore& operator=(RowStore&& other) noexcept {
    rows_ = std::move(other.rows_);
    size_ = std::exchange(other.size_, 0);
    return *this;
  }

  /// Rows held.
  Index size() const { return size_; }
  /// Rows that fit before the storage grows.
  Index capacity() const { return rows_.rows(); }
  /// Values per row: that of the rows held, or of the last reserve() or append() when empty.
  Index width() const { return rows_.cols(); }
  /// Forgets every row (keeps the storage).
  void clear() { size_ = 0; }

  /// Makes room for `rows` rows of `width` values. An empty store takes any width (its storage starts anew when
  /// the width changes); a store holding rows keeps its width.
  void reserve(Index rows, Index width) {
    ATTEND_DASSERT(size_ == 0 || width == rows_.cols(), "a store holding rows keeps its width");
    if (size_ == 0 && rows_.cols() != width) rows_.resize(0, width);
    if (rows <= rows_.rows()) return;
    Matrix<T> bigger(std::max({rows, 2 * rows_.rows(), Index(16)}), rows_.cols());
    bigger.topRows(size_) = rows_.topRows(size_);
    rows_.swap(bigger);
  }

  /// Appends the rows of x (of width() values, or any width when empty).
  template <class Derived>
  void append(const Eigen::MatrixBase<Derived>& x) {
    reserve(size_ + x.rows(), x.cols());
    rows_.middleRows(size_, x.rows()) = x;
    size_ += x.rows();
  }

  /// The rows held, [size(), width()], read in place (valid until the next append or reserve).
  ConstRowsRef<T> rows() const { return ConstRowsRef<T>(rows_.topRows(size_)); }

 private:
  Matrix<T> rows_;
  Index size_ = 0;
};

}  // namespace attend::detail
