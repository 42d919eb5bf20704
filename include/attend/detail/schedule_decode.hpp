#pragma once
/// \file
/// The split-key (flash-decoding) schedule, for short queries over long keys: one query tile per kv group, the
/// keys cut into fixed chunks. Each chunk yields a partial output and its log-sum-exp for every group; the
/// chunks are merged exactly afterwards, in chunk order (merge.hpp), and sinks are applied to the merged rows.
///
/// A task is one chunk for every group, walking each key tile through all the groups: a group's keys are a column
/// slice of every key row (a new page per row with a few heads of a hundred features), so group-by-group passes
/// would read memory in page-strided pieces that defeat the prefetcher, while whole key rows stream.

#include <algorithm>
#include <type_traits>
#include <vector>

#include "attend/detail/merge.hpp"
#include "attend/detail/packed_mainloop.hpp"
#include "attend/detail/plan.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/query_tile.hpp"
#include "attend/detail/rows_mainloop.hpp"
#include "attend/detail/threads.hpp"
#include "attend/detail/tiles.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Key rows per step of the rows mainloop through every group: enough rows in flight to stream, few enough that
/// they stay in L1 between the score and the accumulate passes.
inline constexpr Index kDecodeStepKeys = 16;

template <class T, class S>
void decode(const Problem<T, S>& pb, const std::vector<GroupKeys<S>>& keys, const Plan& plan, const Tiles& tiles,
            RowsRef<T> out, Matrix<accumulator_t<T>>* lse) {
  using C = accumulator_t<T>;
  const Index lq = pb.positions, lk = pb.keys, groups = pb.groups, chunks = plan.chunks, rows = lq * pb.stack;
  const bool packed_products = rows > tiles.few_rows();
  std::vector<Matrix<C>> part_out(static_cast<std::size_t>(groups * chunks), Matrix<C>(rows, pb.dv));
  std::vector<Vector<C>> part_lse(static_cast<std::size_t>(groups * chunks), Vector<C>(rows));

  // One chunk through every group: the tiles of one mainloop, then their results into the chunk's parts.
  const auto run_chunk = [&](Index c, auto& ws, auto make_tile) {
    std::vector<decltype(make_tile(Index(0)))> runs;
    runs.reserve(static_cast<std::size_t>(groups));
    for (Index g = 0; g < groups; ++g) runs.push_back(make_tile(g));
    const KeyRange seen = runs[0].tile().keys();  // the same positions in every group
    const Index k_end = std::min({seen.end, lk, (c + 1) * plan.chunk_keys});
    for (Index kt = std::max(seen.begin, c * plan.chunk_keys); kt < k_end; kt += plan.key_tile) {
      const Index tk = std::min(plan.key_tile, k_end - kt);
      if constexpr (std::is_same_v<decltype(make_tile(Index(0))), RowsTile<T, S>>)
        RowsTile<T, S>::absorb_all(runs.data(), groups, kt, tk, kDecodeStepKeys);
      else
        for (auto& run : runs) run.absorb(kt, tk);
    }
    for (Index g = 0; g < groups; ++g) {
      runs[g].finish();
      part_out[g * chunks + c] = ws[g].acc.topRows(rows);
      part_lse[g * chunks + c] = ws[g].sum.head(rows);
    }
  };

#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(chunks, plan.work))
#endif
  {
    keep_tile_products_serial();
    if (packed_products) {
      std::vector<PackedWorkspace<C>> ws(groups, PackedWorkspace<C>(rows, plan.key_tile, pb.d, pb.dv));
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
      for (Index c = 0; c < chunks; ++c)
        run_chunk(c, ws, [&](Index g) { return PackedTile<T, S>(pb, keys[g], nullptr, g, 0, lq, ws[g]); });
    } else {
      std::vector<RowsWorkspace<C>> ws(groups,
                                       RowsWorkspace<C>(rows, plan.key_tile, pb.d, pb.dv, !std::is_same_v<C, S>));
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
      for (Index c = 0; c < chunks; ++c)
        run_chunk(c, ws, [&](Index g) { return RowsTile<T, S>(pb, keys[g], g, 0, lq, ws[g]); });
    }
  }

  // The chunks of each group merged in chunk order, straight into the output.
  std::vector<PartRows<C>> parts(static_cast<std::size_t>(chunks));
  Vector<C> scratch(pb.dv);
  for (Index g = 0; g < groups; ++g) {
    for (Index c = 0; c < chunks; ++c)
      parts[c] = {part_out[g * chunks + c].data(), pb.dv, part_lse[g * chunks + c].data(), 1};
    merge_rows<C>(parts.data(), parts.size(), rows, pb.dv, scratch.data(), [&](Index r, const auto& row, C row_lse) {
      store_row(pb, r / pb.stack, g * pb.stack + r % pb.stack, row, row_lse, out, lse);
    });
  }
}

}  // namespace attend::detail
