#pragma once
/// \file
/// The one attention kernel behind every public function: blocked, online softmax.
///
/// Queries are processed in tiles of rows and keys in tiles of columns. Each (query tile, key tile) pair
/// costs two small matrix products, S = Q K^T and acc += P V, and the softmax is carried across key tiles as a
/// running row maximum `m` and row sum `l` (the FlashAttention recurrence): when a new tile raises the maximum,
/// the previous sum and accumulator are rescaled by exp(m_old - m_new). Memory beyond inputs and output is one
/// tile of scores and one accumulator per worker, never the Lq x Lk score matrix.
///
/// Masks are policies (attend::Mask) that give each query a contiguous key range. Key tiles outside the
/// union of a query tile's ranges are never computed; the mask is applied element-wise only on tiles that cut
/// through some row's range.
///
/// Grouped queries: the query heads that share one kv head are stacked position-major (row = position *
/// stack + head-in-group), so each key/value tile is read once for the whole group. MHA is stack 1, MQA is
/// stack = number of query heads.

#include <algorithm>
#include <cmath>
#include <limits>

#include "attend/masks.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Tile sizes in rows (queries) and columns (keys).
struct Tiles {
  Index queries = 64;
  Index keys = 256;
};

/// Everything that turns q . k into a masked score, shared by all tiles of one problem.
template <class T>
struct ScoreRule {
  Mask mask;
  Index positions = 0;                  ///< Lq: stacked row r is at position r / stack
  Index stack = 1;                      ///< query rows per position
  T softcap = 0;                        ///< 0: off
  const ConstRowsRef<T>* bias = nullptr;  ///< [positions, Lk] additive bias, or null
};

/// Scratch space of one worker; sized once, reused for every tile.
template <class T>
struct Workspace {
  Matrix<T> scores;  ///< [tile rows, tile keys]: S, then P in place
  Matrix<T> acc;     ///< [tile rows, dv]: unnormalized output
  Vector<T> max;     ///< running row maximum m
  Vector<T> sum;     ///< running row sum l

  Workspace(const Tiles& t, Index dv) : scores(t.queries, t.keys), acc(t.queries, dv), max(t.queries), sum(t.queries) {}
};

/// Attends `rows` stacked query rows starting at `row0` to the keys in `chunk` (intersected with what the mask
/// lets those rows see), writing normalized rows to `out` and, when `lse` is not null, each row's log-sum-exp
/// of its visible scores (-infinity when it sees no key). `q` is already multiplied by the scale.
///
/// A row that sees no key gets zeros. A value row whose key is hidden from a query (by the mask, a -infinity
/// bias or the chunk) is never multiplied into that query's output, so infinities or NaN stored there cannot
/// leak through 0 * inf.
template <class T>
void attend_rows(const ConstRowsRef<T>& q, const ConstRowsRef<T>& k, const ConstRowsRef<T>& v, const ScoreRule<T>& rule,
                 Index row0, Index rows, KeyRange chunk, const Tiles& tiles, Workspace<T>& ws, RowsRef<T> out,
                 T* lse) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index lk = k.rows();
  const Index lq = rule.positions;
  const Index first_pos = row0 / rule.stack;
  const Index last_pos = (row0 + rows - 1) / rule.stack;
  // Key ranges only move right as the position grows, so the first and last rows bound the whole tile.
  const KeyRange first = rule.mask.keys(first_pos, lq, lk);
  const KeyRange last = rule.mask.keys(last_pos, lq, lk);
  const Index k_begin = std::max(first.begin, chunk.begin);
  const Index k_end = std::min(last.end, chunk.end);
  const Index seen_by_all_begin = last.begin;  // keys in [this, seen_by_all_end) are visible to every row
  const Index seen_by_all_end = first.end;

  auto m = ws.max.head(rows);
  auto l = ws.sum.head(rows);
  auto acc = ws.acc.topRows(rows);
  m.setConstant(neg_inf);
  l.setZero();
  acc.setZero();

  for (Index kt = k_begin; kt < k_end; kt += tiles.keys) {
    const Index tk = std::min(tiles.keys, k_end - kt);
    auto s = ws.scores.topLeftCorner(rows, tk);
    const auto k_tile = k.middleRows(kt, tk);
    const auto v_tile = v.middleRows(kt, tk);
    s.noalias() = q.middleRows(row0, rows) * k_tile.transpose();

    if (rule.softcap > 0) s = ((s.array() * (T(1) / rule.softcap)).tanh() * rule.softcap).matrix();
    if (rule.bias) {
      for (Index r = 0; r < rows; ++r) s.row(r) += rule.bias->row((row0 + r) / rule.stack).segment(kt, tk);
    }
    // Only tiles that cut through some row's key range need per-row limits; elsewhere every row sees the
    // whole tile. Hidden entries are set to 0 directly, never exponentiated: Eigen's vectorized exp clamps its
    // argument, so exp(-inf) is ~1e-38 in float, not 0.
    const bool cut_by_mask = kt < seen_by_all_begin || kt + tk > seen_by_all_end;
    for (Index r = 0; r < rows; ++r) {
      Index lo = 0, hi = tk;
      if (cut_by_mask) {
        const KeyRange vis = rule.mask.keys((row0 + r) / rule.stack, lq, lk);
        lo = std::clamp<Index>(vis.begin - kt, 0, tk);
        hi = std::clamp<Index>(vis.end - kt, lo, tk);
      }
      auto row = s.row(r);
      row.head(lo).setZero();
      row.tail(tk - hi).setZero();
      if (lo == hi) continue;  // nothing visible here: m, l and acc stay as they are
      auto seen = row.segment(lo, hi - lo).array();
      const T m_new = std::max(m[r], seen.maxCoeff());
      // While a row has seen only -inf scores (bias) its maximum is -inf; shifting by 0 then avoids
      // exp(-inf - -inf) = NaN.
      const T shift = m_new == neg_inf ? T(0) : m_new;
      const T alpha = std::exp(m[r] - shift);  // std::exp: exactly 0 for a first tile (m = -inf)
      if (rule.bias)
        seen = (seen == neg_inf).select(T(0), (seen - shift).exp());
      else
        seen = (seen - shift).exp();
      l[r] = alpha * l[r] + seen.sum();
      acc.row(r) *= alpha;
      m[r] = m_new;
    }

    // Zero weights times non-finite values would poison the row (0 * inf = NaN). Only tiles where some keys are
    // hidden from some rows can have such a pair, and checking them costs one pass over a V tile.
    if ((cut_by_mask || rule.bias) && !v_tile.allFinite()) {
      for (Index r = 0; r < rows; ++r)
        for (Index j = 0; j < tk; ++j)
          if (s(r, j) != T(0)) acc.row(r) += s(r, j) * v_tile.row(j);
    } else {
      acc.noalias() += s * v_tile;
    }
  }

  for (Index r = 0; r < rows; ++r) {
    if (l[r] == T(0)) {
      out.row(r).setZero();
      if (lse) lse[r] = neg_inf;
    } else {
      out.row(r) = acc.row(r) / l[r];
      if (lse) lse[r] = m[r] + std::log(l[r]);
    }
  }
}

