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
#include "attend/detail/group_keys.hpp"
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

/// The instructions of a call's 16-bit prefill tiles: the path and, on the avx512bf16 path, its products.
struct Path16 {
  Bf16Path path = Bf16Path::generic;
  Bf16Products products = Bf16Products::widen;
};

/// One thread's prefill tiles: the mainloop each tile takes, with the workspaces its tiles share (each made when the
/// first tile that needs it comes) and the kv group packed last. prefill() and the ragged schedule
/// (schedule_ragged.hpp) run every prefill tile through it, so a tile gives the same bits whichever runs it.
template <class T, class S>
class PrefillTiles {
 public:
  using C = accumulator_t<T>;

  /// Tiles of up to `rows` rows, key tiles of up to `keys` keys; `path16` is prefill_path16() for the whole call.
  PrefillTiles(Index rows, Index keys, Index d, Index dv, const Tiles& tiles, Path16 path16)
      : rows_(rows), keys_(keys), d_(d), dv_(dv), tiles_(tiles), path16_(path16) {}

  /// Kv group g's positions [p0, p1) of `pb` (its keys `kv`, key tiles of `key_tile`) into out [Lq, H*dv] and lse
  /// [Lq, H] (when not null). `source` names the kv group among all the groups of the call (a schedule's id):
  /// consecutive tiles of one source pack its keys once.
  template <class Lse>
  void run(const Problem<T, S>& pb, const GroupKeys<S>& kv, Index source, Index g, Index p0, Index p1, Index key_tile,
           RowsRef<T>& out, Lse* lse) {
    const Index rows = (p1 - p0) * pb.stack;
    if (rows > tiles_.few_rows() && path16_.path != Bf16Path::generic) {
#if defined(ATTEND_X86_DISPATCH)
      if constexpr (is_16bit<T> && std::is_same_v<T, S>) {
        // 16-bit queries, keys and values: the tile products on AMX or AVX512-BF16 (tile16_mainloop.hpp).
        if (!tile16_ws_) tile16_ws_.emplace(rows_, keys_, d_, dv_);
        if (vnni_.group != source) vnni_.pack(kv, source);
        if (path16_.path == Bf16Path::amx)
          run16<AmxProducts>(pb, kv, g, p0, p1, key_tile);
        else if (path16_.products == Bf16Products::dot)
          run16<DotProducts>(pb, kv, g, p0, p1, key_tile);
        else
          run16<WidenProducts>(pb, kv, g, p0, p1, key_tile);
        store_tile_rows(pb, g, p0, p1, tile16_ws_->rows, tile16_ws_->lse, out, lse);
      }
#endif
    } else if (rows > tiles_.few_rows()) {
      if (!packed_ws_) packed_ws_.emplace(rows_, keys_, d_, dv_);
      if (tiles_.pack_groups() && packed_.group != source) packed_.pack(kv, source);
      PackedTile<T, S> tile(pb, kv, tiles_.pack_groups() ? &packed_ : nullptr, g, p0, p1, *packed_ws_);
      attend_tile(tile, PackedGemm<C>::nr, key_tile, tiles_.cut_keys());
      store_tile_rows(pb, g, p0, p1, packed_ws_->acc, packed_ws_->sum, out, lse);
    } else {
      if (!rows_ws_) rows_ws_.emplace(std::min(rows_, tiles_.few_rows()), keys_, d_, dv_, !std::is_same_v<C, S>);
      RowsTile<T, S> tile(pb, kv, g, p0, p1, *rows_ws_);
      attend_tile(tile, 1, key_tile, tiles_.cut_keys());
      store_tile_rows(pb, g, p0, p1, rows_ws_->acc, rows_ws_->sum, out, lse);
    }
  }

 private:
#if defined(ATTEND_X86_DISPATCH)
  /// One 16-bit tile whose two products (S = QK^T, O += PV) take `Products`: the path decides only the instructions.
  template <class Products>
  void run16(const Problem<T, S>& pb, const GroupKeys<S>& kv, Index g, Index p0, Index p1, Index key_tile) {
    Tile16<T, S, Products> tile(pb, kv, vnni_, g, p0, p1, *tile16_ws_);
    attend_tile(tile, 32, key_tile, tiles_.cut_keys());
  }
#endif

  Index rows_, keys_, d_, dv_;
  const Tiles& tiles_;
  Path16 path16_;
  std::optional<PackedWorkspace<C>> packed_ws_;
  std::optional<RowsWorkspace<C>> rows_ws_;
  PackedKeys<C> packed_;
#if defined(ATTEND_X86_DISPATCH)
  std::optional<Tile16Workspace> tile16_ws_;
  VnniKeys vnni_;
#endif
};

/// The 16-bit path the tile products of a call of queries T over keys S take: 16-bit queries, keys and values alike
/// (mixed storage keeps float queries, which they would round) on a CPU path beyond the generic one. Read once per
/// call, so every thread of the call takes the same products.
template <class T, class S>
Path16 prefill_path16() {
  if (!(is_16bit<T> && std::is_same_v<T, S>)) return {};
  return {bf16_path_now(), bf16_products_now()};
}

template <class T, class S>
void prefill(const Problem<T, S>& pb, const std::vector<GroupKeys<S>>& keys, const Plan& plan, const Tiles& tiles,
             RowsRef<T> out, Matrix<accumulator_t<T>>* lse) {
  const Index lq = pb.positions, stack = pb.stack, groups = pb.groups;
  const Index n_tiles = (lq + plan.tile_positions - 1) / plan.tile_positions, tasks = n_tiles * groups;
  const bool later_is_heavier = pb.mask.hides_future();
  const Index ws_rows = std::min(plan.tile_positions * stack, lq * stack);
  const Path16 path16 = prefill_path16<T, S>();
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(tasks, plan.work))
#endif
  {
    keep_tile_products_serial();
    PrefillTiles<T, S> run(ws_rows, plan.key_tile, pb.d, pb.dv, tiles, path16);
    const Index unit = groups >= 4 * team_size() ? n_tiles : 1;  // tasks scheduled together: a group, or a tile
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (Index u = 0; u < tasks / unit; ++u)
      for (Index t = u * unit; t < (u + 1) * unit; ++t) {
        const Index g = t / n_tiles, tile = later_is_heavier ? n_tiles - 1 - t % n_tiles : t % n_tiles;
        const Index p0 = tile * plan.tile_positions, p1 = std::min(lq, p0 + plan.tile_positions);
        run.run(pb, keys[g], g, g, p0, p1, plan.key_tile, out, lse);
      }
  }
}

}  // namespace attend::detail
