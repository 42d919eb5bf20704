#pragma once
/// \file
/// Numerically stable softmax over rows of scores, where -infinity marks a hidden key.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "attend/detail/checks.hpp"
#include "attend/shapes.hpp"

namespace attend {
namespace detail {

/// exp(x - shift) in place on an array expression, exact down to 0. Eigen's vectorized exp is within a few ulps of
/// std::exp above log(min normal) (-87.3 in float, -708.4 in double), but below it returns values near the
/// smallest normal (up to 8e-39 in float, 6e-309 in double, for -inf too) where std::exp gives denormals or 0:
/// for a weight far below its row's maximum that is an error far beyond rounding. Those entries (hidden keys'
/// -inf among them) are exponentiated with std::exp: -inf becomes exactly 0.
template <class Array, class T>
void exp_shifted_exactly(Array&& a, T shift) {
  const T lowest_normal = std::log(std::numeric_limits<T>::min());
  a -= shift;
  if (!(a < lowest_normal).any()) {
    a = a.exp();
    return;
  }
  const Eigen::Array<T, 1, Eigen::Dynamic> shifted = a;
  a = a.exp();
  for (Index j = 0; j < shifted.size(); ++j)
    if (shifted[j] < lowest_normal) a[j] = std::exp(shifted[j]);
}

/// Softmax of one row in place. Subtracting the row maximum first keeps exp() in range for logits in the
/// thousands; a row whose entries are all -infinity (no visible key) becomes all zeros instead of 0/0. With a sink,
/// the denominator gains exp(sink): p_j = exp(s_j - M) / (sum_k exp(s_k - M) + exp(sink - M)), M the larger of the
/// row maximum and the sink, so that neither overflows. A NaN anywhere in the row makes the maximum NaN, and so the
/// whole row (also when every other entry is -infinity).
template <class RowExpr>
void softmax_row_in_place(RowExpr&& row, const typename std::decay_t<RowExpr>::Scalar* sink = nullptr) {
  using T = typename std::decay_t<RowExpr>::Scalar;
  if (row.size() == 0) return;
  const T m = row.template maxCoeff<Eigen::PropagateNaN>();
  if (m == -std::numeric_limits<T>::infinity()) {
    row.setZero();
    return;
  }
  const T shift = sink ? std::max(m, *sink) : m;  // NaN stays NaN (std::max returns its first argument)
  exp_shifted_exactly(row.array(), shift);
  if (sink)
    row /= row.sum() + std::exp(*sink - shift);
  else
    row /= row.sum();
}

}  // namespace detail

/// Row-wise softmax of a score matrix: each row becomes probabilities over its entries. Entries equal to
/// -infinity are hidden keys and get probability 0; a row whose entries are all -infinity becomes all zeros (never
/// NaN). NaN in a row makes that whole row NaN and no other; so does +infinity (inf - inf), as in the reference.
/// Weights far below the row maximum are exact to rounding down to T's denormals and 0.
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