/// Query rows per tile: whole positions only, so a tile's key ranges come from its first and last positions.
inline Index rows_per_tile(const Tiles& t, Index stack) { return std::max<Index>(1, t.queries / stack) * stack; }

/// Grouped-query attention over all heads: `q` [Lq, H*d], `k` [Lk, G*d], `v` [Lk, G*dv] => `out` [Lq, H*dv],
/// and `lse` [Lq, H] when not null. Arguments are already validated. `bias`, when given, is [Lq, Lk] and
/// shared by all heads.
template <class T>
void grouped_attention(const ConstRowsRef<T>& q, const ConstRowsRef<T>& k, const ConstRowsRef<T>& v,
                       const ConstRowsRef<T>* bias, Heads heads, const Options& options, RowsRef<T> out,
                       Matrix<T>* lse, const Tiles& tiles = Tiles()) {
  const Index lq = q.rows();
  const Index lk = k.rows();
  const Index d = q.cols() / heads.query;
  const Index dv = v.cols() / heads.kv;
  const Index stack = heads.query / heads.kv;
  const T scale = static_cast<T>(scale_for(options, d));

  ScoreRule<T> rule;
  rule.mask = options.mask;
  rule.positions = lq;
  rule.stack = stack;
  rule.softcap = static_cast<T>(options.softcap);
  rule.bias = bias;

  const Index stacked_rows = lq * stack;
  const Index tile_rows = rows_per_tile(tiles, stack);
  Workspace<T> ws(Tiles{tile_rows, tiles.keys}, dv);
  Matrix<T> q_group(stacked_rows, d);  // scaled, position-major stack of one group's query heads
  Matrix<T> out_group(stacked_rows, dv);
  Vector<T> lse_group(stacked_rows);

  for (Index g = 0; g < heads.kv; ++g) {
    for (Index i = 0; i < lq; ++i)
      for (Index h = 0; h < stack; ++h) q_group.row(i * stack + h) = q.block(i, (g * stack + h) * d, 1, d) * scale;
    const ConstRowsRef<T> qg(q_group);
    const ConstRowsRef<T> kg(k.middleCols(g * d, d));
    const ConstRowsRef<T> vg(v.middleCols(g * dv, dv));
    for (Index row0 = 0; row0 < stacked_rows; row0 += tile_rows) {
      const Index rows = std::min(tile_rows, stacked_rows - row0);
      attend_rows<T>(qg, kg, vg, rule, row0, rows, KeyRange{0, lk}, Tiles{tile_rows, tiles.keys}, ws,
                     out_group.middleRows(row0, rows), lse_group.data() + row0);
    }
    for (Index i = 0; i < lq; ++i)
      for (Index h = 0; h < stack; ++h) {
        out.block(i, (g * stack + h) * dv, 1, dv) = out_group.row(i * stack + h);
        if (lse) (*lse)(i, g * stack + h) = lse_group[i * stack + h];
      }
  }
}

}  // namespace attend::detail
