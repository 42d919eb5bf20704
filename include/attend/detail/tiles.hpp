#pragma once
/// \file
/// The kernel's tuning: tile sizes and the choices that depend on them. Every public function uses the defaults;
/// tests and benchmarks set other values through the named setters (`Tiles().with_queries(4).with_keys(8)`), so a
/// test says which size it changes. docs/kernel-notes.md records the measurements behind each default.

#include "attend/shapes.hpp"

namespace attend::detail {

class Tiles {
 public:
  /// Query rows per tile (stacked rows: positions x query heads of a kv group). Large enough that both tile
  /// products run near GEMM speed, small enough that a tile's scores (rows x keys) stay in L2.
  Index queries() const { return queries_; }
  /// Keys per tile of a tile with more than few_rows() rows.
  Index keys() const { return keys_; }
  /// Longest key chunk of the split-key (flash-decoding) path: long enough to stream at memory speed, short
  /// enough that a long cache gives every thread chunks (see decode_chunk_keys()).
  Index decode_chunk() const { return decode_chunk_; }
  /// Keys per tile of a tile with at most few_rows() rows: their scores stay in L1.
  Index few_rows_keys() const { return few_rows_keys_; }
  /// Keys per tile where the mask cuts through a query tile (a causal diagonal, a window's edges): narrow tiles
  /// let the rows that see none of a tile drop out of its products.
  Index cut_keys() const { return cut_keys_; }
  /// Whether prefill packs each kv group's keys and values once per thread (Lk * (d + dv) numbers); false packs
  /// each key tile for each query tile instead (O(tile) memory, the packing repeated). Same bits either way.
  bool pack_groups() const { return pack_groups_; }
  /// Tiles of at most this many rows multiply on the unpacked rows (detail::RowProducts): when each key serves a
  /// handful of rows, packing costs more than it saves. 0 sends every tile through the packed products.
  Index few_rows() const { return few_rows_; }

  Tiles& with_queries(Index n) { return set(queries_, n); }
  Tiles& with_keys(Index n) { return set(keys_, n); }
  Tiles& with_decode_chunk(Index n) { return set(decode_chunk_, n); }
  Tiles& with_few_rows_keys(Index n) { return set(few_rows_keys_, n); }
  Tiles& with_cut_keys(Index n) { return set(cut_keys_, n); }
  Tiles& with_pack_groups(bool on) {
    pack_groups_ = on;
    return *this;
  }
  Tiles& with_few_rows(Index n) {
    few_rows_ = n < 0 ? 0 : n;
    return *this;
  }

 private:
  // Sizes below 1 would stall the tile loops; they are raised to 1 (tests use 1 to reach every edge).
  Tiles& set(Index& field, Index n) {
    field = n < 1 ? 1 : n;
    return *this;
  }

  Index queries_ = 256;
  Index keys_ = 256;
  Index decode_chunk_ = 4096;
  Index few_rows_keys_ = 64;
  Index cut_keys_ = 64;
  bool pack_groups_ = true;
  Index few_rows_ = 16;
};

}  // namespace attend::detail
