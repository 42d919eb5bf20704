#pragma once
/// \file
/// Numerically stable softmax over rows of scores, where -infinity marks a hidden key.

#include <cmath>
#include <limits>
#include <type_traits>

#include "attend/detail/checks.hpp"
#include "attend/detail/online_softmax.hpp"
#include "attend/shapes.hpp"

namespace attend {
namespace detail {

/// Softmax of one row in place. Subtracting the row maximum first keeps exp() in range for logits in the
/// thousands; a row whose entries are all -infinity (no visible key) becomes all zeros instead of 0/0. With a sink,
/// the denominator gains exp(sink): p_j = exp(s_j - m) / (sum_k exp(s_k - m) + exp(sink - m)).
template <class RowExpr>
void softmax_row_in_place(RowExpr&& row, const typename std::decay_t<RowExpr>::Scalar* sink = nullptr) {
  using T = typename std::decay_t<RowExpr>::Scalar;
  if (row.size() == 0) return;
  const T m = row.maxCoeff();
  if (m == -std::numeric_limits<T>::infinity()) {
    row.setZero();
    return;
  }
  online_softmax::exp_shifted(row.array(), m, true);  // -inf entries become exactly 0 (see online_softmax.hpp)
  if (sink)
    row /= row.sum() + std::exp(*sink - m);
  else
    row /= row.sum();
}

}  // namespace detail

/// Row-wise softmax of a score matrix: each row becomes probabilities over its entries. Entries equal to
/// -infinity are hidden keys and get probability 0; a row with no finite entry becomes all zeros (never NaN).
/// NaN in a row makes that row NaN and no other.
///
/// **Shapes:** (Lq,Lk) => (Lq,Lk)
template <class Derived>
Matrix<typename Derived::Scalar> softmax(const Eigen::MatrixBase<Derived>& scores) {
  using T = typename Derived::Scalar;
  detail::static_check_scalars<T, Derived>();
  Matrix<T> p = scores;
  for (Index i = 0; i < p.rows(); ++i) detail::softmax_row_in_place(p.row(i));
  return p;
}

}  // namespace attend
