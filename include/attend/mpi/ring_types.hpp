#pragma once
/// \file
/// What a ring_attention() call reports (RingStats), keeps between calls (RingWorkspace) and is tuned by
/// (RingTuning). MPI-free, so that a program can hold these without including <mpi.h>; part of
/// `<attend/mpi.hpp>` through mpi/ring.hpp.

#include <cstddef>
#include <vector>

#include "attend/shapes.hpp"

namespace attend {

/// What one ring_attention() call did on this rank, for profiling (pass a pointer as the `stats` argument).
struct RingStats {
  int ranks = 0;                        ///< P
  int steps = 0;                        ///< blocks sent to the next rank (P - 1, fewer for short windows)
  int blocks_computed = 0;              ///< (query piece, key piece) pairs computed
  int blocks_skipped = 0;               ///< pairs wholly hidden by the mask, not computed
  std::vector<std::size_t> bytes_sent;  ///< bytes sent at each step: rows * G * (d + dv) * sizeof(T)
  double total_seconds = 0;             ///< wall time of the call (checks and exchange included)
  double check_seconds = 0;             ///< the collective argument check (one MPI_Allgather)
  double compute_seconds = 0;           ///< kernels and merges
  double poll_seconds = 0;              ///< in MPI_Testall between kernel calls (drives the exchange forward)
  double wait_seconds = 0;              ///< blocked in MPI_Waitall for the exchange of a step to finish

  std::size_t total_bytes_sent() const {
    std::size_t n = 0;
    for (std::size_t b : bytes_sent) n += b;
    return n;
  }
};

/// The two key/value block buffers of ring_attention(), kept between calls. Without one, every call allocates
/// its buffers afresh, and the first write into fresh memory (the received block) costs a page fault per page,
/// which can take several times as long as the transfer itself; RDMA networks must also register (pin) fresh
/// memory. A layer loop should keep one workspace and pass it to every call.
/// It grows to the largest call's needs and keeps that memory until release() or destruction. Not shared
/// between concurrent calls.
class RingWorkspace {
 public:
  /// Bytes held.
  std::size_t bytes() const { return buffers_[0].size() + buffers_[1].size(); }
  /// Frees the buffers.
  void release() {
    for (auto& b : buffers_) std::vector<unsigned char>().swap(b);
  }
  /// Buffer `which` (0 or 1) of at least `size` bytes (used by ring_attention()).
  unsigned char* buffer(int which, std::size_t size) {
    auto& b = buffers_[which];
    if (b.size() < size) b.resize(size);
    return b.data();
  }

 private:
  std::vector<unsigned char> buffers_[2];
};

/// How ring_attention() cuts its queries into kernel calls while a key/value block is in flight. The ring polls
/// MPI (MPI_Testall) between calls so that the exchange progresses while it computes: most MPI transports start
/// or advance a large message only inside MPI calls. A call ("slab") is about `slab_work` multiply-adds, but
/// never fewer than `slab_min_rows` query rows, so a poll comes at least that often or after one such slab,
/// whichever is longer. The last step, with nothing in flight, computes whole pieces. The slabs depend on the
/// shapes and the tuning alone, never on the thread count, so results are bitwise identical for any number of
/// OpenMP threads per rank. The defaults suit real sizes; tests and benchmarks pass small values to cut even
/// small problems into many calls. Results depend on the tuning only in rounding (each slab is its own kernel
/// call, whose tiles and merge order follow the slab); ranks may pass different tunings.
struct RingTuning {
  /// Multiply-adds of one call: 2^26 is about a millisecond on two cores. Not positive (or NaN): as small as
  /// slab_min_rows allows.
  double slab_work = double(1 << 26);
  /// Fewest query rows (positions) of one call; 0 or less: those that fill one 256-row kernel tile,
  /// 256 / (H/G) (fewer rows slow the kernel down).
  Index slab_min_rows = 0;
};

}  // namespace attend
