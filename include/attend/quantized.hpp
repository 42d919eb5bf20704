#pragma once
/// \file
/// 8-bit keys and values: the q8 format (as ggml's q8_0): each row in blocks of 32 consecutive columns, each block
/// 32 signed 8-bit integers and one scale, value = scale * q. Decoding reads the whole KV cache for every token,
/// so its speed follows the bytes read: 8 bits and a scale per 32 values is 9/32 of a float cache (Q8Matrix, float
/// scales) or 17/64 (the cache, KVCache<float, attend::q8>, whose scales are half: 34 bytes per block).
///
/// The kernels take Q8Matrix keys and values under float queries and compute in float; decoding multiplies the
/// 8-bit values widened in registers, one scale per block.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attend/detail/checks.hpp"
#include "attend/errors.hpp"
#include "attend/shapes.hpp"

namespace attend {

/// The storage tag of 8-bit caches: KVCache<float, attend::q8>, LatentCache<float, attend::q8>.
struct q8 {};

/// A [rows, cols] matrix in the q8 format: cols a multiple of 32, row r's block b (columns [32 b, 32 b + 32)) is 32
/// values q(r, 32 b + i) in [-127, 127] with one float scale(r, b); the value is scale(r, b) * q(r, 32 b + i).
class Q8Matrix {
 public:
  static constexpr Index kBlock = 32;

  Q8Matrix() = default;
  /// rows x cols of zeros (all scales 0). \throws attend::shape_error for negative sizes or cols not a multiple
  /// of 32.
  Q8Matrix(Index rows, Index cols) {
    constexpr const char* fn = "Q8Matrix";
    if (rows < 0 || cols < 0) detail::fail(fn, "rows ", rows, " and cols ", cols, " must not be negative");
    if (cols % kBlock != 0) detail::fail(fn, "cols is ", cols, ", expected a multiple of 32 (the q8 block)");
    rows_ = rows;
    cols_ = cols;
    q_.assign(static_cast<std::size_t>(rows * cols), 0);
    scales_.assign(static_cast<std::size_t>(rows * (cols / kBlock)), 0.f);
  }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  /// Blocks per row (cols / 32).
  Index blocks() const { return cols_ / kBlock; }
  /// The 8-bit values, row-major [rows, cols].
  const std::int8_t* data() const { return q_.data(); }
  std::int8_t* data() { return q_.data(); }
  /// The scales, row-major [rows, cols / 32].
  const float* scales() const { return scales_.data(); }
  float* scales() { return scales_.data(); }

  std::int8_t q(Index r, Index c) const { return q_[static_cast<std::size_t>(r * cols_ + c)]; }
  float scale(Index r, Index block) const { return scales_[static_cast<std::size_t>(r * blocks() + block)]; }
  /// scale * q of one entry.
  float value(Index r, Index c) const { return scale(r, c / kBlock) * float(q(r, c)); }

 private:
  Index rows_ = 0, cols_ = 0;
  std::vector<std::int8_t> q_;
  std::vector<float> scales_;
};

namespace detail {

/// Quantizes one block of 32 values: scale = max|x| / 127 (0 for an all-zero block), q = round(x / scale), half
/// away from zero, the division in float, in [-127, 127]. Returns the scale.
template <class X>
float quantize_block(const X* x, std::int8_t* q) {
  float amax = 0;
  for (Index i = 0; i < Q8Matrix::kBlock; ++i) amax = std::max(amax, std::abs(static_cast<float>(x[i])));
  const float scale = amax / 127.f;
  for (Index i = 0; i < Q8Matrix::kBlock; ++i) {
    const float r = scale == 0.f ? 0.f : std::round(static_cast<float>(x[i]) / scale);
    q[i] = static_cast<std::int8_t>(std::clamp(r, -127.f, 127.f));
  }
  return scale;
}

/// Throws shape_error naming `fn` unless x [L, w] can be quantized: w a multiple of 32, every value finite.
template <class Derived>
void check_quantizable(const char* fn, const char* name, const Eigen::MatrixBase<Derived>& x) {
  if (x.cols() % Q8Matrix::kBlock != 0)
    fail(fn, name, " is ", shape_of(x), ", expected a multiple of 32 columns (the q8 block)");
  for (Index r = 0; r < x.rows(); ++r)
    for (Index c = 0; c < x.cols(); ++c)
      if (!std::isfinite(static_cast<double>(x(r, c))))
        fail(fn, name, "(", r, ", ", c, ") is ", static_cast<double>(x(r, c)), ": q8 stores finite values only (", name,
             " ", shape_of(x), ")");
}

}  // namespace detail

/// The q8 form of a float matrix [L, w], w a multiple of 32 (see Q8Matrix).
/// \throws attend::shape_error for w not a multiple of 32 or a non-finite value.
template <class Derived>
Q8Matrix quantize_q8(const Eigen::MatrixBase<Derived>& x) {
  static_assert(std::is_same_v<typename Derived::Scalar, float>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);
  constexpr const char* fn = "quantize_q8";
  detail::check_quantizable(fn, "x", x);
  const Matrix<float> rows = x;  // evaluated once, row-major
  Q8Matrix m(rows.rows(), rows.cols());
  for (Index r = 0; r < rows.rows(); ++r)
    for (Index b = 0; b < m.blocks(); ++b)
      m.scales()[r * m.blocks() + b] = detail::quantize_block(rows.data() + r * rows.cols() + b * Q8Matrix::kBlock,
                                                              m.data() + r * m.cols() + b * Q8Matrix::kBlock);
  return m;
}

/// scale * q for every entry: the float matrix a Q8Matrix stands for.
inline Matrix<float> dequantize(const Q8Matrix& m) {
  Matrix<float> x(m.rows(), m.cols());
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) x(r, c) = m.value(r, c);
  return x;
}

}  // namespace attend
