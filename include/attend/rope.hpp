#pragma once
/// \file
/// Rotary position embedding (RoPE): each pair of features of a d-dim slice is rotated by an angle that grows
/// with the token's position, so q . k depends on the positions only through their difference.

#include <cmath>

#include "attend/detail/checks.hpp"
#include "attend/errors.hpp"
#include "attend/shapes.hpp"

namespace attend {

/// Which features form the rotated pairs of a d-dim slice.
enum class RopeLayout {
  interleaved,  ///< pairs (2i, 2i+1): DeepSeek's reference code and its Hugging Face weights
  half_split    ///< pairs (i, i + d/2): Llama / GPT-NeoX
};

namespace detail {

template <class T>
void check_rope(const char* fn, Index cols, Index head_dim, double theta) {
  if (head_dim < 0 || head_dim % 2 != 0)
    fail(fn, "rope head dim is ", head_dim, ", expected an even number (RoPE rotates pairs of features)");
  if (head_dim > 0 && cols % head_dim != 0)
    fail(fn, "x has ", cols, " columns, expected a multiple of the rope head dim (", head_dim, ")");
  if (!(std::isfinite(theta) && theta > 0)) fail(fn, "rope theta is ", theta, ", expected a finite value > 0");
}

/// Rotates columns [offset, offset + dim) of every row of x, row r at position start + r. Angles are formed in
/// double (position * theta^(-2i/dim)) so long positions keep their precision in float. `direction` -1 rotates
/// back by the same angles (R(-angle), the transpose: RoPE's backward).
template <class T>
void rope_slice_in_place(RowsRef<T> x, Index offset, Index dim, Index start, double theta, RopeLayout layout,
                         double direction = 1.0) {
  const Index pairs = dim / 2;
  for (Index i = 0; i < pairs; ++i) {
    const double inv_freq = std::pow(theta, -2.0 * double(i) / double(dim));
    const Index a = offset + (layout == RopeLayout::interleaved ? 2 * i : i);
    const Index b = offset + (layout == RopeLayout::interleaved ? 2 * i + 1 : i + pairs);
    for (Index r = 0; r < x.rows(); ++r) {
      const double angle = double(start + r) * inv_freq;
      const T c = static_cast<T>(std::cos(angle)), s = static_cast<T>(direction * std::sin(angle));
      const T xa = x(r, a), xb = x(r, b);
      x(r, a) = xa * c - xb * s;
      x(r, b) = xa * s + xb * c;
    }
  }
}

}  // namespace detail

/// Applies RoPE to every `head_dim`-wide slice of each row; row r is the token at position `start_position + r`.
/// Pair i of a slice turns by the angle p * theta^(-2i/head_dim).
///
/// **Shapes:** (L, n*head_dim) => (L, n*head_dim)
/// \pre head_dim even (0 leaves x unchanged) and dividing x's columns; theta finite and > 0.
/// \throws attend::shape_error when a precondition fails.
template <class Derived>
Matrix<typename Derived::Scalar> apply_rope(const Eigen::MatrixBase<Derived>& x, Index head_dim,
                                            Index start_position = 0, double theta = 10000,
                                            RopeLayout layout = RopeLayout::interleaved) {
  using T = typename Derived::Scalar;
  detail::static_check_scalars<T>();
  detail::check_rope<T>("apply_rope", x.cols(), head_dim, theta);
  Matrix<T> y = x;
  if (head_dim > 0)
    for (Index h = 0; h < y.cols() / head_dim; ++h)
      detail::rope_slice_in_place<T>(y, h * head_dim, head_dim, start_position, theta, layout);
  return y;
}

}  // namespace attend
