#pragma once
/// \file
/// The rows a cache keeps, per storage type S: RowStore<S> for float, double and 16-bit storage (rows of S, read in
/// place), Q8Store for attend::q8 (blocks of 32 int8 values with a half scale, quantized as rows arrive). KVCache and
/// LatentCache are written once over CacheRows<S>; what differs per storage (the widths and values it accepts, how a
/// row of T goes in, the view the kernel reads) is here, and a new storage plugs in by adding its store and these
/// few overloads.

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "attend/detail/checks.hpp"
#include "attend/detail/q8_rows.hpp"
#include "attend/detail/row_store.hpp"
#include "attend/quantized.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Rows stored in the q8 format with half scales (34 bytes per block of 32 values, as ggml's q8_0), growing as
/// tokens arrive: the storage of the 8-bit caches. Rows are quantized as they are appended (quantize_block(): the
/// scale computed in float as quantize_q8 does, then stored as half).
class Q8Store {
 public:
  Index size() const { return values_.size(); }
  Index capacity() const { return values_.capacity(); }
  Index width() const { return values_.width(); }
  void clear() {
    values_.clear();
    scales_.clear();
  }
  void reserve(Index rows, Index width) {
    values_.reserve(rows, width);
    scales_.reserve(rows, width / Q8Matrix::kBlock);
  }
  /// Appends the rows of x (finite, a multiple of 32 columns: checked by the caller).
  template <class Derived>
  void append(const Eigen::MatrixBase<Derived>& x) {
    const Matrix<float> rows = x.template cast<float>();
    const Index blocks = rows.cols() / Q8Matrix::kBlock;
    Matrix<std::int8_t> q(rows.rows(), rows.cols());
    Matrix<Eigen::half> s(rows.rows(), blocks);
    for (Index r = 0; r < rows.rows(); ++r)
      for (Index b = 0; b < blocks; ++b)
        s(r, b) = Eigen::half(
            quantize_block(rows.row(r).data() + b * Q8Matrix::kBlock, q.row(r).data() + b * Q8Matrix::kBlock));
    values_.append(q);
    scales_.append(s);
  }
  Q8Rows<Eigen::half> rows() const {
    const ConstRowsRef<std::int8_t> q = values_.rows();
    const ConstRowsRef<Eigen::half> s = scales_.rows();
    return Q8Rows<Eigen::half>(q.data(), q.outerStride(), s.data(), s.outerStride(), q.rows(), q.cols());
  }
  std::size_t bytes() const {
    return std::size_t(size()) * (std::size_t(width()) + std::size_t(width() / Q8Matrix::kBlock) * sizeof(Eigen::half));
  }

 private:
  RowStore<std::int8_t> values_;
  RowStore<Eigen::half> scales_;
};

template <class S>
struct CacheRowsOf {
  using type = RowStore<S>;
};
template <>
struct CacheRowsOf<q8> {
  using type = Q8Store;
};
/// The store of a cache with storage S.
template <class S>
using CacheRows = typename CacheRowsOf<S>::type;

/// What the kernel reads of a cache with storage S: rows of S in place, or q8 rows with half scales.
template <class S>
using CacheView = std::conditional_t<std::is_same_v<S, q8>, Q8Rows<Eigen::half>, ConstRowsRef<S>>;

/// Bytes the rows held occupy (capacity aside), scales included.
template <class S>
std::size_t bytes_of(const RowStore<S>& rows) {
  return std::size_t(rows.size()) * std::size_t(rows.width()) * sizeof(S);
}
inline std::size_t bytes_of(const Q8Store& rows) { return rows.bytes(); }

/// Appends the rows of x (of the layer's type, or already of the storage type), rounded to the storage.
template <class S, class Derived>
void append_rows(RowStore<S>& rows, const Eigen::MatrixBase<Derived>& x) {
  rows.append(x.template cast<S>());
}
template <class Derived>
void append_rows(Q8Store& rows, const Eigen::MatrixBase<Derived>& x) {
  rows.append(x);
}

/// The rows held, converted to C (dequantized from 8 bits, widened from 16).
template <class C, class S>
Matrix<C> rows_as(const RowStore<S>& rows) {
  return rows.rows().template cast<C>();
}
template <class C>
Matrix<C> rows_as(const Q8Store& store) {
  const Q8Rows<Eigen::half> rows = store.rows();
  Matrix<float> x(rows.rows(), rows.cols());
  for (Index r = 0; r < rows.rows(); ++r) rows.dequantize_row(r, x.row(r).data());
  return x.template cast<C>();
}

/// Throws shape_error naming `fn` unless rows of `width` (argument `name`) can be stored as S: for q8 a multiple of
/// 32 (its blocks); any width otherwise.
template <class S>
void check_storable_width(const char* fn, const char* name, Index width) {
  if constexpr (std::is_same_v<S, q8>) {
    if (width % Q8Matrix::kBlock != 0)
      fail(fn, name, " is ", width, ", expected a multiple of 32 for an 8-bit cache (its q8 blocks)");
  } else {
    (void)fn, (void)name, (void)width;
  }
}

/// Throws shape_error naming `fn` unless the values of x (argument `name`) can be stored as S: for q8 finite (a
/// block's scale comes from its largest magnitude); any value otherwise (a float cache carries a NaN along).
template <class S, class Derived>
void check_storable(const char* fn, const char* name, const Eigen::MatrixBase<Derived>& x) {
  if constexpr (std::is_same_v<S, q8>)
    check_quantizable(fn, name, x);
  else
    (void)fn, (void)name, (void)x;
}

/// Whether a cache of layer type T may store its rows as S: as T; in 16 bits or 8 bits under a float layer.
template <class T, class S>
inline constexpr bool is_cache_storage = is_storage_pair<T, S> || (std::is_same_v<T, float> && std::is_same_v<S, q8>);

/// The scalar type a cache's append() takes besides T: S for dense storage (rows already rounded), T for q8.
template <class T, class S>
using appendable_t = std::conditional_t<std::is_same_v<S, q8>, T, S>;

}  // namespace attend::detail
