#pragma once
/// \file
/// The one attention kernel behind every public function: blocked, online softmax, threaded.
///
/// Queries are processed in tiles of rows and keys in tiles of columns. Each (query tile, key tile) pair
/// costs two small matrix products, S = Q K^T and acc += P V, and the softmax is carried across key tiles as a
/// running row maximum `m` and row sum `l` (the FlashAttention recurrence): when a new tile raises the maximum,
/// the previous sum and accumulator are rescaled by exp(m_old - m_new). Memory beyond inputs and output is one
/// tile of queries, scores and accumulators per thread, never the Lq x Lk score matrix.
///
/// Masks are policies (attend::Mask) that give each query a contiguous key range. Key tiles outside the
/// union of a query tile's ranges are never computed; the mask is applied element-wise only on tiles that cut
/// through some row's range.
///
/// Grouped queries: the query heads that share one kv head are stacked position-major (row = position *
/// stack + head-in-group) into the tile, so each key/value tile is read once for the whole group. MHA is
/// stack 1, MQA is stack = number of query heads, MLA's absorbed decode is MQA over the latent cache.
///
/// Work is split into tasks (kv group x query tile) run by OpenMP when available. Short queries over long
/// keys (decoding) instead split the keys into fixed chunks (flash-decoding): each chunk yields a partial
/// output and its log-sum-exp, merged exactly afterwards in chunk order. The decomposition depends only on
/// the shapes, never on the thread count, and every task writes its own rows, so results are bitwise identical
/// for any number of threads.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attend/masks.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Tile sizes. Measured on the 2-core AVX-512 development machine (fp32, d = 64 and 128, L = 4096, one thread,
/// see docs/benchmarks.md): 256 x 256 tiles keep the two products near Eigen's GEMM speed while the scores
/// (256 KiB in float) stay in L2; 64-row tiles lose ~25%. Decode chunks of 1024 keys give a 16k cache 16
/// chunks per kv group to spread over threads, each long enough to stream at memory speed.
struct Tiles {
  Index queries = 256;
  Index keys = 256;
  Index decode_chunk = 1024;
};

/// One grouped-query attention problem: q [Lq, H*d], k [Lk, G*d], v [Lk, G*dv], optional bias [Lq, Lk] shared by
/// all heads.
template <class T>
struct Problem {
  const ConstRowsRef<T>& q;
  const ConstRowsRef<T>& k;
  const ConstRowsRef<T>& v;
  const ConstRowsRef<T>* bias;
  Mask mask;
  T scale;
  T softcap;
  Index positions;  ///< Lq
  Index keys;       ///< Lk
  Index d, dv;
  Index stack;  ///< query heads per kv head
};

/// Scratch space of one thread; sized once, reused for every tile.
template <class T>
struct Workspace {
  Matrix<T> q;       ///< [tile rows, d]: the tile's stacked, scaled queries
  Matrix<T> scores;  ///< [tile rows, tile keys]: S, then P in place
  Matrix<T> acc;     ///< [tile rows, dv]: unnormalized, then normalized output
  Vector<T> max;     ///< running row maximum m
  Vector<T> sum;     ///< running row sum l, then the log-sum-exp

  Workspace(Index rows, Index keys, Index d, Index dv)
      : q(rows, d), scores(rows, keys), acc(rows, dv), max(rows), sum(rows) {}
};

