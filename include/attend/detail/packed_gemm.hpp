#pragma once
/// \file
/// Matrix products on operands packed once and reused, through Eigen 3.4's GEMM building blocks
/// (Eigen::internal::gemm_pack_lhs, gemm_pack_rhs and gebp_kernel, the pieces Eigen's own products are made of).
///
/// Why not `c.noalias() += a * b`: each such product packs both operands into Eigen's blocked layout before it
/// multiplies. The attention kernel multiplies the same query tile with every key tile and the same key and value
/// tiles with every query tile, so packing per product repeats work (docs/kernel-notes.md has its cost). Here
/// keys and values are packed once per kv group, queries once per query tile, and the scores are written straight
/// into the packed layout that the second product reads, so they are never packed at all.
///
/// The packed layouts, as this version of Eigen defines them (tests/packed_gemm_test.cpp checks them against
/// Eigen's packing routines):
/// - left operand (rows x depth): horizontal panels of `height` rows (Eigen's register block, then smaller ones
///   for the remainder; see for_each_panel()); each panel stores its columns one after the other, `height`
///   values each, and panels follow each other. A panel is thus a column-major height x depth matrix.
/// - right operand (depth x cols): vertical panels of nr columns, each storing its depth rows one after the other
///   (nr values each); remaining columns one by one. Panel j starts at j * nr * depth, so the columns [c, c + n)
///   with c a multiple of nr are the packed operand of those columns alone when n is a multiple of nr or ends the
///   matrix; and rows [k, k + n) of every panel are a packed operand of depth n given `stride` = depth and
///   `offset` = k (gebp_kernel's strideB and offsetB).

#include <Eigen/Core>
#include <algorithm>

#include "attend/shapes.hpp"

// Packet types are vector types with alignment attributes, which GCC drops (and warns about) when they are
// template arguments, as Eigen's own GEMM passes them; Eigen silences the warning inside its headers only.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace attend::detail {

/// Packing and multiply-add on packed operands for scalar type T.
template <class T>
struct PackedGemm {
  using Traits = Eigen::internal::gebp_traits<T, T>;
  template <int PacketSize>
  using SizedTraits = Eigen::internal::gebp_traits<T, T, false, false, Eigen::Architecture::Target, PacketSize>;
  using Packet = typename Traits::LhsPacket4Packing;
  static constexpr Index mr = Traits::mr;             ///< rows of the largest left panel (Eigen's register block)
  static constexpr Index nr = Traits::nr;             ///< columns of a right panel
  static constexpr Index full = Traits::LhsProgress;  ///< rows of one packet
  static constexpr Index half = SizedTraits<Eigen::internal::GEBPPacketHalf>::LhsProgress;
  static constexpr Index quarter = SizedTraits<Eigen::internal::GEBPPacketQuarter>::LhsProgress;

  template <int Order>
  using Source = Eigen::internal::const_blas_data_mapper<T, Index, Order>;
  using Result = Eigen::internal::blas_data_mapper<T, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;

  /// Calls f(first_row, height) for each panel of a packed left operand of `rows` rows, in storage order. Mirrors
  /// gemm_pack_lhs (column-major, real scalars): as many panels of 3, then 2, then 1 packet as fit (the largest
  /// that the register block mr allows first), then a half and a quarter packet where the architecture has them,
  /// then single rows.
  template <class F>
  static void for_each_panel(Index rows, F&& f) {
    Index i = 0;
    const auto panels = [&](Index height, bool enabled) {
      if (!enabled) return;
      for (; rows - i >= height; i += height) f(i, height);
    };
    panels(3 * full, mr >= 3 * full);
    panels(2 * full, mr >= 2 * full);
    panels(full, mr >= full);
    panels(half, half < full && mr >= half);
    panels(quarter, quarter < half && mr >= quarter);
    panels(1, true);
  }

  /// Packs a row-major [rows, depth] matrix (row stride `stride`) as a left operand of rows x depth.
  static void pack_lhs_rows(T* dst, const T* src, Index stride, Index rows, Index depth) {
    Eigen::internal::gemm_pack_lhs<T, Index, Source<Eigen::RowMajor>, mr, Traits::LhsProgress, Packet, Eigen::RowMajor>
        pack;
    pack(dst, Source<Eigen::RowMajor>(src, stride), depth, rows);
  }

