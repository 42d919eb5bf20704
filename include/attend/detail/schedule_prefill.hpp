#pragma once
/// \file
/// The prefill schedule: tasks are (kv group, query tile), each task one query tile through its mainloop over all
/// the keys its rows may see, written straight into its own rows of the output.
///
/// Order: group by group, and within a group the heaviest tile first: under a causal mask later tiles see more
/// keys, so starting them first keeps every thread busy to the end (dynamic scheduling takes the rest).
///
/// Each thread packs the kv group it works on once (Tiles::pack_groups()), just before its tiles run, while the
/// group is in cache; packing also copies the keys out of rows shared with the other kv heads, which pays once k
/// and v outgrow the cache. With at least 4 groups per thread a task is a whole group, so no two threads pack the
/// same group; with fewer the tasks are single tiles, which keeps the threads balanced, and the group-major order
/// makes the packing about once per group and thread.

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "attend/detail/cpu.hpp"
#include "attend/detail/key_tiles.hpp"
#include "attend/detail/packed_mainloop.hpp"
#include "attend/detail/plan.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/query_tile.hpp"
#include "attend/detail/rows_mainloop.hpp"
#include "attend/detail/threads.hpp"
#include "attend/detail/tile16_mainloop.hpp"
#include "attend/detail/tiles.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

template <class T, class S>
void prefill(const Problem<T, S>& pb, const std::vector<GroupKeys<S>>& keys, const Plan& plan, const Tiles& tiles,
             RowsRef<T> out, Matrix<accumulator_t<T>>* lse) {
  using C = accumulator_t<T>;
  const Index lq = pb.positions, stack = pb.stack, groups = pb.groups;
  const Index n_tiles = (lq + plan.tile_positions - 1) / plan.tile_positions, tasks = n_tiles * groups;
  const bool later_is_heavier = pb.mask.hides_future();
  const Index ws_rows = std::min(plan.tile_positions * stack, lq * stack);
  // The 16-bit tile products need 16-bit queries, keys and values alike (mixed storage keeps float queries, which
  // they would round) and a CPU path beyond the generic one.
  const Bf16Path path16 = is_16bit<T> && std::is_same_v<T, S> ? bf16_path_now() : Bf16Path::generic;
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(tasks, plan.work))
#endif
  {
    keep_tile_products_serial();
    // Each mainloop's workspace, made when the first tile that needs it comes.
    std::optional<PackedWorkspace<C>> packed_ws;
    std::optional<RowsWorkspace<C>> rows_ws;
    PackedKeys<C> packed;
#if defined(ATTEND_X86_DISPATCH)
    std::optional<Tile16Workspace> tile16_ws;
    VnniKeys vnni;
#endif
    const Index unit = groups >= 4 * team_size() ? n_tiles : 1;  // tasks scheduled together: a group, or a tile
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (Index u = 0; u < tasks / unit; ++u)
      for (Index t = u * unit; t < (u + 1) * unit; ++t) {
        const Index g = t / n_tiles, tile = later_is_heavier ? n_tiles - 1 - t % n_tiles : t % n_tiles;
        const Index p0 = tile * plan.tile_positions, p1 = std::min(lq, p0 + plan.tile_positions);
        if ((p1 - p0) * stack > tiles.few_rows() && path16 != Bf16Path::generic) {
#if defined(ATTEND_X86_DISPATCH)
          if constexpr (is_16bit<T> && std::is_same_v<T, S>) {
            // 16-bit queries, keys and values: the tile products on AMX or AVX512-BF16 (tile16_mainloop.hpp).
            if (!tile16_ws) tile16_ws.emplace(ws_rows, plan.key_tile, pb.d, pb.dv);
            if (vnni.group != g) vnni.pack(keys[g], g);
            if (path16 == Bf16Path::amx) {
              Tile16<T, S, AmxProducts> run(pb, keys[g], vnni, g, p0, p1, *tile16_ws);
              attend_tile(run, 32, plan.key_tile, tiles.cut_keys());
            } else {
              Tile16<T, S, WidenProducts> run(pb, keys[g], vnni, g, p0, p1, *tile16_ws);
              attend_tile(run, 32, plan.key_tile, tiles.cut_keys());
            }
            store_tile_rows(pb, g, p0, p1, tile16_ws->rows, tile16_ws->lse, out, lse);
          }
#endif
        } else if ((p1 - p0) * stack > tiles.few_rows()) {
          if (!packed_ws) packed_ws.emplace(ws_rows, plan.key_tile, pb.d, pb.dv);
          if (tiles.pack_groups() && packed.group != g) packed.pack(keys[g], g);
          PackedTile<T, S> run(pb, keys[g], tiles.pack_groups() ? &packed : nullptr, g, p0, p1, *packed_ws);
          attend_tile(run, PackedGemm<C>::nr, plan.key_tile, tiles.cut_keys());
          store_tile_rows(pb, g, p0, p1, packed_ws->acc, packed_ws->sum, out, lse);
        } else {
          if (!rows_ws)
            rows_ws.emplace(std::min(ws_rows, tiles.few_rows()), plan.key_tile, pb.d, pb.dv, !std::is_same_v<C, S>);
          RowsTile<T, S> run(pb, keys[g], g, p0, p1, *rows_ws);
          attend_tile(run, 1, plan.key_tile, tiles.cut_keys());
          store_tile_rows(pb, g, p0, p1, rows_ws->acc, rows_ws->sum, out, lse);
        }
      }
  }
}

}  // namespace attend::detail
