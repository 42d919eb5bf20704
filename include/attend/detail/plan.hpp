#pragma once
/// \file
/// The shape of a call's schedule, worked out from the problem's sizes and the tiles alone, never from the
/// thread count: that is what makes results bitwise identical for any number of threads.

#include <algorithm>

#include "attend/detail/problem.hpp"
#include "attend/detail/tiles.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

struct Plan {
  Index tile_positions;  ///< positions per query tile: whole positions, so a tile's key ranges come from its ends
  Index key_tile;        ///< keys per key tile
  Index chunk_keys;      ///< keys per split-key chunk
  Index chunks;          ///< split-key chunks of the keys
  bool split_keys;       ///< decode: one query tile per group, the keys split into chunks merged afterwards
  double work;           ///< multiply-adds, to decide whether threads pay
};

/// Keys per decode chunk: at most tiles.decode_chunk(), but small enough that a cache of a few thousand keys
/// still splits into about four chunks for the threads (never below 512 keys, so each chunk streams).
inline Index decode_chunk_keys(const Tiles& tiles, Index lk) {
  return std::min(tiles.decode_chunk(), std::max<Index>(512, (lk + 3) / 4));
}

template <class T, class S>
Plan plan(const Problem<T, S>& pb, const Tiles& tiles) {
  Plan s;
  s.tile_positions = std::max<Index>(1, tiles.queries() / pb.stack);
  // A call whose every tile is few rows (decoding) reads keys in tiles whose scores stay in L1.
  s.key_tile = pb.positions * pb.stack <= tiles.few_rows() ? tiles.few_rows_keys() : tiles.keys();
  s.chunk_keys = decode_chunk_keys(tiles, pb.keys);
  s.chunks = (pb.keys + s.chunk_keys - 1) / s.chunk_keys;
  s.split_keys = pb.positions <= s.tile_positions && s.chunks > 1;
  s.work = double(pb.positions) * double(pb.stack) * double(pb.groups) * double(pb.keys) * double(pb.d + pb.dv);
  return s;
}

}  // namespace attend::detail
