#pragma once
/// \file
/// Merging attention results computed over disjoint key sets of the same queries: the split-key decode path
/// (one part per key chunk), merge_attention() and ring attention (one part per visiting key block) all combine
/// partial rows here. Each part row carries its normalized output o_c and its log-sum-exp lse_c; the union is
///
///   lse = log sum_c exp(lse_c),   o = sum_c exp(lse_c - lse) o_c,
///
/// computed with the largest lse_c as the shift so no exp overflows. The rules for rows that saw nothing are
/// written once, here: a part with lse_c = -inf weighs nothing (its row is zero and may not even be read), a row
/// whose parts are all -inf stays zero with lse -inf, and NaN in any lse_c makes the merged row NaN.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "attend/shapes.hpp"

namespace attend::detail {

/// Rows of one part: row r's dv outputs at out + r * out_stride, its log-sum-exp at lse[r * lse_stride].
template <class T>
struct PartRows {
  const T* out;
  Index out_stride;
  const T* lse;
  Index lse_stride;
};

/// Merges `count` parts row by row, calling write_row(r, merged row (dv values), merged lse) for r < rows.
/// `scratch` holds dv values; write_row may write over the rows of any part (each row is read before it is
/// written), so a destination can be one of the parts.
template <class T, class Write>
void merge_rows(const PartRows<T>* parts, std::size_t count, Index rows, Index dv, T* scratch, Write&& write_row) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>> row(scratch, dv);
  for (Index r = 0; r < rows; ++r) {
    T m = neg_inf;
    bool nan = false;
    for (std::size_t c = 0; c < count; ++c) {
      const T x = parts[c].lse[r * parts[c].lse_stride];
      nan = nan || std::isnan(x);
      m = std::max(m, x);
    }
    row.setZero();
    if (nan) {
      row.setConstant(std::numeric_limits<T>::quiet_NaN());
      write_row(r, row, std::numeric_limits<T>::quiet_NaN());
      continue;
    }
    if (m == neg_inf) {
      write_row(r, row, neg_inf);
      continue;
    }
    T total = 0;
    for (std::size_t c = 0; c < count; ++c) {
      const T x = parts[c].lse[r * parts[c].lse_stride];
      if (x == neg_inf) continue;
      const T w = std::exp(x - m);  // exp(lse_c - max): in (0, 1]
      total += w;
      row += w * Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(parts[c].out + r * parts[c].out_stride, dv);
    }
    row /= total;
    write_row(r, row, m + std::log(total));  // lse = max + log sum_c exp(lse_c - max)
  }
}

/// Merges `part` into `acc` in place: both hold rows [rows, heads * dv] of outputs with their log-sum-exp
/// [rows, heads]. `scratch` holds dv values. No allocation: ring attention merges every visiting block this way.
template <class T>
void merge_into(RowsRef<T> acc_out, RowsRef<T> acc_lse, const ConstRowsRef<T>& part_out,
                const ConstRowsRef<T>& part_lse, T* scratch) {
  const Index rows = acc_out.rows(), heads = acc_lse.cols();
  if (rows == 0 || heads == 0) return;  // offsetting an empty matrix's null data pointer is undefined behaviour
  const Index dv = acc_out.cols() / heads;
  for (Index h = 0; h < heads; ++h) {
    const PartRows<T> parts[2] = {
        {acc_out.data() + h * dv, acc_out.outerStride(), acc_lse.data() + h, acc_lse.outerStride()},
        {part_out.data() + h * dv, part_out.outerStride(), part_lse.data() + h, part_lse.outerStride()}};
    merge_rows<T>(parts, 2, rows, dv, scratch, [&](Index r, const auto& row, T lse) {
      acc_out.row(r).segment(h * dv, dv) = row;
      acc_lse(r, h) = lse;
    });
  }
}

}  // namespace attend::detail
