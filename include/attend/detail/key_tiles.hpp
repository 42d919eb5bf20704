#pragma once
/// \file
/// Which key tiles one query tile visits, in increasing order. Tiles outside the keys some row may see are
/// never visited. Where the mask cuts through the query tile (a causal diagonal, a window's edges) keys go in
/// narrower tiles of `cut_keys`, so that the mainloop can leave out the rows that see none of them: a square
/// causal diagonal then costs the products of about 5/8 of it in quarter-width tiles instead of all of it.
/// Tile boundaries fall on multiples of `align` (the packed mainloop's panel width; 1 for the rows mainloop).

#include <algorithm>

#include "attend/masks.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Calls absorb(kt, tk) for the key tiles of a query tile that may see `keys` and sees all of `seen_by_all`, of
/// `lk` keys in all: tiles of `tile_keys`, narrowed to `cut_keys` where the mask cuts.
template <class Absorb>
void for_each_key_tile(KeyRange keys, KeyRange seen_by_all, Index lk, Index align, Index tile_keys, Index cut_keys,
                       Absorb&& absorb) {
  const auto round_up = [align](Index n) { return (n + align - 1) / align * align; };
  const Index full = round_up(tile_keys), cut = round_up(cut_keys);
  const Index k_end = std::min(lk, round_up(keys.end));
  const KeyRange all = seen_by_all;
  for (Index kt = std::max<Index>(keys.begin, 0) / align * align; kt < k_end;) {
    Index tk = std::min(full, k_end - kt);
    if (kt < all.begin)
      tk = std::min({tk, cut, all.begin - kt});  // up to the first fully seen key
    else if (kt + tk > all.end)
      tk = std::min(tk, std::max(cut, all.end - kt));                                     // full part, then cut
    if (tk < k_end - kt) tk = std::min(k_end - kt, std::max(align, tk / align * align));  // k_end: Lk or a panel
    absorb(kt, tk);
    kt += tk;
  }
}

/// Runs one query tile of any mainloop over its key tiles and finishes it.
template <class Tile>
void attend_tile(Tile& tile, Index align, Index tile_keys, Index cut_keys) {
  const auto& q = tile.tile();
  for_each_key_tile(q.keys(), q.seen_by_all(), q.problem().keys, align, tile_keys, cut_keys,
                    [&](Index kt, Index tk) { tile.absorb(kt, tk); });
  tile.finish();
}

}  // namespace attend::detail
