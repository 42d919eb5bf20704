#pragma once
/// \file
/// The packing the backward's products need beyond the forward's (detail::PackedGemm, whose layouts are described
/// in packed_gemm.hpp): the transpose of a row-major matrix as a left operand (K_j^T for dQ^T += K_j^T dS^T), a
/// right operand packed a block of depth rows at a time (a task's queries and output gradients, gathered a few
/// positions at a time), a left operand turned into the right operand of the same matrix (dS^T, written by the
/// elementwise pass in the left layout, read by the dQ product in the right one), and the product with a depth
/// range of a packed left operand (the keys of a tile that a query tile sees).

#include <Eigen/Core>
#include <algorithm>
#include <utility>

#include "attend/detail/packed_gemm.hpp"
#include "attend/shapes.hpp"

// As in packed_gemm.hpp: packet types as template arguments lose their alignment attributes, harmlessly.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace attend::detail {

template <class T>
struct BackwardGemm : PackedGemm<T> {
  using Base = PackedGemm<T>;
  using Base::mr;
  using Base::nr;
  using typename Base::Packet;
  using typename Base::Result;
  template <int Order>
  using Source = typename Base::template Source<Order>;

  /// Packs the transpose of a row-major [depth, rows] matrix (row stride `stride`) as a left operand of
  /// rows x depth: keys [tk, d] become K^T, d x tk.
  static void pack_lhs_transposed(T* dst, const T* src, Index stride, Index rows, Index depth) {
    Eigen::internal::gemm_pack_lhs<T, Index, Source<Eigen::ColMajor>, mr, Base::Traits::LhsProgress, Packet,
                                   Eigen::ColMajor>
        pack;
    pack(dst, Source<Eigen::ColMajor>(src, stride), depth, rows);
  }

  /// Rows [offset, offset + depth) of a right operand of `total` depth rows and `cols` columns, from a row-major
  /// [depth, cols] block (row stride `stride`): the layout of PackedGemm::pack_rhs_rows() for the whole operand,
  /// written one block of rows at a time.
  static void pack_rhs_rows_part(T* dst, const T* src, Index stride, Index total, Index offset, Index depth,
                                 Index cols) {
    static_assert(nr == 4, "BackwardGemm::pack_rhs_rows_part writes Eigen's layout for panels of 4 columns");
    const Index panel_cols = cols / nr * nr;
    for (Index k = 0; k < depth; ++k) {
      const T* row = src + k * stride;
      for (Index j = 0; j < panel_cols; j += nr)
        for (Index c = 0; c < nr; ++c) dst[j * total + (offset + k) * nr + c] = row[j + c];
      for (Index j = panel_cols; j < cols; ++j) dst[j * total + offset + k] = row[j];
    }
  }

  /// The right operand (depth = rows of M, one column per column of M) of a matrix M packed as a left operand of
  /// `rows` x `cols` (panels of rows, see PackedGemm::for_each_panel()). In four-column panels each depth row holds
  /// four consecutive values: one 4 x 4 register transpose per four rows of a panel moves them.
  // GCC 12, inlining this into the backward mainloop, reports that an iteration near 2^62 of the remainder loop
  // over a panel's rows would overflow (-Waggressive-loop-optimizations): a panel has at most PackedGemm::mr rows,
  // so no such iteration exists; the warning is silenced for this function only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"
#endif
  static void lhs_to_rhs(T* dst, const T* lhs, Index rows, Index cols) {
    using P4 = typename Eigen::internal::find_best_packet<T, 4>::type;
    constexpr bool transposes = Eigen::internal::unpacket_traits<P4>::size == 4;
    const Index panel_cols = cols / nr * nr;
    Base::for_each_panel(rows, [&](Index i, Index h) {
      const T* panel = lhs + i * cols;  // column-major h x cols
      for (Index c = 0; c < panel_cols; c += nr) {
        T* out = dst + c * rows + i * nr;  // rows i.. of the four-column panel starting at column c
        Index r = 0;
        if constexpr (transposes) {
          static_assert(nr == 4, "one 4 x 4 transpose per four rows of a four-column panel");
          Eigen::internal::PacketBlock<P4, 4> block;
          for (; r + 4 <= h; r += 4) {
            for (int j = 0; j < 4; ++j) block.packet[j] = Eigen::internal::ploadu<P4>(panel + (c + j) * h + r);
            Eigen::internal::ptranspose(block);
            for (int j = 0; j < 4; ++j) Eigen::internal::pstoreu(out + (r + j) * nr, block.packet[j]);
          }
        }
        for (; r < h; ++r)
          for (Index j = 0; j < nr; ++j) out[r * nr + j] = panel[(c + j) * h + r];
      }
      for (Index c = panel_cols; c < cols; ++c)
        for (Index r = 0; r < h; ++r) dst[c * rows + i + r] = panel[c * h + r];
    });
  }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

  /// The height of the panel of a packed left operand of `rows` rows that starts at row `start` (a panel start).
  static Index panel_height(Index rows, Index start) {
    Index height = 0;
    Base::for_each_panel(rows, [&](Index i, Index h) {
      if (i == start) height = h;
    });
    return height;
  }

  /// The panels of a packed left operand of `rows` rows that hold some of rows [lo, hi): [first, end), the first
  /// panel's start and the last one's end. Such a run of panels is the packed operand of its rows alone (panels are
  /// largest first, each smaller height at most once after the largest), so products can take it as it is.
  static std::pair<Index, Index> panels_holding(Index rows, Index lo, Index hi) {
    Index first = rows, end = 0;
    Base::for_each_panel(rows, [&](Index i, Index h) {
      if (i < hi && i + h > lo) first = std::min(first, i), end = std::max(end, i + h);
    });
    return {first, end};
  }

  /// res += lhs * rhs as PackedGemm::multiply_add(), with rows [lhs_offset, lhs_offset + depth) of the depth of a
  /// left operand packed with `lhs_stride` depth rows (gebp_kernel's strideA and offsetA).
  static void multiply_add(T* res, Index res_stride, const T* lhs, const T* rhs, Index rows, Index depth, Index cols,
                           Index rhs_stride, Index rhs_offset, Index lhs_stride, Index lhs_offset) {
    if (rows == 0 || cols == 0 || depth == 0) return;
    Eigen::internal::gebp_kernel<T, T, Index, Result, mr, nr, false, false> gebp;
    gebp(Result(res, res_stride), lhs, rhs, rows, depth, cols, T(1), lhs_stride, rhs_stride, lhs_offset, rhs_offset);
  }
  using Base::multiply_add;
};

}  // namespace attend::detail

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