/// Attends positions [p0, p1) of kv group g (all its query heads) to the keys in `chunk`, intersected with what
/// the mask lets each row see. Leaves in ws.acc the normalized rows (position-major stack) and in ws.sum each
/// row's log-sum-exp of its visible scaled scores (-inf, with a zero row, when it sees no key).
///
/// A value row whose key is hidden from a query (by the mask, a -inf bias or the chunk) is never multiplied
/// into that query's output, so infinities or NaN stored there cannot leak through 0 * inf.
template <class T>
void attend_tile(const Problem<T>& pb, Index g, Index p0, Index p1, KeyRange chunk, Index tile_keys,
                 Workspace<T>& ws) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index stack = pb.stack, lq = pb.positions, lk = pb.keys, rows = (p1 - p0) * stack;

  auto q = ws.q.topRows(rows);
  for (Index p = p0; p < p1; ++p)
    for (Index h = 0; h < stack; ++h)
      q.row((p - p0) * stack + h) = pb.q.block(p, (g * stack + h) * pb.d, 1, pb.d) * pb.scale;
  const auto k = pb.k.middleCols(g * pb.d, pb.d);
  const auto v = pb.v.middleCols(g * pb.dv, pb.dv);

  // Key ranges only move right as the position grows, so the first and last positions bound the tile.
  const KeyRange first = pb.mask.keys(p0, lq, lk);
  const KeyRange last = pb.mask.keys(p1 - 1, lq, lk);
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

  for (Index kt = k_begin; kt < k_end; kt += tile_keys) {
    const Index tk = std::min(tile_keys, k_end - kt);
    auto s = ws.scores.topLeftCorner(rows, tk);
    const auto v_tile = v.middleRows(kt, tk);
    s.noalias() = q * k.middleRows(kt, tk).transpose();

    if (pb.softcap > 0) s = ((s.array() * (T(1) / pb.softcap)).tanh() * pb.softcap).matrix();
    if (pb.bias)
      for (Index r = 0; r < rows; ++r) s.row(r) += pb.bias->row(p0 + r / stack).segment(kt, tk);

    // Only tiles that cut through some row's key range need per-row limits; elsewhere every row sees the
    // whole tile. Hidden entries are set to 0 directly, never exponentiated: Eigen's vectorized exp clamps its
    // argument, so exp(-inf) is ~1e-38 in float, not 0.
    const bool cut_by_mask = kt < seen_by_all_begin || kt + tk > seen_by_all_end;
    for (Index r = 0; r < rows; ++r) {
      Index lo = 0, hi = tk;
      if (cut_by_mask) {
        const KeyRange vis = pb.mask.keys(p0 + r / stack, lq, lk);
        lo = std::clamp<Index>(vis.begin - kt, 0, tk);
        hi = std::clamp<Index>(vis.end - kt, lo, tk);
        s.row(r).head(lo).setZero();
        s.row(r).tail(tk - hi).setZero();
      }
      if (lo == hi) continue;  // nothing visible here: m, l and acc stay as they are
      auto seen = s.row(r).segment(lo, hi - lo).array();
      const T m_new = std::max(m[r], seen.maxCoeff());
      // While a row has seen only -inf scores (bias) its maximum is -inf; shifting by 0 then avoids
      // exp(-inf - -inf) = NaN.
      const T shift = m_new == neg_inf ? T(0) : m_new;
      if (pb.bias)
        seen = (seen == neg_inf).select(T(0), (seen - shift).exp());
      else
        seen = (seen - shift).exp();
      if (m_new != m[r]) {
        const T alpha = std::exp(m[r] - shift);  // std::exp: exactly 0 on a row's first visible tile
        l[r] *= alpha;
        acc.row(r) *= alpha;
        m[r] = m_new;
      }
      l[r] += seen.sum();
    }

    // Zero weights times non-finite values would poison the row (0 * inf = NaN). Only tiles where some keys are
    // hidden from some rows can have such a pair, and checking them costs one pass over a V tile.
    if ((cut_by_mask || pb.bias) && !v_tile.allFinite()) {
      for (Index r = 0; r < rows; ++r)
        for (Index j = 0; j < tk; ++j)
          if (s(r, j) != T(0)) acc.row(r) += s(r, j) * v_tile.row(j);
    } else {
      acc.noalias() += s * v_tile;
    }
  }

  for (Index r = 0; r < rows; ++r) {
    if (l[r] == T(0)) {
      acc.row(r).setZero();
      l[r] = neg_inf;
    } else {
      acc.row(r) /= l[r];
      l[r] = m[r] + std::log(l[r]);
    }
  }
}

/// Merges partial results over disjoint key sets, row by row: out = sum_c exp(lse_c - lse) out_c with
/// lse = log sum_c exp(lse_c). Parts with lse = -inf (no visible key) weigh nothing; if every part is -inf the
/// row is zero with lse -inf. Row r of part c is `dv` values at outs[c] + r * out_stride, its log-sum-exp at
/// lses[c][r * lse_stride]. NaN in a part's lse or values makes the merged row NaN.
template <class T, class Out>
void merge_rows(const std::vector<const T*>& outs, Index out_stride, const std::vector<const T*>& lses,
                Index lse_stride, Index rows, Index dv, Out&& write_row) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  Eigen::Matrix<T, 1, Eigen::Dynamic> row(dv);
  for (Index r = 0; r < rows; ++r) {
    T m = neg_inf;
    bool nan = false;
    for (const T* lse : lses) {
      const T x = lse[r * lse_stride];
      nan = nan || std::isnan(x);
      m = std::max(m, x);
    }
    row.setZero();
    if (nan) {
      row.setConstant(std::numeric_limits<T>::quiet_NaN());
      write_row(r, row, std::numeric_limits<T>::quiet_NaN());
      continue;
    }
    if (m == neg_inf) {
      write_row(r, row, neg_inf);
      continue;
    }
    T total = 0;
    for (std::size_t c = 0; c < outs.size(); ++c) {
      const T x = lses[c][r * lse_stride];
      if (x == neg_inf) continue;
      const T w = std::exp(x - m);
      total += w;
      row += w * Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(outs[c] + r * out_stride, dv);
    }
    row /= total;
    write_row(r, row, m + std::log(total));
  }
}