  /// Packs the transpose of a row-major [cols, depth] matrix (e.g. keys) as a right operand of depth x cols.
  static void pack_rhs_transposed(T* dst, const T* src, Index stride, Index cols, Index depth) {
    Eigen::internal::gemm_pack_rhs<T, Index, Source<Eigen::ColMajor>, nr, Eigen::ColMajor> pack;
    pack(dst, Source<Eigen::ColMajor>(src, stride), depth, cols);
  }

  /// Packs a row-major [depth, cols] matrix (e.g. values) as a right operand of depth x cols: the layout of
  /// Eigen's gemm_pack_rhs, filled a few rows at a time. Eigen's routine walks all rows once per panel, which
  /// for values that are a column slice of wider rows (one page per row) misses L1 on every read; a few rows at
  /// a time stay in L1.
  static void pack_rhs_rows(T* dst, const T* src, Index stride, Index depth, Index cols) {
    pack_rhs_rows(dst, depth, 0, src, stride, depth, cols);
  }

  /// Rows [row0, row0 + rows) of a right operand of `depth` x cols packed as pack_rhs_rows() packs it whole, from a
  /// row-major [rows, cols] matrix: an operand whose rows are stored in several runs (pages) is packed run by run
  /// into the same layout.
  static void pack_rhs_rows(T* dst, Index depth, Index row0, const T* src, Index stride, Index rows, Index cols) {
    static_assert(nr == 4, "PackedGemm::pack_rhs_rows writes Eigen's layout for panels of 4 columns");
    constexpr Index kRows = 8;  // rows read per pass: they stay in L1 even when they alias (4 KiB apart)
    const Index panel_cols = cols / nr * nr;
    for (Index k0 = 0; k0 < rows; k0 += kRows) {
      const Index k1 = std::min(rows, k0 + kRows);
      for (Index j = 0; j < panel_cols; j += nr)
        for (Index k = k0; k < k1; ++k)
          for (Index c = 0; c < nr; ++c) dst[j * depth + (row0 + k) * nr + c] = src[k * stride + j + c];
      for (Index j = panel_cols; j < cols; ++j)
        for (Index k = k0; k < k1; ++k) dst[j * depth + row0 + k] = src[k * stride + j];
    }
  }

  /// dst = src for a column-major `src` (rows x cols, column stride src_stride) and a row-major `dst` (row
  /// stride dst_stride), one packet-sized square at a time transposed in registers: an element-by-element copy
  /// runs at one strided load per value.
  static void transpose(T* dst, Index dst_stride, const T* src, Index src_stride, Index rows, Index cols) {
    using P = typename Eigen::internal::packet_traits<T>::type;
    constexpr int n = Eigen::internal::unpacket_traits<P>::size;
    Index row_blocks = 0, col_blocks = 0;
    if constexpr (n > 1) {
      row_blocks = rows / n * n;
      col_blocks = cols / n * n;
      Eigen::internal::PacketBlock<P, n> block;
      for (Index r = 0; r < row_blocks; r += n)
        for (Index c = 0; c < col_blocks; c += n) {
          for (int i = 0; i < n; ++i) block.packet[i] = Eigen::internal::ploadu<P>(src + (c + i) * src_stride + r);
          Eigen::internal::ptranspose(block);
          for (int i = 0; i < n; ++i) Eigen::internal::pstoreu(dst + (r + i) * dst_stride + c, block.packet[i]);
        }
    }
    for (Index r = 0; r < rows; ++r)
      for (Index c = r < row_blocks ? col_blocks : 0; c < cols; ++c) dst[r * dst_stride + c] = src[c * src_stride + r];
  }

  /// res += lhs * rhs with res column-major (column stride `res_stride`), lhs packed rows x depth, rhs packed
  /// with `rhs_stride` rows per panel of which rows [rhs_offset, rhs_offset + depth) are used (-1 and 0: exactly
  /// depth rows). `lhs` must be aligned as Eigen's packets are (it loads whole packets from it).
  static void multiply_add(T* res, Index res_stride, const T* lhs, const T* rhs, Index rows, Index depth, Index cols,
                           Index rhs_stride = -1, Index rhs_offset = 0) {
    if (rows == 0 || cols == 0 || depth == 0) return;
    Eigen::internal::gebp_kernel<T, T, Index, Result, mr, nr, false, false> gebp;
    gebp(Result(res, res_stride), lhs, rhs, rows, depth, cols, T(1), -1, rhs_stride, 0, rhs_offset);
  }
};

}  // namespace attend::detail

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
