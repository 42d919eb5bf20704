#pragma once
/// \file
/// The weight layers of attention, in torch.nn.Linear layout: Linear (y = x W^T + b) and RMSNorm, with the checks
/// layers use for their weights and inputs, and the matrix product every layer (and attention_weights()) uses.

#include <algorithm>
#include <cmath>

#include "attend/detail/checks.hpp"
#include "attend/detail/threads.hpp"
#include "attend/errors.hpp"
#include "attend/shapes.hpp"

namespace attend {

namespace detail {

/// Checks that `lin` maps `in` features to `out` features (bias empty or of size out).
template <class L>
void check_linear(const char* fn, const char* name, const L& lin, Index out, Index in) {
  if (lin.weight.rows() != out || lin.weight.cols() != in)
    fail(fn, name, ".weight is ", shape_of(lin.weight), ", expected ", Shape{out, in}, " [out_features, in_features]");
  if (lin.bias.size() != 0 && lin.bias.size() != out)
    fail(fn, name, ".bias has ", lin.bias.size(), " entries, expected 0 (no bias) or ", out);
}

template <class X>
void check_input(const char* fn, const char* name, const X& x, Index cols) {
  if (x.cols() != cols) fail(fn, name, " is ", shape_of(x), ", expected ", cols, " columns (d_model)");
}

/// Rows and columns of the blocks product() cuts its result into.
inline constexpr Index kProductBlock = 512;

/// dst = a * b (dst [n, m], a [n, k], b [k, m]), bit for bit the same for any number of OpenMP threads. Eigen's
/// own product starts OpenMP threads of its own outside a team, and then cuts the work by their number (the rows
/// per thread, the depth per pass), so its last bits depend on the thread count. Here dst is cut into blocks of
/// kProductBlock rows and columns, a function of the shapes alone; each block is one serial Eigen product, and the
/// blocks are spread over attend's own team (detail::keep_tile_products_serial keeps Eigen from starting another).
template <class Dst, class A, class B>
void product(Dst&& dst, const A& a, const B& b) {
  const Index rows = dst.rows(), cols = dst.cols(), depth = a.cols();
  if (depth == 0) {  // and blocks of a matrix without columns would offset its null data pointer
    dst.setZero();
    return;
  }
  const Index row_blocks = (rows + kProductBlock - 1) / kProductBlock;
  const Index col_blocks = (cols + kProductBlock - 1) / kProductBlock, tasks = row_blocks * col_blocks;
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(tasks, double(rows) * double(cols) * double(depth)))
#endif
  {
    keep_tile_products_serial();
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (Index t = 0; t < tasks; ++t) {
      const Index r0 = t / col_blocks * kProductBlock, c0 = t % col_blocks * kProductBlock;
      const Index n = std::min(kProductBlock, rows - r0), m = std::min(kProductBlock, cols - c0);
      dst.block(r0, c0, n, m).noalias() = a.middleRows(r0, n) * b.middleCols(c0, m);
    }
  }
}

template <class T, class Derived>
Matrix<T> linear(const Matrix<T>& weight, const Vector<T>& bias, const Eigen::MatrixBase<Derived>& x) {
  Matrix<T> copy;
  const ConstRowsRef<T> xe = bind_rows(x, copy);  // evaluated once: product() reads it block by block
  Matrix<T> y(xe.rows(), weight.rows());
  product(y, xe, weight.transpose());
  if (bias.size() != 0) y.rowwise() += bias.transpose();
  return y;
}

}  // namespace detail

/// A fully connected layer as torch.nn.Linear: y = x W^T + b, W is [out_features, in_features], an empty bias
/// means none.
template <class T>
struct Linear {
  Matrix<T> weight;
  Vector<T> bias;

  /// **Shapes:** (L,in) => (L,out)
  /// \throws attend::shape_error when x's columns differ from in_features or the bias size is wrong.
  template <class Derived>
  Matrix<T> operator()(const Eigen::MatrixBase<Derived>& x) const {
    detail::static_check_scalars<T, Derived>();
    if (x.cols() != weight.cols())
      detail::fail("Linear", "x is ", detail::shape_of(x), ", expected ", weight.cols(), " columns (weight is ",
                   detail::shape_of(weight), ")");
    if (bias.size() != 0 && bias.size() != weight.rows())
      detail::fail("Linear", "bias has ", bias.size(), " entries, expected 0 (no bias) or ", weight.rows());
    return detail::linear(weight, bias, x);
  }
};

/// Root-mean-square normalization: y = x / sqrt(mean(x^2) + eps) * weight, per row. An empty weight makes the
/// layer the identity (no normalization at all), which is how converted layers that had no norm say so.
template <class T>
struct RMSNorm {
  Vector<T> weight;
  double eps = 1e-6;

  /// **Shapes:** (L,n) => (L,n)
  /// An all-zero row stays zero, also with eps = 0 (where the formula would give 0/0).
  /// \throws attend::shape_error when weight is neither empty nor of size n, or when eps is negative or not
  ///         finite.
  template <class Derived>
  Matrix<T> operator()(const Eigen::MatrixBase<Derived>& x) const {
    detail::static_check_scalars<T, Derived>();
    if (weight.size() != 0 && weight.size() != x.cols())
      detail::fail("RMSNorm", "weight has ", weight.size(), " entries, expected 0 (identity) or ", x.cols(), " for x ",
                   detail::shape_of(x));
    check_eps("RMSNorm");
    Matrix<T> y = x;
    if (weight.size() == 0) return y;
    for (Index r = 0; r < y.rows(); ++r) {
      const T mean_square = y.row(r).squaredNorm() / T(y.cols()) + static_cast<T>(eps);
      if (mean_square == 0) continue;  // an all-zero row with eps 0
      const T inv_rms = T(1) / std::sqrt(mean_square);
      y.row(r) = (y.row(r).array() * inv_rms * weight.transpose().array()).matrix();
    }
    return y;
  }

  /// Throws shape_error naming `fn` (and `owner`, the norm's name in a layer) unless eps is finite and >= 0.
  void check_eps(const char* fn, const char* owner = "") const {
    if (!(std::isfinite(eps) && eps >= 0))
      detail::fail(fn, owner, *owner ? "." : "", "eps is ", eps, ", expected a finite value >= 0");
  }
};

}  // namespace attend
