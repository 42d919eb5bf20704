#pragma once
/// \file
/// How the schedules use OpenMP: when a team is worth starting, the team's size, and keeping the tile products
/// serial inside it. Without OpenMP every schedule runs its tasks in order on the calling thread.

#include "attend/shapes.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attend::detail {

/// Whether the OpenMP team is worth starting: below ~4M multiply-adds (tens of microseconds on one core), waking
/// a second thread costs a noticeable share of the call, and far more when another process holds that core.
inline bool worth_threads(Index tasks, double work) { return tasks > 1 && work > double(1 << 22); }

/// Threads in the current team (1 outside a parallel region or without OpenMP).
inline Index team_size() {
#if defined(_OPENMP)
  return omp_get_num_threads();
#else
  return 1;
#endif
}

/// Called at the top of each of attend's parallel regions: the tile products must not start threads of their
/// own. Eigen parallelizes a product whenever it runs outside an active team of several threads, which includes
/// a region that runs with one thread; a nested team per tile costs more than the tile. The setting belongs to
/// this region's implicit tasks only, so the caller's thread count is untouched.
inline void keep_tile_products_serial() {
#if defined(_OPENMP)
  omp_set_num_threads(1);
#endif
}

}  // namespace attend::detail
