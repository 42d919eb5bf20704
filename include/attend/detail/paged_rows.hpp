#pragma once
/// \file
/// How a paged cache lays its tokens out in a page, per storage: the paged counterpart of cache_rows.hpp. A page
/// holds `page_rows` tokens as one or more *sides* one after the other (a KV cache's keys, then its values; a latent
/// cache's entries), each side [page_rows, width] row-major in the kernel's storage K:
///
///   rows of S (float, double, bfloat16, half)   Page = S; a side is page_rows * width values of S
///   q8 (Q8<Eigen::half>)                        Page = bytes; a side is its int8 values [page_rows, width], then
///                                               its half scales [page_rows, width / 32]
///
/// PageLayout<K> says how big a side is, where columns of it lie (RunRows, what GroupKeys reads in place) and how a
/// row of the layer's type goes in (rounded to 16 bits, or quantized as Q8Store quantizes: quantize_block()).

#include <cstdint>
#include <type_traits>

#include "attend/detail/group_keys.hpp"
#include "attend/detail/q8_rows.hpp"
#include "attend/quantized.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// The storage the kernel reads of a cache that stores S: S, or q8 rows with half scales for attend::q8.
template <class S>
using kernel_storage_t = std::conditional_t<std::is_same_v<S, q8>, Q8<Eigen::half>, S>;

/// Rows of S.
template <class K>
struct PageLayout {
  using Page = K;
  /// Pages (values of Page) of a side of `rows` rows of `width`.
  static Index side_size(Index rows, Index width) { return rows * width; }
  /// Columns [c, c + n) of the side at `offset` (rows of `width`) of every page.
  static RunRows<K> columns(Index offset, Index rows, Index width, Index c, Index n) {
    (void)rows;
    return {nullptr, offset + c, width, n};
  }
  /// Stores x (one row of `width` values) as row r of the side at `offset` of `page`.
  template <class Row>
  static void store(Page* page, Index offset, Index rows, Index width, Index r, const Row& x) {
    (void)rows;
    Eigen::Map<Matrix<K>>(page + offset + r * width, 1, width) = x.template cast<K>();
  }
};

/// q8 rows: values then scales.
template <class Scale>
struct PageLayout<Q8<Scale>> {
  using Page = std::int8_t;
  static constexpr Index kBlock = Q8Rows<Scale>::kBlock;
  static Index side_size(Index rows, Index width) {
    return rows * width + rows * (width / kBlock) * Index(sizeof(Scale));
  }
  static RunRows<Q8<Scale>> columns(Index offset, Index rows, Index width, Index c, Index n) {
    const Index scales = offset + rows * width;  // an even offset: widths are whole blocks
    return {nullptr, nullptr, offset + c, width, scales + c / kBlock * Index(sizeof(Scale)), width / kBlock, n};
  }
  template <class Row>
  static void store(Page* page, Index offset, Index rows, Index width, Index r, const Row& x) {
    const Matrix<float> row = x.template cast<float>();
    std::int8_t* q = page + offset + r * width;
    Scale* s = reinterpret_cast<Scale*>(page + offset + rows * width) + r * (width / kBlock);
    for (Index b = 0; b < width / kBlock; ++b) s[b] = Scale(quantize_block(row.data() + b * kBlock, q + b * kBlock));
  }
};

}  // namespace attend::detail
