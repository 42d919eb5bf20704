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

#include "attend/detail/group_keys.hpp"
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

/// Where the split-key chunks of one problem leave their partial results: for kv group g and chunk c, rows
/// r < rows (position-major stack) at out + ((g * chunks + c) * rows + r) * dv and their log-sum-exp at
/// lse[(g * chunks + c) * rows + r].
template <class C>
struct ChunkParts {
  C* out;
  C* lse;
  Index chunks, rows, dv;
  C* out_of(Index g, Index c) const { return out + (g * chunks + c) * rows * dv; }
  C* lse_of(Index g, Index c) const { return lse + (g * chunks + c) * rows; }
};

/// One thread's split-key chunks: a chunk of the keys through every kv group of a problem, its partial rows left in
/// the problem's ChunkParts. decode() and the ragged schedule (schedule_ragged.hpp) run every chunk through it, so
/// a chunk gives the same bits whichever runs it. The workspaces (one per kv group) are made when the first chunk
/// that needs them comes, for problems of up to `rows` stacked rows and key tiles of up to `keys` keys.
template <class T, class S>
class DecodeChunks {
 public:
  using C = accumulator_t<T>;

  DecodeChunks(Index rows, Index keys, Index groups, Index d, Index dv, const Tiles& tiles)
      : rows_(rows), keys_(keys), groups_(groups), d_(d), dv_(dv), tiles_(tiles) {}

  /// Chunk c of `pb` (keys `keys`, its plan()) into `parts`.
  void run(const Problem<T, S>& pb, const std::vector<GroupKeys<S>>& keys, const Plan& plan, Index c,
           const ChunkParts<C>& parts) {
    const Index rows = pb.positions * pb.stack;
    if (rows > tiles_.few_rows()) {
      if (packed_ws_.empty()) packed_ws_.assign(groups_, PackedWorkspace<C>(rows_, keys_, d_, dv_));
      chunk(pb, plan, c, parts, packed_ws_,
            [&](Index g) { return PackedTile<T, S>(pb, keys[g], nullptr, g, 0, pb.positions, packed_ws_[g]); });
    } else {
      if (rows_ws_.empty())
        rows_ws_.assign(groups_,
                        RowsWorkspace<C>(std::min(rows_, tiles_.few_rows()), keys_, d_, dv_, !std::is_same_v<C, S>));
      chunk(pb, plan, c, parts, rows_ws_,
            [&](Index g) { return RowsTile<T, S>(pb, keys[g], g, 0, pb.positions, rows_ws_[g]); });
    }
  }

 private:
  // One chunk through every group: the tiles of one mainloop, then their results into the chunk's parts.
  template <class Workspaces, class MakeTile>
  void chunk(const Problem<T, S>& pb, const Plan& plan, Index c, const ChunkParts<C>& parts, Workspaces& ws,
             MakeTile&& make_tile) {
    const Index groups = pb.groups, rows = pb.positions * pb.stack;
    using Tile = decltype(make_tile(Index(0)));
    std::vector<Tile> runs;
    runs.reserve(static_cast<std::size_t>(groups));
    for (Index g = 0; g < groups; ++g) runs.push_back(make_tile(g));
    const KeyRange seen = runs[0].tile().keys();  // the same positions in every group
    const Index k_end = std::min({seen.end, pb.keys, (c + 1) * plan.chunk_keys});
    for (Index kt = std::max(seen.begin, c * plan.chunk_keys); kt < k_end; kt += plan.key_tile) {
      const Index tk = std::min(plan.key_tile, k_end - kt);
      if constexpr (std::is_same_v<Tile, RowsTile<T, S>>)
        RowsTile<T, S>::absorb_all(runs.data(), groups, kt, tk, kDecodeStepKeys);
      else
        for (auto& run : runs) run.absorb(kt, tk);
    }
    for (Index g = 0; g < groups; ++g) {
      runs[g].finish();
      Eigen::Map<Matrix<C>>(parts.out_of(g, c), rows, pb.dv) = ws[g].acc.topRows(rows);
      Eigen::Map<Vector<C>>(parts.lse_of(g, c), rows) = ws[g].sum.head(rows);
    }
  }

  Index rows_, keys_, groups_, d_, dv_;
  const Tiles& tiles_;
  std::vector<PackedWorkspace<C>> packed_ws_;
  std::vector<RowsWorkspace<C>> rows_ws_;
};

/// Merges the chunks of every kv group of `pb` in chunk order, straight into out and lse (applying sinks).
template <class T, class S, class Lse>
void merge_chunks(const Problem<T, S>& pb, const ChunkParts<accumulator_t<T>>& parts, RowsRef<T>& out, Lse* lse) {
  using C = accumulator_t<T>;
  std::vector<PartRows<C>> rows_of(static_cast<std::size_t>(parts.chunks));
  Vector<C> scratch(pb.dv);
  for (Index g = 0; g < pb.groups; ++g) {
    for (Index c = 0; c < parts.chunks; ++c) rows_of[c] = {parts.out_of(g, c), pb.dv, parts.lse_of(g, c), 1};
    merge_rows<C>(rows_of.data(), rows_of.size(), parts.rows, pb.dv, scratch.data(),
                  [&](Index r, const auto& row, C row_lse) {
                    store_row(pb, r / pb.stack, g * pb.stack + r % pb.stack, row, row_lse, out, lse);
                  });
  }
}

template <class T, class S>
void decode(const Problem<T, S>& pb, const std::vector<GroupKeys<S>>& keys, const Plan& plan, const Tiles& tiles,
            RowsRef<T> out, Matrix<accumulator_t<T>>* lse) {
  using C = accumulator_t<T>;
  const Index chunks = plan.chunks, rows = pb.positions * pb.stack;
  Vector<C> part_out(pb.groups * chunks * rows * pb.dv), part_lse(pb.groups * chunks * rows);
  const ChunkParts<C> parts{part_out.data(), part_lse.data(), chunks, rows, pb.dv};
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(chunks, plan.work))
#endif
  {
    keep_tile_products_serial();
    DecodeChunks<T, S> run(rows, plan.key_tile, pb.groups, pb.d, pb.dv, tiles);
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (Index c = 0; c < chunks; ++c) run.run(pb, keys, plan, c, parts);
  }
  merge_chunks(pb, parts, out, lse);
}

}  // namespace attend::detail
