#pragma once
/// \file
/// Small MPI helpers of ring attention and scatter/gather: the MPI datatype of a scalar, the communicator's size
/// and this rank, and two scope guards (a committed row datatype, a private duplicate communicator). Part of
/// `<attend/mpi.hpp>`.

#include <mpi.h>

#include <type_traits>

#include "attend/detail/checks.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

template <class T>
MPI_Datatype mpi_type() {
  static_check_scalars<T>();
  if constexpr (std::is_same_v<T, float>)
    return MPI_FLOAT;
  else
    return MPI_DOUBLE;
}

inline int comm_size(MPI_Comm comm) {
  int n = 0;
  MPI_Comm_size(comm, &n);
  return n;
}
inline int comm_rank(MPI_Comm comm) {
  int r = 0;
  MPI_Comm_rank(comm, &r);
  return r;
}

/// A committed MPI datatype of `width` consecutive scalars (one matrix row), freed on scope exit.
class RowType {
 public:
  RowType(MPI_Datatype scalar, Index width) {
    MPI_Type_contiguous(static_cast<int>(width), scalar, &type_);
    MPI_Type_commit(&type_);
  }
  ~RowType() { MPI_Type_free(&type_); }
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

/// A private duplicate of the user's communicator (ring messages never match the user's), freed on scope exit.
class DupComm {
 public:
  explicit DupComm(MPI_Comm comm) { MPI_Comm_dup(comm, &comm_); }
  ~DupComm() { MPI_Comm_free(&comm_); }
  DupComm(const DupComm&) = delete;
  DupComm& operator=(const DupComm&) = delete;
  MPI_Comm get() const { return comm_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
};

}  // namespace attend::detail
