#pragma once
/// \file
/// Moving a whole sequence held by one rank into a RowLayout and back: scatter_rows(), gather_rows() and their
/// zigzag forms. Part of `<attend/mpi.hpp>`.

#include <mpi.h>

#include <limits>
#include <string>
#include <vector>

#include "attend/errors.hpp"
#include "attend/mpi/collective_checks.hpp"
#include "attend/mpi/comm.hpp"
#include "attend/mpi/row_layout.hpp"
#include "attend/shapes.hpp"

namespace attend {
namespace detail {

/// Shared by scatter_rows and gather_rows: local checks of the layout, agreed collectively.
template <class T>
std::vector<MpiSignature> agree_rows(const char* fn, MPI_Comm comm, int root, const RowLayout* layout, Index rows,
                                     Index cols, bool check_local_rows, const std::string& extra_error = {}) {
  const int size = comm_size(comm), rank = comm_rank(comm);
  MpiSignature mine;
  mine.scalar_bytes = sizeof(T);
  mine.root = root;
  mine.q_rows = rows;
  mine.q_cols = cols;
  if (layout) {
    mine.layout_fingerprint = layout->fingerprint();
    mine.layout_length = layout->length();
  }
  try {
    if (!extra_error.empty()) fail(fn, extra_error);
    if (root < 0 || root >= size) fail(fn, "root is ", root, ", expected a rank in [0, ", size, ")");
    if (layout && layout->ranks() != size) fail(fn, "layout has ", layout->ranks(), " ranks, the communicator ", size);
    if (layout && check_local_rows && layout->local_rows(rank) != rows)
      fail(fn, "layout gives rank ", rank, ' ', layout->local_rows(rank), " rows, local has ", rows, " (local ",
           Shape{rows, cols}, ")");
    if (cols > std::numeric_limits<int>::max() || rows > std::numeric_limits<int>::max())
      fail(fn, "the matrix ", Shape{rows, cols}, " is too large for MPI counts");
  } catch (const shape_error& e) {
    set_message(mine, e.what(), fn);
  }
  std::vector<MpiSignature> all = agree(fn, mine, comm);
  check_rows_signatures(fn, all);
  return all;
}

/// The root's side of MPI_Scatterv/MPI_Gatherv: the whole sequence packed in rank order (rank 0's rows in its
/// local order, then rank 1's, ...), and each rank's count and displacement of rows in it.
template <class T>
struct PackedRows {
  Matrix<T> rows;
  std::vector<int> counts, displs;
};

/// The packed layout of `layout` for `cols` columns (rows allocated, not filled).
template <class T>
PackedRows<T> packed_rows(const RowLayout& layout, Index cols) {
  PackedRows<T> packed;
  packed.rows.resize(layout.length(), cols);
  Index at = 0;
  for (int r = 0; r < layout.ranks(); ++r) {
    packed.counts.push_back(static_cast<int>(layout.local_rows(r)));
    packed.displs.push_back(static_cast<int>(at));
    at += layout.local_rows(r);
  }
  return packed;
}

/// Calls f(piece, at) for every piece of every rank, `at` being the piece's first row in the packed rows.
template <class F>
void for_each_packed_piece(const RowLayout& layout, F&& f) {
  Index at = 0;
  for (int r = 0; r < layout.ranks(); ++r)
    for (const RowRange& p : layout.pieces(r)) {
      f(p, at);
      at += p.size();
    }
}

template <class T, class Derived>
Matrix<T> scatter_impl(const char* fn, const Eigen::MatrixBase<Derived>& full, const RowLayout* given, int root,
                       MPI_Comm comm) {
  check_mpi_usable(fn, comm);
  const int size = comm_size(comm), rank = comm_rank(comm);
  std::string error;
  if (given && rank == root && full.rows() != given->length())
    error = "full has " + std::to_string(full.rows()) + " rows on the root, the layout " +
            std::to_string(given->length()) + " rows";
  const auto all = agree_rows<T>(fn, comm, root, given, full.rows(), full.cols(), false, error);
  const Index length = all[static_cast<std::size_t>(all[0].root)].q_rows,
              cols = all[static_cast<std::size_t>(all[0].root)].q_cols;
  const RowLayout layout = given ? *given : RowLayout::zigzag(length, size);
  Matrix<T> local(layout.local_rows(rank), cols);
  if (cols == 0) return local;
  PackedRows<T> packed;
  if (rank == root) {
    packed = packed_rows<T>(layout, cols);
    for_each_packed_piece(layout, [&](const RowRange& p, Index at) {
      packed.rows.middleRows(at, p.size()) = full.derived().middleRows(p.begin, p.size());
    });
  }
  const RowType row(mpi_type<T>(), cols);
  MPI_Scatterv(packed.rows.data(), packed.counts.data(), packed.displs.data(), row.get(), local.data(),
               static_cast<int>(local.rows()), row.get(), root, comm);
  return local;
}

template <class T, class Derived>
Matrix<T> gather_impl(const char* fn, const Eigen::MatrixBase<Derived>& local_rows, const RowLayout* given, int root,
                      MPI_Comm comm) {
  check_mpi_usable(fn, comm);
  const int size = comm_size(comm), rank = comm_rank(comm);
  const auto all = agree_rows<T>(fn, comm, root, given, local_rows.rows(), local_rows.cols(), given != nullptr);
  Index length = 0;
  for (int r = 0; r < size; ++r) {
    length += all[r].q_rows;
    if (all[r].q_cols != all[0].q_cols)
      fail(fn, "ranks disagree on the columns: rank 0 has ", all[0].q_cols, ", rank ", r, " has ", all[r].q_cols);
  }
  const RowLayout layout = given ? *given : RowLayout::zigzag(length, size);
  if (!given)
    for (int r = 0; r < size; ++r)
      if (layout.local_rows(r) != all[r].q_rows)
        fail(fn, "rank ", r, " has ", all[r].q_rows, " rows, the zigzag layout of ", length, " rows over ", size,
             " ranks gives it ", layout.local_rows(r));
  const Index cols = all[0].q_cols;
  const Matrix<T> mine = local_rows;
  Matrix<T> full(rank == root ? length : 0, cols);
  if (cols == 0) return full;
  PackedRows<T> packed;
  if (rank == root) packed = packed_rows<T>(layout, cols);
  const RowType row(mpi_type<T>(), cols);
  MPI_Gatherv(mine.data(), static_cast<int>(mine.rows()), row.get(), packed.rows.data(), packed.counts.data(),
              packed.displs.data(), row.get(), root, comm);
  if (rank == root)
    for_each_packed_piece(layout, [&](const RowRange& p, Index at) {
      full.middleRows(p.begin, p.size()) = packed.rows.middleRows(at, p.size());
    });
  return full;
}

}  // namespace detail

/// Sends each rank its rows of a whole sequence held by `root`: rank r receives the rows layout.pieces(r), in
/// order. `full` [L, C] is read on the root only (other ranks may pass an empty matrix of the same scalar).
/// Collective over `comm`.
///
/// **Shapes:** (L,C) on the root => (layout.local_rows(rank),C) on every rank
/// \throws attend::shape_error on every rank when the root's rows differ from layout.length(), the layout's rank
///         count from the communicator's, or ranks disagree on the layout, the root or the scalar type.
template <class Derived>
Matrix<typename Derived::Scalar> scatter_rows(const Eigen::MatrixBase<Derived>& full, const RowLayout& layout, int root,
                                              MPI_Comm comm) {
  return detail::scatter_impl<typename Derived::Scalar>("scatter_rows", full, &layout, root, comm);
}

/// The inverse of scatter_rows(): the root receives the whole sequence [L, C] in global order, the other
/// ranks an empty [0, C] matrix. Collective over `comm`.
/// \throws attend::shape_error on every rank when a rank's rows differ from layout.local_rows(rank), or ranks
///         disagree on the columns, the layout, the root or the scalar type.
template <class Derived>
Matrix<typename Derived::Scalar> gather_rows(const Eigen::MatrixBase<Derived>& local, const RowLayout& layout, int root,
                                             MPI_Comm comm) {
  return detail::gather_impl<typename Derived::Scalar>("gather_rows", local, &layout, root, comm);
}

/// scatter_rows() with RowLayout::zigzag(L, P), L being the root's rows: rank r receives chunks r and
/// 2P-1-r of 2P.
template <class Derived>
Matrix<typename Derived::Scalar> zigzag_scatter(const Eigen::MatrixBase<Derived>& full, int root, MPI_Comm comm) {
  return detail::scatter_impl<typename Derived::Scalar>("zigzag_scatter", full, nullptr, root, comm);
}

/// gather_rows() with RowLayout::zigzag(L, P), L being the sum of all ranks' rows.
template <class Derived>
Matrix<typename Derived::Scalar> zigzag_gather(const Eigen::MatrixBase<Derived>& local, int root, MPI_Comm comm) {
  return detail::gather_impl<typename Derived::Scalar>("zigzag_gather", local, nullptr, root, comm);
}

}  // namespace attend
