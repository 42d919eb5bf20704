#pragma once
/// \file
/// The geometry of one query tile, shared by every mainloop: positions [p0, p1) of kv group g with all of the
/// group's query heads stacked position-major (tile row r is position p0 + r / stack, query head
/// g * stack + r % stack), so each key and value tile is read once for the whole group. MHA is stack 1, MQA stacks
/// every query head, MLA's absorbed decode is MQA over the latent cache.
///
/// The mask gives each position a contiguous key range whose ends never decrease with the position, so the
/// first and last positions bound the tile: keys() is what some row may see, seen_by_all() what every row sees.
/// Key tiles outside keys() are never visited; only tiles that leave seen_by_all() need per-row limits.

#include <algorithm>
#include <type_traits>
#include <utility>

#include "attend/detail/assert.hpp"
#include "attend/detail/convert16.hpp"
#include "attend/detail/online_softmax.hpp"
#include "attend/detail/problem.hpp"
#include "attend/masks.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

template <class T, class S = T>
class QueryTile {
 public:
  using C = accumulator_t<T>;

  QueryTile(const Problem<T, S>& pb, Index g, Index p0, Index p1)
      : pb_(pb), g_(g), p0_(p0), rows_((p1 - p0) * pb.stack) {
    ATTEND_DASSERT(p0 < p1 && p1 <= pb.positions, "a query tile holds positions within the problem");
    const KeyRange first = pb.mask.keys(p0, pb.positions, pb.keys);
    const KeyRange last = pb.mask.keys(p1 - 1, pb.positions, pb.keys);
    ATTEND_DASSERT(first.begin <= last.begin && first.end <= last.end, "mask key ranges only move right");
    keys_ = KeyRange{first.begin, last.end};
    seen_by_all_ = KeyRange{last.begin, first.end};
  }

  const Problem<T, S>& problem() const { return pb_; }
  Index group() const { return g_; }
  Index rows() const { return rows_; }
  /// The query position of tile row r.
  Index position(Index r) const { return p0_ + r / pb_.stack; }
  /// The query head of tile row r.
  Index head(Index r) const { return g_ * pb_.stack + r % pb_.stack; }
  /// Keys some row of the tile may see.
  KeyRange keys() const { return keys_; }
  /// Keys every row of the tile sees (may be empty: begin >= end).
  KeyRange seen_by_all() const { return seen_by_all_; }

  /// The tile's queries, stacked and scaled (scale * q: the first verb of the score transform), into the first
  /// rows() rows of `dst` [>= rows(), d], in the compute type.
  void load_queries(Matrix<C>& dst) const {
    ATTEND_DASSERT(dst.rows() >= rows_ && dst.cols() == pb_.d, "the query workspace holds the tile");
    const Index stack = pb_.stack, p1 = p0_ + rows_ / stack;
    auto q = dst.topRows(rows_);
    for (Index p = p0_; p < p1; ++p)
      for (Index h = 0; h < stack; ++h) {
        auto row = q.row((p - p0_) * stack + h);
        const T* src = pb_.q.row(p).data() + (g_ * stack + h) * pb_.d;
        if constexpr (is_16bit<T> && std::is_same_v<C, float>) {
          widen(src, row.data(), pb_.d);  // convert16.hpp: vectorized, where Eigen's cast is not
          row *= pb_.scale;
        } else {
          row = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(src, pb_.d).template cast<C>() * pb_.scale;
        }
      }
  }

  /// The rows of the tile that see some of keys [kt, kt + tk): [r0, r1), and whether the mask cuts the key tile.
  struct Part {
    bool cut_by_mask;
    Index r0, r1;
  };
  Part rows_seeing(Index kt, Index tk) const {
    // Only key tiles that leave seen_by_all() need per-row limits; elsewhere every row sees the whole tile. As key
    // ranges move right with the position, the rows that see none of a cut tile are a prefix (ranges ending
    // before it) and a suffix (ranges starting after it): the mainloops leave them out of the products, which
    // on a causal diagonal saves the hidden triangle.
    const bool cut_by_mask = kt < seen_by_all_.begin || kt + tk > seen_by_all_.end;
    if (!cut_by_mask) return {false, 0, rows_};
    const Index stack = pb_.stack;
    Index p_lo = p0_, p_hi = p0_ + rows_ / stack;
    while (p_lo < p_hi && pb_.mask.keys(p_lo, pb_.positions, pb_.keys).end <= kt) ++p_lo;
    while (p_hi > p_lo && pb_.mask.keys(p_hi - 1, pb_.positions, pb_.keys).begin >= kt + tk) --p_hi;
    return {true, (p_lo - p0_) * stack, (p_hi - p0_) * stack};
  }

  /// Keys [lo, hi) of the key tile [kt, kt + tk) that tile row r sees (all of them unless the mask cuts it).
  std::pair<Index, Index> visible(Index r, Index kt, Index tk, bool cut_by_mask) const {
    if (!cut_by_mask) return {0, tk};
    const KeyRange vis = pb_.mask.keys(position(r), pb_.positions, pb_.keys);
    const Index lo = std::clamp<Index>(vis.begin - kt, 0, tk);
    return {lo, std::clamp<Index>(vis.end - kt, lo, tk)};
  }

 private:
  const Problem<T, S>& pb_;
  Index g_, p0_, rows_;
  KeyRange keys_, seen_by_all_;
};

/// Writes one finished row (compute type), query position p of query head h, into out [Lq, H*dv] (rounded to T
/// when T is 16-bit: the output is stored) and, when not null, lse [Lq, H] (a matrix or a view of rows of one),
/// applying the head's sink first when the problem has sinks.
template <class T, class S, class Row, class Lse>
void store_row(const Problem<T, S>& pb, Index p, Index h, const Row& row, accumulator_t<T> row_lse, RowsRef<T>& out,
               Lse* lse) {
  auto dst = out.block(p, h * pb.dv, 1, pb.dv);
  if (pb.sinks.empty()) {
    if constexpr (is_16bit<T> && std::is_same_v<accumulator_t<T>, float>)
      narrow(row.data(), dst.data(), pb.dv);  // convert16.hpp: vectorized, where Eigen's cast is not
    else
      dst = row.template cast<T>();
  } else {  // the factor alone when no lse is wanted: the new lse takes three exponentials and a logarithm more
    const auto sunk =
        lse ? online_softmax::sink_row(row_lse, pb.sinks[h])
            : online_softmax::Sunk<accumulator_t<T>>{online_softmax::sink_factor(row_lse, pb.sinks[h]), row_lse};
    dst = (row * sunk.factor).template cast<T>();
    row_lse = sunk.lse;
  }
  if (lse) (*lse)(p, h) = row_lse;
}

/// Writes the results of group g's tile of positions [p0, p1): tile row r (row r of `rows_out`, entry r of
/// `rows_lse`) is position p0 + r / stack, query head g * stack + r % stack.
template <class T, class S, class RowsOut, class RowsLse, class Lse>
void store_tile_rows(const Problem<T, S>& pb, Index g, Index p0, Index p1, const RowsOut& rows_out,
                     const RowsLse& rows_lse, RowsRef<T>& out, Lse* lse) {
  for (Index p = p0; p < p1; ++p)
    for (Index h = 0; h < pb.stack; ++h) {
      const Index r = (p - p0) * pb.stack + h;
      store_row(pb, p, g * pb.stack + h, rows_out.row(r), rows_lse[r], out, lse);
    }
}

}  // namespace attend::detail
