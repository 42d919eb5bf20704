#pragma once
/// \file
/// The one attention kernel behind every public function: blocked, online softmax, threaded.
///
/// Queries are processed in tiles of rows and keys in tiles of columns. Each (query tile, key tile) pair
/// costs two small matrix products, S = Q K^T and acc += P V, and the softmax is carried across key tiles as a
/// running row maximum `m` and row sum `l` (the FlashAttention recurrence): when a new tile raises the maximum,
/// the previous sum and accumulator are rescaled by exp(m_old - m_new). Memory beyond inputs and output is one
/// tile of queries, scores and accumulators per thread, and in prefill a contiguous copy of one kv group's keys
/// and values per thread (see grouped_attention()), never the Lq x Lk score matrix.
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

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attend::detail {

/// Tile sizes. Measured on the 2-core AVX-512 development machine (fp32, one thread; bench/ holds the benchmarks):
/// - prefill (L = 4096, d = 64 and 128): 256 x 256 tiles keep both products near Eigen's GEMM speed while the
///   scores (256 KiB in float) stay in L2; 64-row tiles lose ~25%.
/// - tiles of at most kFewRows query rows (decoding): 64-key tiles keep the K tile in L1 while each query row
///   reads it (GQA 32/8, d = 128, 16k cache: 11.8 GB/s of KV at 64 keys, 8.9 at 256, 5.8 at 512).
/// - decode chunks of 4096 keys: a 16k cache gives 4 chunks to spread over threads, each long enough to stream
///   at memory speed (1024-key chunks measured 0-15% slower).
struct Tiles {
  Index queries = 256;
  Index keys = 256;
  Index decode_chunk = 4096;
  Index few_rows_keys = 64;
  Index cut_keys = 64;  ///< key tiles where the mask cuts through a query tile (see attend_tile())
  /// Prefill copies each kv group's keys and values into contiguous storage when k and v together span more
  /// than this many bytes (see grouped_attention(); 8 MiB measured on a machine with 2 MiB of L2 per core).
  double copy_groups_above = 8 << 20;
};

/// Tiles with at most this many query rows use matrix-vector products instead of matrix products.
inline constexpr Index kFewRows = 16;

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

/// Scratch space of one thread for one query tile; sized once, reused for every tile.
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

/// Whether every entry is finite, row by row with vectorized sums (x * 0 is 0 for finite x, NaN otherwise):
/// Eigen's allFinite() is a scalar loop in column order, slow on the strided rows of a key tile.
template <class Derived>
bool all_finite(const Eigen::MatrixBase<Derived>& m) {
  using T = typename Derived::Scalar;
  for (Index r = 0; r < m.rows(); ++r)
    if (!((m.row(r).array() * T(0)).sum() == T(0))) return false;
  return true;
}

/// The keys [Lk, d] and values [Lk, dv] of one kv group: column slices of the problem's k and v, or contiguous
/// copies of them (see grouped_attention()).
template <class T>
struct GroupKeys {
  ConstRowsRef<T> k;
  ConstRowsRef<T> v;
};

/// The online softmax of one query tile (positions [p0, p1) of kv group g, all the group's query heads): the
/// constructor, then absorb() key tiles in increasing order, then finish(). The steps are separate so the decode
/// path can walk one key tile through every group before the next, reading whole key rows while they are hot.
template <class T>
class TileRun {
 public:
  TileRun(const Problem<T>& pb, const GroupKeys<T>& kv, Index g, Index p0, Index p1, Workspace<T>& ws)
      : pb_(pb), kv_(kv), ws_(ws), p0_(p0), rows_((p1 - p0) * pb.stack) {
    const Index stack = pb.stack;
    auto q = ws.q.topRows(rows_);
    for (Index p = p0; p < p1; ++p)
      for (Index h = 0; h < stack; ++h)
        q.row((p - p0) * stack + h) = pb.q.block(p, (g * stack + h) * pb.d, 1, pb.d) * pb.scale;
    // Key ranges only move right as the position grows, so the first and last positions bound the tile.
    const KeyRange first = pb.mask.keys(p0, pb.positions, pb.keys);
    const KeyRange last = pb.mask.keys(p1 - 1, pb.positions, pb.keys);
    keys_ = KeyRange{first.begin, last.end};
    seen_by_all_ = KeyRange{last.begin, first.end};  // keys visible to every row of the tile
    ws.max.head(rows_).setConstant(-std::numeric_limits<T>::infinity());
    ws.sum.head(rows_).setZero();
    ws.acc.topRows(rows_).setZero();
  }

  /// Keys some row of the tile may see.
  KeyRange keys() const { return keys_; }
  /// Keys every row of the tile sees (may be empty: begin >= end).
  KeyRange seen_by_all() const { return seen_by_all_; }

  /// Folds keys [kt, kt + tk) (within keys()) into the running softmax. A value row whose key is hidden from a
  /// query (by the mask or a -inf bias) is never multiplied into that query's output, so infinities or NaN
  /// stored there cannot leak through 0 * inf.
  void absorb(Index kt, Index tk) {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    const Problem<T>& pb = pb_;
    const Index stack = pb.stack;
    // Only tiles that cut through some row's key range need per-row limits; elsewhere every row sees the
    // whole tile. Key ranges move right as the position grows, so the rows that see none of a cut tile are a
    // prefix (ranges ending before it) and a suffix (ranges starting after it): they are left out of the
    // products, which on a causal diagonal saves the hidden triangle (see attend_tile()).
    const bool cut_by_mask = kt < seen_by_all_.begin || kt + tk > seen_by_all_.end;
    Index r0 = 0, r1 = rows_;
    if (cut_by_mask) {
      Index p_lo = p0_, p_hi = p0_ + rows_ / stack;
      while (p_lo < p_hi && pb.mask.keys(p_lo, pb.positions, pb.keys).end <= kt) ++p_lo;
      while (p_hi > p_lo && pb.mask.keys(p_hi - 1, pb.positions, pb.keys).begin >= kt + tk) --p_hi;
      r0 = (p_lo - p0_) * stack;
      r1 = (p_hi - p0_) * stack;
      if (r0 == r1) return;
    }
    const Index rows = r1 - r0;
    const auto q = ws_.q.middleRows(r0, rows);
    auto m = ws_.max.segment(r0, rows);
    auto l = ws_.sum.segment(r0, rows);
    auto acc = ws_.acc.middleRows(r0, rows);
    auto s = ws_.scores.topLeftCorner(rows, tk);
    const auto k_tile = kv_.k.middleRows(kt, tk);
    const auto v_tile = kv_.v.middleRows(kt, tk);

    // A handful of rows (decoding) makes GEMM pack whole K and V tiles for little arithmetic; matrix-vector
    // products stream them once instead (measured 10.8 vs 8.2 GB/s of KV at 4 rows, d = 128).
    const bool few_rows = rows <= kFewRows;
    if (few_rows)
      for (Index r = 0; r < rows; ++r) s.row(r).transpose().noalias() = k_tile * q.row(r).transpose();
    else
      s.noalias() = q * k_tile.transpose();

    if (pb.softcap > 0) s = ((s.array() * (T(1) / pb.softcap)).tanh() * pb.softcap).matrix();
    if (pb.bias)
      for (Index r = 0; r < rows; ++r) s.row(r) += pb.bias->row(p0_ + (r0 + r) / stack).segment(kt, tk);

    // Hidden entries are set to 0 directly, never exponentiated: Eigen's vectorized exp clamps its argument,
    // so exp(-inf) is ~1e-38 in float, not 0.
    for (Index r = 0; r < rows; ++r) {
      Index lo = 0, hi = tk;
      if (cut_by_mask) {
        const KeyRange vis = pb.mask.keys(p0_ + (r0 + r) / stack, pb.positions, pb.keys);
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
    if ((cut_by_mask || pb.bias) && !all_finite(v_tile)) {
      for (Index r = 0; r < rows; ++r)
        for (Index j = 0; j < tk; ++j)
          if (s(r, j) != T(0)) acc.row(r) += s(r, j) * v_tile.row(j);
    } else if (few_rows) {
      for (Index r = 0; r < rows; ++r) acc.row(r).noalias() += s.row(r) * v_tile;
    } else {
      acc.noalias() += s * v_tile;
    }
  }

  /// Leaves in ws.acc the normalized rows (position-major stack) and in ws.sum each row's log-sum-exp of its
  /// visible scaled scores (-inf, with a zero row, when it saw no key).
  void finish() {
    auto l = ws_.sum.head(rows_);
    for (Index r = 0; r < rows_; ++r) {
      if (l[r] == T(0)) {
        ws_.acc.row(r).setZero();
        l[r] = -std::numeric_limits<T>::infinity();
      } else {
        ws_.acc.row(r) /= l[r];
        l[r] = ws_.max[r] + std::log(l[r]);
      }
    }
  }

 private:
  const Problem<T>& pb_;
  const GroupKeys<T>& kv_;
  Workspace<T>& ws_;
  Index p0_, rows_;
  KeyRange keys_, seen_by_all_;
};

/// Attends positions [p0, p1) of kv group g to the keys in `chunk` (intersected with what the mask lets each row
/// see) in key tiles of `tile_keys`; see TileRun::finish() for where the result is left.
///
/// Where the mask cuts through the tile (a causal diagonal, a window's edges) keys go in narrower tiles of
/// `cut_keys`, so that absorb() can leave out the rows that see none of them: a 256 x 256 causal diagonal
/// then costs the products of 5/8 of it in 64-key tiles instead of all of it.
template <class T>
void attend_tile(const Problem<T>& pb, const GroupKeys<T>& kv, Index g, Index p0, Index p1, KeyRange chunk,
                 Index tile_keys, Index cut_keys, Workspace<T>& ws) {
  TileRun<T> run(pb, kv, g, p0, p1, ws);
  const Index k_end = std::min(run.keys().end, chunk.end);
  const KeyRange all = run.seen_by_all();
  for (Index kt = std::max(run.keys().begin, chunk.begin); kt < k_end;) {
    Index tk = std::min(tile_keys, k_end - kt);
    if (kt < all.begin) tk = std::min({tk, cut_keys, all.begin - kt});  // up to the first fully seen key
    else if (kt + tk > all.end) tk = std::min(tk, std::max(cut_keys, all.end - kt));  // full part, then cut
    run.absorb(kt, tk);
    kt += tk;
  }
  run.finish();
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

/// Whether the OpenMP team is worth starting: below ~4M multiply-adds (~40 us on one core) waking the second
/// thread costs a noticeable share of the call, and far more when another process holds that core.
inline bool worth_threads(Index tasks, double work) { return tasks > 1 && work > double(1 << 22); }

/// Called at the top of each of our parallel regions: the tile products must not start threads of their own.
/// Eigen parallelizes a product whenever it runs outside an active team of several threads, which includes
/// our region when it runs with one thread; nested teams per tile cost more than the tile (measured: MLA
/// absorbed decode 0.37 ms -> 1.7 ms). The setting belongs to this region's implicit tasks only, so the
/// caller's thread count is untouched.
inline void keep_tile_products_serial() {
#if defined(_OPENMP)
  omp_set_num_threads(1);
#endif
}

/// Keys per decode chunk: at most tiles.decode_chunk, but small enough that a cache of a few thousand keys
/// still splits into about four chunks for the threads (never below 512 keys, so each chunk streams). A
/// function of the shape only, so the result does not depend on the thread count.
inline Index decode_chunk_keys(const Tiles& tiles, Index lk) {
  return std::min(tiles.decode_chunk, std::max<Index>(512, (lk + 3) / 4));
}

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
  const Index key_tile = lq * stack <= kFewRows ? tiles.few_rows_keys : tiles.keys;  // see Tiles
  [[maybe_unused]] const double work = double(lq) * stack * groups * double(lk) * double(d + pb.dv);

  const auto scatter = [&](Index g, Index p0, Index p1, const auto& rows_out, const auto& rows_lse) {
    for (Index p = p0; p < p1; ++p)
      for (Index h = 0; h < stack; ++h) {
        const Index r = (p - p0) * stack + h;
        out.block(p, (g * stack + h) * pb.dv, 1, pb.dv) = rows_out.row(r);
        if (lse) (*lse)(p, g * stack + h) = rows_lse[r];
      }
  };

  // Each group's keys and values as column slices of k and v. Without keys nothing is read from them, and a
  // column block of an empty matrix would offset its null data pointer (undefined behaviour).
  std::vector<GroupKeys<T>> slices;
  slices.reserve(groups);
  for (Index g = 0; g < groups; ++g)
    if (lk == 0)
      slices.push_back({k, v});
    else
      slices.push_back({k.middleCols(g * d, d), v.middleCols(g * pb.dv, pb.dv)});

  const Index chunk_keys = decode_chunk_keys(tiles, lk);
  const Index chunks = (lk + chunk_keys - 1) / chunk_keys;
  if (lq <= tile_positions && chunks > 1) {
    // Decode: one query tile per group; split the keys into chunks, attend each, merge in chunk order. A task
    // is one chunk for every group, walking each key tile through all groups: a group's keys are a column
    // slice of every key row (a new 4 KiB page per row at 8 heads of 128 floats), so group-by-group passes
    // would read memory in page-strided bits that defeat the prefetcher.
    const Index rows = lq * stack;
    std::vector<Matrix<T>> part_out(groups * chunks, Matrix<T>(rows, pb.dv));
    std::vector<Vector<T>> part_lse(groups * chunks, Vector<T>(rows));
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(chunks, work))
#endif
    {
      keep_tile_products_serial();
      std::vector<Workspace<T>> ws(groups, Workspace<T>(rows, key_tile, d, pb.dv));
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
      for (Index c = 0; c < chunks; ++c) {
        std::vector<TileRun<T>> runs;
        runs.reserve(groups);
        for (Index g = 0; g < groups; ++g) runs.emplace_back(pb, slices[g], g, 0, lq, ws[g]);
        const KeyRange seen = runs[0].keys();  // the same positions in every group
        const Index k_end = std::min({seen.end, lk, (c + 1) * chunk_keys});
        for (Index kt = std::max(seen.begin, c * chunk_keys); kt < k_end; kt += key_tile)
          for (auto& run : runs) run.absorb(kt, std::min(key_tile, k_end - kt));
        for (Index g = 0; g < groups; ++g) {
          runs[g].finish();
          part_out[g * chunks + c] = ws[g].acc.topRows(rows);
          part_lse[g * chunks + c] = ws[g].sum.head(rows);
        }
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

  // Prefill: tasks are (group, query tile), group by group and heaviest tile first within a group: under a
  // causal mask later tiles see more keys, so starting them first keeps both threads busy to the end (dynamic
  // scheduling takes the rest).
  //
  // Every query tile of a group reads the group's keys and values again. When they are a column slice of wider
  // rows (several kv heads, rows of G*d values), each key tile is spread over as many pages as it has rows;
  // once k and v no longer fit in cache, Eigen's packing of such tiles makes the whole call ~10% slower than
  // from contiguous rows (measured: MHA, 8 heads, L = 4096, d = 128, causal: 114 GFLOP/s strided, 129 from one
  // contiguous head). So each thread then copies the group it works on into contiguous [Lk, d] and [Lk, dv]
  // matrices once; the group-major task order makes that about one copy per group per thread. Below
  // tiles.copy_groups_above bytes of k and v, or with fewer than 4 query tiles per group to share a copy, copying
  // measured as a loss (L <= 1024 at d = 128: 0-5% slower). Copies hold the same values: results do not change.
  const Index n_tiles = (lq + tile_positions - 1) / tile_positions, tasks = n_tiles * groups;
  const bool later_is_heavier = options.mask.hides_future();
  const double kv_bytes = double(k.rows() * k.outerStride() + v.rows() * v.outerStride()) * sizeof(T);
  const bool copy_groups =
      n_tiles >= 4 && kv_bytes > tiles.copy_groups_above && (k.outerStride() != d || v.outerStride() != pb.dv);
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(tasks, work))
#endif
  {
    keep_tile_products_serial();
    Workspace<T> ws(std::min(tile_rows, lq * stack), key_tile, d, pb.dv);
    Matrix<T> k_copy, v_copy;
    Index copied = -1;
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (Index t = 0; t < tasks; ++t) {
      const Index g = t / n_tiles, tile = later_is_heavier ? n_tiles - 1 - t % n_tiles : t % n_tiles;
      const Index p0 = tile * tile_positions, p1 = std::min(lq, p0 + tile_positions);
      if (copy_groups && copied != g) {
        k_copy = slices[g].k;
        v_copy = slices[g].v;
        copied = g;
      }
      const GroupKeys<T> kv = copy_groups ? GroupKeys<T>{k_copy, v_copy} : slices[g];
      attend_tile(pb, kv, g, p0, p1, KeyRange{0, lk}, key_tile, tiles.cut_keys, ws);
      scatter(g, p0, p1, ws.acc, ws.sum);
    }
  }
}

}  // namespace attend::detail