/// Whether the OpenMP team is worth starting: below ~1M multiply-adds the start-up costs more than it saves.
inline bool worth_threads(Index tasks, double work) { return tasks > 1 && work > double(1 << 20); }

/// Grouped-query attention over all heads: `q` [Lq, H*d], `k` [Lk, G*d], `v` [Lk, G*dv] => `out` [Lq, H*dv],
/// and `lse` [Lq, H] when not null. Arguments are already validated. `bias`, when given, is [Lq, Lk] and
/// shared by all heads.
template <class T>
void grouped_attention(const ConstRowsRef<T>& q, const ConstRowsRef<T>& k, const ConstRowsRef<T>& v,
                       const ConstRowsRef<T>* bias, Heads heads, const Options& options, RowsRef<T> out,
                       Matrix<T>* lse, const Tiles& tiles = Tiles()) {
  const Index d = q.cols() / heads.query;
  const Problem<T> pb{q,
                      k,
                      v,
                      bias,
                      options.mask,
                      static_cast<T>(scale_for(options, d)),
                      static_cast<T>(options.softcap),
                      q.rows(),
                      k.rows(),
                      d,
                      v.cols() / heads.kv,
                      heads.query / heads.kv};
  const Index groups = heads.kv, lq = pb.positions, lk = pb.keys, stack = pb.stack;
  if (lq == 0) return;
  // Whole positions per tile, so a tile's key ranges come from its first and last positions.
  const Index tile_positions = std::max<Index>(1, tiles.queries / stack);
  const Index tile_rows = tile_positions * stack;
  [[maybe_unused]] const double work = double(lq) * stack * groups * double(lk) * double(d + pb.dv);

  const auto scatter = [&](Index g, Index p0, Index p1, const auto& rows_out, const auto& rows_lse) {
    for (Index p = p0; p < p1; ++p)
      for (Index h = 0; h < stack; ++h) {
        const Index r = (p - p0) * stack + h;
        out.block(p, (g * stack + h) * pb.dv, 1, pb.dv) = rows_out.row(r);
        if (lse) (*lse)(p, g * stack + h) = rows_lse[r];
      }
  };

  const Index chunks = (lk + tiles.decode_chunk - 1) / tiles.decode_chunk;
  if (lq <= tile_positions && chunks > 1) {
    // Decode: one query tile per group; split the keys into chunks, attend each, merge in chunk order.
    const Index rows = lq * stack, tasks = groups * chunks;
    std::vector<Matrix<T>> part_out(tasks, Matrix<T>(rows, pb.dv));
    std::vector<Vector<T>> part_lse(tasks, Vector<T>(rows));
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(tasks, work))
#endif
    {
      Workspace<T> ws(rows, tiles.keys, d, pb.dv);
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
      for (Index t = 0; t < tasks; ++t) {
        const Index g = t / chunks, c = t % chunks;
        const KeyRange chunk{c * tiles.decode_chunk, std::min(lk, (c + 1) * tiles.decode_chunk)};
        attend_tile(pb, g, 0, lq, chunk, tiles.keys, ws);
        part_out[t] = ws.acc.topRows(rows);
        part_lse[t] = ws.sum.head(rows);
      }
    }
    Matrix<T> merged(rows, pb.dv);
    Vector<T> merged_lse(rows);
    for (Index g = 0; g < groups; ++g) {
      std::vector<const T*> outs, lses;
      for (Index c = 0; c < chunks; ++c) {
        outs.push_back(part_out[g * chunks + c].data());
        lses.push_back(part_lse[g * chunks + c].data());
      }
      merge_rows<T>(outs, pb.dv, lses, 1, rows, pb.dv, [&](Index r, const auto& row, T row_lse) {
        merged.row(r) = row;
        merged_lse[r] = row_lse;
      });
      scatter(g, 0, lq, merged, merged_lse);
    }
    return;
  }

  // Prefill: tasks are (query tile, group), heaviest first: under a causal mask later tiles see more keys,
  // so starting them first keeps both threads busy to the end (dynamic scheduling takes the rest).
  const Index n_tiles = (lq + tile_positions - 1) / tile_positions, tasks = n_tiles * groups;
  const bool later_is_heavier = options.mask.hides_future();
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(tasks, work))
#endif
  {
    Workspace<T> ws(std::min(tile_rows, lq * stack), tiles.keys, d, pb.dv);
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (Index t = 0; t < tasks; ++t) {
      const Index tile = later_is_heavier ? n_tiles - 1 - t / groups : t / groups, g = t % groups;
      const Index p0 = tile * tile_positions, p1 = std::min(lq, p0 + tile_positions);
      attend_tile(pb, g, p0, p1, KeyRange{0, lk}, tiles.keys, ws);
      scatter(g, p0, p1, ws.acc, ws.sum);
    }
  }
}

}  // namespace attend::detail
