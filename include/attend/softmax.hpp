#pragma once
/// \file
/// Numerically stable softmax over rows of scores, where -infinity marks a hidden key.

#include <cmath>
#include <limits>
#include <vector>

#include "attend/detail/blocked_attention.hpp"
#include "attend/errors.hpp"
#include "attend/shapes.hpp"

namespace attend {
namespace detail {

/// Softmax of one row in place. Subtracting the row maximum first keeps exp() in range for logits in the
/// thousands; a row whose entries are all -infinity (no visible key) becomes all zeros instead of 0/0.
template <class RowExpr>
void softmax_row_in_place(RowExpr&& row) {
  using T = typename std::decay_t<RowExpr>::Scalar;
  if (row.size() == 0) return;
  const T m = row.maxCoeff();
  if (m == -std::numeric_limits<T>::infinity()) {
    row.setZero();
    return;
  }
  // select, not exp alone: Eigen's vectorized exp clamps its argument, so exp(-inf) would be ~1e-38, not 0.
  row = (row.array() == -std::numeric_limits<T>::infinity()).select(T(0), (row.array() - m).exp()).matrix();
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
  static_assert(detail::is_supported_scalar<T>, "attend::softmax: scalar must be float or double");
  Matrix<T> p = scores;
  for (Index i = 0; i < p.rows(); ++i) detail::softmax_row_in_place(p.row(i));
  return p;
}

/// Attention output with the log-sum-exp of each row's visible scaled scores, per head: what is needed to merge
/// attention over disjoint key sets (split across threads, machines or cache segments) exactly.
/// `out` is [Lq, H*dv]; `lse` is [Lq, H], -infinity where a head's row saw no key.
template <class T>
struct AttentionResult {
  Matrix<T> out;
  Matrix<T> lse;
};

/// Merges attention results computed for the same queries over disjoint sets of keys into the result over
/// their union: per row and head, out = sum_i exp(lse_i - lse) out_i with lse = log sum_i exp(lse_i).
/// Exact up to rounding; a part with lse = -inf (no visible key) contributes nothing.
///
/// **Shapes:** n x ((Lq,H*dv), (Lq,H)) => ((Lq,H*dv), (Lq,H))
/// \pre at least one part; all parts of equal shapes; H >= 1 dividing the output columns.
/// 	hrows attend::shape_error when a precondition fails.
template <class T>
AttentionResult<T> merge_attention(const std::vector<AttentionResult<T>>& parts) {
  static_assert(detail::is_supported_scalar<T>, "attend::merge_attention: scalar must be float or double");
  constexpr const char* fn = "merge_attention";
  if (parts.empty()) detail::fail(fn, "parts is empty, expected at least one result");
  const Index rows = parts[0].out.rows(), cols = parts[0].out.cols(), heads = parts[0].lse.cols();
  if (heads < 1 || cols % heads != 0 || parts[0].lse.rows() != rows)
    detail::fail(fn, "parts[0].lse is ", detail::shape_of(parts[0].lse), ", expected [Lq, H] with H dividing out ",
                 detail::shape_of(parts[0].out));
  for (std::size_t i = 1; i < parts.size(); ++i)
    if (parts[i].out.rows() != rows || parts[i].out.cols() != cols || parts[i].lse.rows() != rows ||
        parts[i].lse.cols() != heads)
      detail::fail(fn, "parts[", i, "] has out ", detail::shape_of(parts[i].out), " and lse ",
                   detail::shape_of(parts[i].lse), ", expected ", detail::Shape{rows, cols}, " and ",
                   detail::Shape{rows, heads}, " as parts[0]");
  const Index dv = cols / heads;
  AttentionResult<T> merged{Matrix<T>(rows, cols), Matrix<T>(rows, heads)};
  if (rows == 0) return merged;  // offsetting an empty matrix's null data pointer is undefined behaviour
  for (Index h = 0; h < heads; ++h) {
    std::vector<const T*> outs, lses;
    for (const auto& p : parts) {
      outs.push_back(p.out.data() + h * dv);
      lses.push_back(p.lse.data() + h);
    }
    detail::merge_rows<T>(outs, cols, lses, heads, rows, dv, [&](Index r, const auto& row, T lse) {
      merged.out.block(r, h * dv, 1, dv) = row;
      merged.lse(r, h) = lse;
    });
  }
  return merged;
}

/// merge_attention() of two results.
template <class T>
AttentionResult<T> merge_attention(const AttentionResult<T>& a, const AttentionResult<T>& b) {
  return merge_attention(std::vector<AttentionResult<T>>{a, b});
}

}  // namespace attend
