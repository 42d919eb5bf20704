#pragma once
/// \file
/// 8-bit key storage as the kernel reads it: a view of rows in the q8 format (quantized.hpp), 32 int8 values and one
/// scale per block of 32 columns, with the scales of Scale (float in Q8Matrix, half in an 8-bit cache). The view
/// slices like the dense rows the mainloops read (middleRows, middleCols on block boundaries), and rows_of()
/// dequantizes a tile of it into the compute type, the generic path; RowProductsQ8 reads it in place.

#include <cstdint>
#include <type_traits>

#include "attend/detail/assert.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// The storage tag the kernel is instantiated with for 8-bit keys and values with scales of Scale.
template <class Scale>
struct Q8 {};

template <class S>
inline constexpr bool is_q8 = false;
template <class Scale>
inline constexpr bool is_q8<Q8<Scale>> = true;

template <class Scale>
class Q8Rows {
 public:
  static constexpr Index kBlock = 32;

  Q8Rows(const std::int8_t* q, Index q_stride, const Scale* s, Index s_stride, Index rows, Index cols)
      : q_(q), s_(s), q_stride_(q_stride), s_stride_(s_stride), rows_(rows), cols_(cols) {
    ATTEND_DASSERT(cols % kBlock == 0, "q8 rows hold whole blocks");
  }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  const std::int8_t* values(Index r) const { return q_ + r * q_stride_; }
  const Scale* scales(Index r) const { return s_ + r * s_stride_; }
  Index value_stride() const { return q_stride_; }
  Index scale_stride() const { return s_stride_; }

  Q8Rows middleRows(Index r, Index n) const {
    return rows_ == 0 ? *this : Q8Rows(values(r), q_stride_, scales(r), s_stride_, n, cols_);
  }
  /// Columns [c, c + n), both multiples of 32 (a kv head of d = 32 k columns).
  Q8Rows middleCols(Index c, Index n) const {
    ATTEND_DASSERT(c % kBlock == 0 && n % kBlock == 0, "q8 column slices fall on blocks");
    return Q8Rows(q_ + c, q_stride_, s_ + c / kBlock, s_stride_, rows_, n);
  }
  Q8Rows leftCols(Index n) const { return middleCols(0, n); }

  /// Row r dequantized into dst (cols() values).
  template <class C>
  void dequantize_row(Index r, C* dst) const {
    const std::int8_t* q = values(r);
    const Scale* s = scales(r);
    for (Index b = 0; b < cols_ / kBlock; ++b) {
      const C scale = static_cast<C>(static_cast<float>(s[b]));
      for (Index i = 0; i < kBlock; ++i) dst[b * kBlock + i] = scale * C(q[b * kBlock + i]);  // value = scale * q
    }
  }

 private:
  const std::int8_t* q_;
  const Scale* s_;
  Index q_stride_, s_stride_, rows_, cols_;
};

/// Rows [j0, j1) of q8 storage dequantized into `scratch` (rows j0.. at scratch row scratch_row..).
template <class C, class Scale>
const C* rows_of(const Q8Rows<Scale>& rows, Index j0, Index j1, Matrix<C>& scratch, Index scratch_row, Index& stride) {
  for (Index j = j0; j < j1; ++j) rows.dequantize_row(j, &scratch(scratch_row + j - j0, 0));
  stride = scratch.outerStride();
  return scratch.data() + scratch_row * scratch.outerStride();
}

/// q8 values are finite by construction (quantize_q8 refuses the others).
template <class Scale>
bool all_finite(const Q8Rows<Scale>&) {
  return true;
}

}  // namespace attend::detail
