#pragma once
/// \file
/// The backward's tuning (BackwardTiles) and the shape of its schedule (BackwardPlan), worked out from the
/// problem's sizes and the tiles alone, never from the thread count: what makes gradients bitwise identical for any
/// number of threads.
///
/// The decomposition into tasks. A task owns a kv group's key range and some of the group's query heads, and
/// computes for them all five products of FlashAttention-2's backward: dK and dV of its keys, and dQ of its query
/// heads' rows, accumulated over its keys in a fixed order. With enough kv groups a task is a whole group (no
/// partial results at all). With fewer groups than BackwardTiles::tasks() the group's query heads are split into
/// slices (each slice's dK, dV are partial sums over its heads, added in slice order afterwards), and where even
/// every query head alone is too few tasks (a single head, few heads) the keys are split into chunks (each chunk's
/// dQ is a partial sum over its keys, added in chunk order afterwards). Both additions run in a fixed order, so the
/// bits do not depend on which thread ran what.

#include <algorithm>

#include "attend/detail/packed_gemm.hpp"
#include "attend/detail/problem.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// The backward's tuning, with named setters as detail::Tiles has (`BackwardTiles().with_queries(8)`).
/// docs/kernel-notes.md ("Backward") records the measurements behind the defaults.
class BackwardTiles {
 public:
  /// Query rows (positions x a task's query heads) per query tile: both products with depth over query rows
  /// (dV += P^T dO, dK += dS^T Q) run near GEMM speed, and a key tile's scores for it stay in L2.
  Index queries() const { return queries_; }
  /// Keys per key tile: the dK, dV accumulators of a tile and its three packed operands stay in L2 next to the
  /// scores.
  Index keys() const { return keys_; }
  /// Query rows per query tile where the mask cuts the key tile (a causal diagonal, a window's edges): the keys
  /// none of a narrow tile's rows see drop out of its products.
  Index cut_queries() const { return cut_queries_; }
  /// The fewest tasks the decomposition aims for before it splits query heads or keys (see the file comment).
  Index tasks() const { return tasks_; }

  BackwardTiles& with_queries(Index n) { return set(queries_, n); }
  BackwardTiles& with_keys(Index n) { return set(keys_, n); }
  BackwardTiles& with_cut_queries(Index n) { return set(cut_queries_, n); }
  BackwardTiles& with_tasks(Index n) { return set(tasks_, n); }

 private:
  BackwardTiles& set(Index& field, Index n) {
    field = n < 1 ? 1 : n;
    return *this;
  }

  Index queries_ = 256;
  Index keys_ = 256;
  Index cut_queries_ = 64;
  Index tasks_ = 8;
};

struct BackwardPlan {
  Index slices;          ///< query-head slices per kv group
  Index slice_heads;     ///< query heads per slice (a task's stack)
  Index chunks;          ///< key chunks
  Index chunk_keys;      ///< keys per chunk, a multiple of key_tile
  Index key_tile;        ///< keys per key tile
  Index tile_positions;  ///< positions per query tile, a multiple of align
  Index cut_positions;   ///< positions per query tile where the mask cuts, a multiple of align
  Index align;           ///< query tiles start on multiples of this many positions (see BackwardRows)
  Index tasks;           ///< groups x slices x chunks
  double work;           ///< multiply-adds, to decide whether threads pay
};

template <class T>
BackwardPlan backward_plan(const Problem<T, T>& pb, const BackwardTiles& tiles) {
  BackwardPlan s;
  const Index groups = pb.groups, stack = pb.stack, want = tiles.tasks();
  // The smallest slicing of the stack that gives enough tasks; every query head alone if none does.
  s.slices = stack;
  for (Index n = 1; n <= stack; ++n)
    if (stack % n == 0 && groups * n >= want) {
      s.slices = n;
      break;
    }
  s.slice_heads = stack / s.slices;
  s.key_tile = tiles.keys();
  const Index key_tiles = std::max<Index>(1, (pb.keys + s.key_tile - 1) / s.key_tile);
  const Index by_heads = groups * s.slices;
  const Index chunks = by_heads >= want ? 1 : std::min(key_tiles, (want + by_heads - 1) / by_heads);
  s.chunk_keys = (key_tiles + chunks - 1) / chunks * s.key_tile;
  s.chunks = std::max<Index>(1, (pb.keys + s.chunk_keys - 1) / s.chunk_keys);
  // Query tiles start on whole panels of the right operands packed from the task's rows (four columns each), so
  // whole positions of any stack do: positions in multiples of nr.
  s.align = PackedGemm<T>::nr;
  const auto positions = [&](Index rows) { return std::max(s.align, rows / s.slice_heads / s.align * s.align); };
  s.tile_positions = positions(tiles.queries());
  s.cut_positions = std::min(s.tile_positions, positions(tiles.cut_queries()));
  s.tasks = by_heads * s.chunks;
  s.work = double(pb.positions) * double(stack) * double(groups) * double(pb.keys) * double(pb.d + pb.dv) * 2.5;
  return s;
}

}  // namespace attend::detail
