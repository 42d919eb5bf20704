#pragma once
/// \file
/// The one attention kernel behind every public function: blocked, online softmax, threaded.
///
/// Queries are processed in tiles of rows and keys in tiles of columns. Each (query tile, key tile) pair
/// costs two small matrix products, S = Q K^T and acc += P V, and the softmax is carried across key tiles as a
/// running row maximum `m` and row sum `l` (the FlashAttention recurrence): when a new tile raises the maximum,
/// the previous sum and accumulator are rescaled by exp(m_old - m_new). Memory beyond inputs and output is one
/// tile of queries, scores and accumulators per thread, and in prefill one kv group's keys and values packed per
/// thread (see grouped_attention()), never the Lq x Lk score matrix.
///
/// The products run on operands packed once (detail::PackedGemm): each kv group's keys and values once per thread,
/// each query tile once, and the scores are computed straight into the packed layout that P V reads. Tiles of a
/// handful of rows (decoding) use small register-blocked products on the unpacked rows instead
/// (detail::RowProducts).
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
#include <tuple>
#include <utility>
#include <vector>

#include "attend/detail/packed_gemm.hpp"
#include "attend/detail/row_products.hpp"
#include "attend/masks.hpp"
#include "attend/shapes.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attend::detail {

/// Tile sizes. Measured on the 2-core AVX-512 development machine (fp32, one thread; bench/ holds the benchmarks):
/// - prefill (L = 4096, d = 64 and 128): 256 x 256 tiles keep both products near Eigen's GEMM speed while the
///   scores (256 KiB in float) stay in L2; 64-row tiles lose ~25%.
/// - tiles of at most `few_rows` query rows (decoding): 64 keys, whose scores stay in L1; the decode path reads
///   them 16 key rows at a time anyway (see grouped_attention()), and 64- to 256-key tiles measured within noise
///   of each other (GQA 32/8, d = 128, 16k cache, 1 and 2 threads; 32 keys 2-5% slower).
/// - decode chunks of 4096 keys: a 16k cache gives 4 chunks to spread over threads, each long enough to stream
///   at memory speed (1024-key chunks measured 0-15% slower).
struct Tiles {
  Index queries = 256;
  Index keys = 256;
  Index decode_chunk = 4096;
  Index few_rows_keys = 64;
  Index cut_keys = 64;  ///< key tiles where the mask cuts through a query tile (see attend_tile())
  /// Prefill packs each kv group's keys and values once per thread (Lk * (d + dv) numbers each); false packs
  /// each key tile for each query tile instead, which needs only O(tile) memory but repeats the packing.
  bool pack_groups = true;
  /// Tiles of at most this many query rows use detail::RowProducts on unpacked keys and values: packing costs
  /// more than it saves when each key is used by a handful of rows (measured with matrix-vector products: 10.8
  /// vs 8.2 GB/s of KV at 4 rows, d = 128).
  Index few_rows = 16;
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

/// Scratch space of one thread for one query tile; sized once, reused for every tile. `packed` selects the
/// buffers of the packed-product path (tiles of more than Tiles::few_rows rows) over those of the few-rows path.
template <class T>
struct Workspace {
  using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  Matrix<T> q;         ///< [tile rows, d]: the tile's stacked, scaled queries
  Matrix<T> scores;    ///< [tile rows, tile keys]: S, then P in place (few rows; sized when needed)
  Matrix<T> acc;       ///< [tile rows, dv]: the output rows (few rows: accumulated here)
  Vector<T> max;       ///< running row maximum m
  Vector<T> sum;       ///< running row sum l, then the log-sum-exp
  Vector<T> q_packed;  ///< the tile's queries packed as a left operand
  Vector<T> q_part;    ///< some of the tile's rows packed, for tiles the others do not see (sized when needed)
  Vector<T> panels;    ///< [tile rows x tile keys] S, then P, in the packed left layout (PackedGemm)
  ColMajor acc_cols;   ///< [tile rows+, dv]: the unnormalized output, column-major as the packed product writes it
  Vector<T> k_tile, v_tile;  ///< one key tile's keys and values packed, when groups are not packed whole (lazily)
  std::vector<Index> visible_lo, visible_hi;  ///< per tile row: the keys of a cut tile it sees
  Index panel_keys;  ///< the most keys a packed tile holds: tile keys rounded up to whole panels

  /// A column length for `rows` that is an odd number of cache lines. Row-wise passes over a column-major
  /// matrix step by one column; with columns of 256 floats (1 KiB) every step lands in the same few L1 sets and
  /// each read misses (measured: the transposing copy in TileRun::finish() took 6% of a 512-token prefill).
  static Index padded_column(Index rows) {
    constexpr Index line = 64 / sizeof(T);
    const Index lines = (rows + line - 1) / line;
    return (lines % 2 == 1 ? lines : lines + 1) * line;
  }

  Workspace(Index rows, Index keys, Index d, Index dv, bool packed)
      : Workspace(rows, keys, (keys + PackedGemm<T>::nr - 1) / PackedGemm<T>::nr * PackedGemm<T>::nr, d, dv, packed) {}

 private:
  // Packed key tiles are whole panels: up to `keys` rounded up to a multiple of PackedGemm<T>::nr.
  Workspace(Index rows, Index keys, Index panel_keys, Index d, Index dv, bool packed)
      : q(rows, d),
        scores(packed ? 0 : rows, packed ? 0 : keys),
        acc(rows, dv),
        max(rows),
        sum(rows),
        q_packed(packed ? rows * d : 0),
        panels(packed ? rows * panel_keys : 0),
        acc_cols(packed ? padded_column(rows) : 0, packed ? dv : 0),
        visible_lo(packed ? rows : 0),
        visible_hi(packed ? rows : 0),
        panel_keys(panel_keys) {}
};

/// One kv group's keys and values packed as right operands (PackedGemm): keys as K^T [d x Lk], values as
/// V [Lk x dv]. Reused by every query tile of the group that runs on this thread.
template <class T>
struct PackedKeys {
  Vector<T> k, v;
  Index keys = 0;
  Index group = -1;  ///< the kv group held, -1 for none

  void pack(const ConstRowsRef<T>& k_rows, const ConstRowsRef<T>& v_rows, Index g) {
    keys = k_rows.rows();
    k.resize(keys * k_rows.cols());
    v.resize(keys * v_rows.cols());
    if (keys > 0) {
      PackedGemm<T>::pack_rhs_transposed(k.data(), k_rows.data(), k_rows.outerStride(), keys, k_rows.cols());
      PackedGemm<T>::pack_rhs_rows(v.data(), v_rows.data(), v_rows.outerStride(), keys, v_rows.cols());
    }
    group = g;
  }
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

/// The keys [Lk, d] and values [Lk, dv] of one kv group: column slices of the problem's k and v.
template <class T>
struct GroupKeys {
  ConstRowsRef<T> k;
  ConstRowsRef<T> v;
};

/// The online softmax of one query tile (positions [p0, p1) of kv group g, all the group's query heads): the
/// constructor, then absorb() key tiles in increasing order, then finish(). The steps are separate so the decode
/// path can walk one key tile through every group before the next, reading whole key rows while they are hot.
///
/// `packed`, when given, holds the group's keys and values packed whole; key tiles must then start on a panel
/// boundary (a multiple of PackedGemm<T>::nr) and hold whole panels unless they end the keys. Without it, tiles
/// of many rows pack each key tile as they absorb it.
template <class T>
class TileRun {
 public:
  TileRun(const Problem<T>& pb, const GroupKeys<T>& kv, const PackedKeys<T>* packed, Index g, Index p0, Index p1,
          Workspace<T>& ws, Index few_rows)
      : pb_(pb), kv_(kv), packed_(packed), ws_(ws), p0_(p0), rows_((p1 - p0) * pb.stack), panels_(rows_ > few_rows) {
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
    if (panels_) {
      ws.acc_cols.topRows(rows_).setZero();
      PackedGemm<T>::pack_lhs_rows(ws.q_packed.data(), ws.q.data(), ws.q.outerStride(), rows_, pb.d);
    } else {
      ws.acc.topRows(rows_).setZero();
    }
  }

  /// Keys some row of the tile may see.
  KeyRange keys() const { return keys_; }
  /// Keys every row of the tile sees (may be empty: begin >= end).
  KeyRange seen_by_all() const { return seen_by_all_; }
  /// Whether key tiles go through packed products (tiles of more than `few_rows` rows); attend_tile() then puts
  /// tile boundaries on panel boundaries.
  bool packed_products() const { return panels_; }

  /// Folds keys [kt, kt + tk) (within keys()) into the running softmax. A value row whose key is hidden from a
  /// query (by the mask or a -inf bias) is never multiplied into that query's output, so infinities or NaN
  /// stored there cannot leak through 0 * inf.
  void absorb(Index kt, Index tk) {
    if (!panels_) return absorb_rows(this, 1, kt, tk, tk);
    const Part part = rows_seeing(kt, tk);
    if (part.r0 < part.r1) absorb_packed(kt, tk, part.cut_by_mask, part.r0, part.r1);
  }

  /// absorb(kt, tk) for `count` runs of few rows (not packed_products()) at once, `step` key rows at a time through
  /// all of them: the scores, then each run's softmax step, then the weighted values. With the runs of every kv
  /// group over the same keys (decoding), memory is then read a few whole key rows at a time rather than as one
  /// page-strided column slice per group (row_products.hpp has the measurements). Forced inline so that the
  /// caller's constant step reaches the loops (4 queries over a 4k cache: 4.37-4.95 ms as a call, 4.22-4.25 inlined,
  /// as with the loops written out).
  EIGEN_ALWAYS_INLINE static void absorb_rows(TileRun* runs, Index count, Index kt, Index tk, Index step) {
    for (Index i = 0; i < count; ++i) runs[i].begin_rows(kt, tk);
    for (Index j = kt; j < kt + tk; j += step)
      for (Index i = 0; i < count; ++i) runs[i].rows_scores(j, std::min(j + step, kt + tk));
    for (Index i = 0; i < count; ++i) runs[i].rows_softmax();
    for (Index j = kt; j < kt + tk; j += step)
      for (Index i = 0; i < count; ++i) runs[i].rows_accumulate(j, std::min(j + step, kt + tk));
  }

  /// Leaves in ws.acc the normalized rows (position-major stack) and in ws.sum each row's log-sum-exp of its
  /// visible scaled scores (-inf, with a zero row, when it saw no key).
  void finish() {
    auto l = ws_.sum.head(rows_);
    if (panels_) {
      // Normalize column by column where the product left the rows (vectorized), then transpose once.
      const Vector<T> divisor = (l.array() == T(0)).select(T(1), l.array());
      for (Index c = 0; c < pb_.dv; ++c) ws_.acc_cols.col(c).head(rows_).array() /= divisor.array();
      PackedGemm<T>::transpose(ws_.acc.data(), ws_.acc.outerStride(), ws_.acc_cols.data(), ws_.acc_cols.outerStride(),
                               rows_, pb_.dv);
    }
    for (Index r = 0; r < rows_; ++r) {
      if (l[r] == T(0)) {
        ws_.acc.row(r).setZero();  // saw no key: zeros, as the contract says, whatever V held
        l[r] = -std::numeric_limits<T>::infinity();
      } else {
        if (!panels_) ws_.acc.row(r) /= l[r];
        l[r] = ws_.max[r] + std::log(l[r]);
      }
    }
  }

 private:
  /// The rows of the tile that see some of keys [kt, kt + tk): [r0, r1), and whether the mask cuts the tile.
  struct Part {
    bool cut_by_mask;
    Index r0, r1;
  };
  Part rows_seeing(Index kt, Index tk) const {
    const Problem<T>& pb = pb_;
    const Index stack = pb.stack;
    // Only tiles that cut through some row's key range need per-row limits; elsewhere every row sees the
    // whole tile. Key ranges move right as the position grows, so the rows that see none of a cut tile are a
    // prefix (ranges ending before it) and a suffix (ranges starting after it): they are left out of the
    // products, which on a causal diagonal saves the hidden triangle (see attend_tile()).
    const bool cut_by_mask = kt < seen_by_all_.begin || kt + tk > seen_by_all_.end;
    if (!cut_by_mask) return {false, 0, rows_};
    Index p_lo = p0_, p_hi = p0_ + rows_ / stack;
    while (p_lo < p_hi && pb.mask.keys(p_lo, pb.positions, pb.keys).end <= kt) ++p_lo;
    while (p_hi > p_lo && pb.mask.keys(p_hi - 1, pb.positions, pb.keys).begin >= kt + tk) --p_hi;
    return {true, (p_lo - p0_) * stack, (p_hi - p0_) * stack};
  }

  // The steps of absorb_rows(), for one run: begin_rows(kt, tk), rows_scores() on consecutive key ranges covering
  // the tile, rows_softmax(), then rows_accumulate() on consecutive ranges covering it again.
  void begin_rows(Index kt, Index tk) {
    part_ = rows_seeing(kt, tk);
    kt_ = kt;
    tk_ = tk;
    if (ws_.scores.rows() < rows_ || ws_.scores.cols() < tk)  // a packed workspace sizes them only when needed
      ws_.scores.resize(ws_.q.rows(), std::max(tk, ws_.panel_keys));
  }

  /// The scores of keys [j0, j1) of the tile begun.
  void rows_scores(Index j0, Index j1) {
    const Index r0 = part_.r0, rows = part_.r1 - part_.r0;
    if (rows == 0) return;
    const auto q = ws_.q.middleRows(r0, rows);
    const auto k = kv_.k.middleRows(j0, j1 - j0);
    RowProducts<T>::scores(&ws_.scores(0, j0 - kt_), ws_.scores.outerStride(), q.data(), q.outerStride(), rows,
                           k.data(), k.outerStride(), j1 - j0, pb_.d);
  }

  /// The online softmax step of the tile begun (begin_rows()), on its scores, row by row. The scores become the
  /// weights P, 0 where a key is hidden.
  void rows_softmax() {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    const Problem<T>& pb = pb_;
    const Index kt = kt_, tk = tk_, r0 = part_.r0, rows = part_.r1 - part_.r0;
    const bool cut_by_mask = part_.cut_by_mask;
    skip_zero_weights_ = false;
    if (rows == 0) return;
    auto m = ws_.max.segment(r0, rows);
    auto l = ws_.sum.segment(r0, rows);
    auto acc = ws_.acc.middleRows(r0, rows);
    auto s = ws_.scores.topLeftCorner(rows, tk);

    if (pb.softcap > 0) s = ((s.array() * (T(1) / pb.softcap)).tanh() * pb.softcap).matrix();
    if (pb.bias)
      for (Index r = 0; r < rows; ++r) s.row(r) += pb.bias->row(p0_ + (r0 + r) / pb.stack).segment(kt, tk);

    // Hidden entries are set to 0 directly, never exponentiated: Eigen's vectorized exp clamps its argument,
    // so exp(-inf) is ~1e-38 in float, not 0.
    for (Index r = 0; r < rows; ++r) {
      const auto [lo, hi] = visible(r0 + r, kt, tk, cut_by_mask);
      s.row(r).head(lo).setZero();
      s.row(r).tail(tk - hi).setZero();
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
    skip_zero_weights_ = (cut_by_mask || pb.bias) && !all_finite(kv_.v.middleRows(kt, tk));
  }

  /// acc += P V for keys [j0, j1) of the tile begun, after rows_softmax().
  void rows_accumulate(Index j0, Index j1) {
    const Index r0 = part_.r0, rows = part_.r1 - part_.r0;
    if (rows == 0) return;
    auto acc = ws_.acc.middleRows(r0, rows);
    const auto v = kv_.v.middleRows(j0, j1 - j0);
    const T* p = &ws_.scores(0, j0 - kt_);
    const Index ldp = ws_.scores.outerStride();
    if (skip_zero_weights_) {
      // Zero weights times non-finite values would poison the row (0 * inf = NaN): see rows_softmax().
      for (Index r = 0; r < rows; ++r)
        for (Index j = 0; j < j1 - j0; ++j)
          if (p[r * ldp + j] != T(0)) acc.row(r) += p[r * ldp + j] * v.row(j);
    } else {
      RowProducts<T>::accumulate(acc.data(), acc.outerStride(), p, ldp, rows, v.data(), v.outerStride(), j1 - j0,
                                 pb_.dv);
    }
  }

  /// Keys [lo, hi) of the tile that tile row r sees (all of them unless the mask cuts the tile).
  std::pair<Index, Index> visible(Index r, Index kt, Index tk, bool cut_by_mask) const {
    if (!cut_by_mask) return {0, tk};
    const KeyRange vis = pb_.mask.keys(p0_ + r / pb_.stack, pb_.positions, pb_.keys);
    const Index lo = std::clamp<Index>(vis.begin - kt, 0, tk);
    return {lo, std::clamp<Index>(vis.end - kt, lo, tk)};
  }

  /// Many rows: S = Q K^T on packed operands, written panel by panel in the packed left layout, the softmax on
  /// each panel a column (one key, a panel's rows) at a time, then acc += P V reading P where it lies.
  void absorb_packed(Index kt, Index tk, bool cut_by_mask, Index r0, Index r1) {
    using Gemm = PackedGemm<T>;
    const Problem<T>& pb = pb_;
    const Index d = pb.d, dv = pb.dv;

    // Rows that see none of the tile are left out. When they are only a prefix, the packed queries serve from
    // the panel that holds row r0 on (whole panels of mr rows come first, so rows from a multiple of mr on are
    // packed exactly as they would be alone); otherwise the rows that remain are packed afresh.
    const T* q = ws_.q_packed.data();
    if (r1 == rows_) {
      r0 = r0 / Gemm::mr * Gemm::mr;
      q += r0 * d;
    } else {
      if (ws_.q_part.size() < (r1 - r0) * d) ws_.q_part.resize(ws_.q.rows() * d);
      Gemm::pack_lhs_rows(ws_.q_part.data(), ws_.q.row(r0).data(), ws_.q.outerStride(), r1 - r0, d);
      q = ws_.q_part.data();
    }
    const Index rows = r1 - r0;
    const T *k, *v;
    Index v_stride, v_offset;
    if (packed_) {
      k = packed_->k.data() + kt * d;
      v = packed_->v.data();
      v_stride = packed_->keys;
      v_offset = kt;
    } else {
      if (ws_.k_tile.size() < tk * d) ws_.k_tile.resize(ws_.panel_keys * d);  // sized for the largest tile
      if (ws_.v_tile.size() < tk * dv) ws_.v_tile.resize(ws_.panel_keys * dv);
      Gemm::pack_rhs_transposed(ws_.k_tile.data(), kv_.k.row(kt).data(), kv_.k.outerStride(), tk, d);
      Gemm::pack_rhs_rows(ws_.v_tile.data(), kv_.v.row(kt).data(), kv_.v.outerStride(), tk, dv);
      k = ws_.k_tile.data();
      v = ws_.v_tile.data();
      v_stride = tk;
      v_offset = 0;
    }

    // S: panel (i, h) is the column-major h x tk block at s + i * tk, exactly where packing P would put it.
    T* const s = ws_.panels.data();
    Gemm::for_each_panel(rows, [&](Index i, Index h) {
      std::fill_n(s + i * tk, h * tk, T(0));
      Gemm::multiply_add(s + i * tk, h, q + i * d, k, h, d, tk);
    });
    if (pb.softcap > 0) {
      auto all = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(s, rows * tk);
      all = (all * (T(1) / pb.softcap)).tanh() * pb.softcap;
    }
    // The bias goes in entry by entry, row by row (strided in this layout, but only when there is one).
    if (pb.bias)
      Gemm::for_each_panel(rows, [&](Index i, Index h) {
        for (Index r = 0; r < h; ++r) {
          const T* b = pb.bias->row(p0_ + (r0 + i + r) / pb.stack).data() + kt;
          for (Index j = 0; j < tk; ++j) s[i * tk + j * h + r] += b[j];
        }
      });
    // Where the mask cuts the tile, row r sees keys [lo[r], hi[r]) of it; both bounds grow with r.
    Index* lo = nullptr;
    Index* hi = nullptr;
    if (cut_by_mask) {
      lo = ws_.visible_lo.data();
      hi = ws_.visible_hi.data();
      for (Index r = 0; r < rows; ++r) std::tie(lo[r], hi[r]) = visible(r0 + r, kt, tk, true);
    }
    Gemm::for_each_panel(rows, [&](Index i, Index h) {
      softmax_panel(s + i * tk, h, tk, r0 + i, lo ? lo + i : nullptr, lo ? hi + i : nullptr);
    });

    // Zero weights times non-finite values would poison the row (0 * inf = NaN). Only tiles where some keys are
    // hidden from some rows can have such a pair, and checking them costs one pass over a V tile.
    const auto v_rows = kv_.v.middleRows(kt, tk);
    if ((cut_by_mask || pb.bias) && !all_finite(v_rows)) {
      Gemm::for_each_panel(rows, [&](Index i, Index h) {
        for (Index r = 0; r < h; ++r)
          for (Index j = 0; j < tk; ++j) {
            const T w = s[i * tk + j * h + r];
            if (w != T(0)) ws_.acc_cols.row(r0 + i + r) += w * v_rows.row(j);
          }
      });
    } else {
      Gemm::multiply_add(ws_.acc_cols.data() + r0, ws_.acc_cols.rows(), s, v, rows, tk, dv, v_stride, v_offset);
    }
  }

  /// The online-softmax step on one panel: tile rows [row, row + h), scores at s (column-major h x tk), vectorized
  /// across the panel's rows, so there is no per-row reduction. With `lo` and `hi` (the mask cuts the tile), row
  /// r sees keys [lo[r], hi[r]): as both grow with r, the rows that see key j are one run [a, b) of the column,
  /// and only that run is read; the rest of the column is set to 0 (Eigen's vectorized exp would turn -inf
  /// into ~1e-38, not 0). A -inf bias is mapped to 0 entry by entry (Eigen 3.4 evaluates select() one scalar at
  /// a time, so only then). Rows whose maximum did not move get alpha = exp(0) = 1 exactly; rows still at -inf
  /// shift by 0 (see rows_softmax()).
  void softmax_panel(T* s, Index h, Index tk, Index row, const Index* lo, const Index* hi) {
    // Panel columns live on the stack (at most mr rows). A fixed size of mr would be unrolled whole, and GCC 12
    // then reports a false -Wuninitialized inside Eigen's AVX-512 exp.
    using Col = Eigen::Array<T, Eigen::Dynamic, 1, Eigen::ColMajor, PackedGemm<T>::mr, 1>;
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic>> p(s, h, tk);
    auto m = ws_.max.segment(row, h).array();
    auto l = ws_.sum.segment(row, h).array();
    // Rows [a, b) of the panel see key j: a is the first row whose range ends after j, b the first starting after.
    Index a = 0, b = 0;
    const auto seen_by = [&](Index j) {
      if (!lo) return std::pair<Index, Index>{0, h};
      while (a < h && hi[a] <= j) ++a;
      b = std::max(a, b);
      while (b < h && lo[b] <= j) ++b;
      return std::pair<Index, Index>{a, b};
    };
    // Where every row sees every key, kBatch adjacent columns (contiguous) go through one vectorized expression
    // with the row vector repeated, which quarters the per-column loop overhead (measured: 24% fewer softmax samples at
    // L = 512).
    constexpr Index kBatch = 4;
    using Batch = Eigen::Array<T, Eigen::Dynamic, 1, Eigen::ColMajor, kBatch * PackedGemm<T>::mr, 1>;
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> flat(s, h * tk);
    const Index batched = lo ? 0 : tk / kBatch * kBatch;
    Col m_new = m;
    if (batched > 0) {
      Batch wide = flat.head(kBatch * h);
      for (Index j = kBatch; j < batched; j += kBatch) wide = wide.max(flat.segment(j * h, kBatch * h));
      for (Index c = 0; c < kBatch; ++c) m_new = m_new.max(wide.segment(c * h, h));
    }
    for (Index j = batched; j < tk; ++j) {
      const auto [ra, rb] = seen_by(j);
      m_new.segment(ra, rb - ra) = m_new.segment(ra, rb - ra).max(p.col(j).segment(ra, rb - ra));
    }
    const Col shift = (m_new == neg_inf).select(Col::Zero(h), m_new);
    const Col alpha = (m - shift).exp();  // 0 * (~1e-38) when the row has seen nothing yet: l and acc are 0
    Col total = Col::Zero(h);
    const Index batched_exp = pb_.bias ? 0 : batched;
    if (batched_exp > 0) {
      Batch shifts(kBatch * h), sums = Batch::Zero(kBatch * h);
      for (Index c = 0; c < kBatch; ++c) shifts.segment(c * h, h) = shift;
      for (Index j = 0; j < batched_exp; j += kBatch) {
        auto cols = flat.segment(j * h, kBatch * h);
        cols = (cols - shifts).exp();
        sums += cols;
      }
      for (Index c = 0; c < kBatch; ++c) total += sums.segment(c * h, h);
    }
    a = b = 0;
    for (Index j = batched_exp; j < tk; ++j) {
      const auto [ra, rb] = seen_by(j);
      auto c = p.col(j);
      c.head(ra).setZero();
      c.tail(h - rb).setZero();
      auto seen = c.segment(ra, rb - ra);
      if (pb_.bias)
        seen = (seen == neg_inf).select(T(0), (seen - shift.segment(ra, rb - ra)).exp());
      else
        seen = (seen - shift.segment(ra, rb - ra)).exp();
      total.segment(ra, rb - ra) += seen;
    }
    // The accumulator needs rescaling only if it holds something (some row had a maximum) and some maximum moved.
    const bool rescale = !(m == neg_inf).all() && !(alpha == T(1)).all();
    l = l * alpha + total;
    m = m_new;
    if (rescale)
      for (Index c = 0; c < pb_.dv; ++c) ws_.acc_cols.col(c).segment(row, h).array() *= alpha;
  }

  const Problem<T>& pb_;
  const GroupKeys<T>& kv_;
  const PackedKeys<T>* packed_;
  Workspace<T>& ws_;
  Index p0_, rows_;
  bool panels_;
  KeyRange keys_, seen_by_all_;
  // The few-rows tile begun (begin_rows()).
  Part part_{false, 0, 0};
  Index kt_ = 0, tk_ = 0;
  bool skip_zero_weights_ = false;
};

/// Attends positions [p0, p1) of kv group g to all keys the mask lets each row see, in key tiles of `tile_keys`;
/// see TileRun::finish() for where the result is left.
///
/// Where the mask cuts through the tile (a causal diagonal, a window's edges) keys go in narrower tiles of
/// `cut_keys`, so that absorb() can leave out the rows that see none of them: a 256 x 256 causal diagonal
/// then costs the products of 5/8 of it in 64-key tiles instead of all of it. With packed products, tile
/// boundaries fall on panel boundaries (multiples of PackedGemm<T>::nr keys).
template <class T>
void attend_tile(const Problem<T>& pb, const GroupKeys<T>& kv, const PackedKeys<T>* packed, Index g, Index p0, Index p1,
                 const Tiles& tiles, Index tile_keys, Workspace<T>& ws) {
  TileRun<T> run(pb, kv, packed, g, p0, p1, ws, tiles.few_rows);
  // Packed products put tile boundaries on panels whether or not the group is packed whole, so packing whole
  // groups or single tiles gives the same tiles and the same bits.
  const Index align = run.packed_products() ? PackedGemm<T>::nr : 1;
  const auto round_up = [align](Index n) { return (n + align - 1) / align * align; };
  const Index full_keys = round_up(tile_keys), cut_keys = round_up(tiles.cut_keys);
  const Index k_end = std::min(pb.keys, round_up(run.keys().end));
  const KeyRange all = run.seen_by_all();
  for (Index kt = std::max<Index>(run.keys().begin, 0) / align * align; kt < k_end;) {
    Index tk = std::min(full_keys, k_end - kt);
    if (kt < all.begin)
      tk = std::min({tk, cut_keys, all.begin - kt});  // up to the first fully seen key
    else if (kt + tk > all.end)
      tk = std::min(tk, std::max(cut_keys, all.end - kt));                                // full part, then cut
    if (tk < k_end - kt) tk = std::min(k_end - kt, std::max(align, tk / align * align));  // k_end: Lk or a panel
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
                       const ConstRowsRef<T>* bias, Heads heads, const Options& options, RowsRef<T> out, Matrix<T>* lse,
                       const Tiles& tiles = Tiles()) {
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
  const Index key_tile = lq * stack <= tiles.few_rows ? tiles.few_rows_keys : tiles.keys;  // see Tiles
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
      std::vector<Workspace<T>> ws(groups, Workspace<T>(rows, key_tile, d, pb.dv, rows > tiles.few_rows));
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
      for (Index c = 0; c < chunks; ++c) {
        std::vector<TileRun<T>> runs;
        runs.reserve(groups);
        for (Index g = 0; g < groups; ++g) runs.emplace_back(pb, slices[g], nullptr, g, 0, lq, ws[g], tiles.few_rows);
        const KeyRange seen = runs[0].keys();  // the same positions in every group
        const Index k_end = std::min({seen.end, lk, (c + 1) * chunk_keys});
        for (Index kt = std::max(seen.begin, c * chunk_keys); kt < k_end; kt += key_tile) {
          const Index tk = std::min(key_tile, k_end - kt);
          if (runs[0].packed_products()) {
            for (auto& run : runs) run.absorb(kt, tk);
          } else {
            // 16 key rows at a time through every group (64k cache, 1 thread, 4 x 4 score blocks: 49.6 ms, against 54.5
            // with 4 rows, 50.4 with 8 and 67.5 with the whole 64-key tile; see row_products.hpp).
            TileRun<T>::absorb_rows(runs.data(), groups, kt, tk, 16);
          }
        }
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
  // Each thread packs the kv group it works on once (tiles.pack_groups), just before its tiles run, while it is
  // in cache. With at least 4 groups per thread a task is a whole group, so no two threads pack the same group
  // (at L = 512 and 2 threads both packing every group cost 7% of the call); with fewer groups the tasks are
  // single tiles, which keeps the threads balanced, and the group-major order makes the packing about once per
  // group and thread. Packing also copies the keys out of rows shared with other kv heads, which matters once k
  // and v outgrow the cache (measured: MHA, 8 heads, L = 4096, d = 128, causal: 114 GFLOP/s reading tiles in
  // place, 129 from one contiguous head). Packing all groups up front for all threads measured 15% slower at
  // L = 512 (presumably because the packed groups no longer fit in cache and their fresh pages fault each call).
  const Index n_tiles = (lq + tile_positions - 1) / tile_positions, tasks = n_tiles * groups;
  const bool later_is_heavier = options.mask.hides_future();
  const Index ws_rows = std::min(tile_rows, lq * stack);
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(tasks, work))
#endif
  {
    keep_tile_products_serial();
    Workspace<T> ws(ws_rows, key_tile, d, pb.dv, ws_rows > tiles.few_rows);
    PackedKeys<T> packed;
#if defined(_OPENMP)
    const Index team = omp_get_num_threads();
#else
    const Index team = 1;
#endif
    const Index unit = groups >= 4 * team ? n_tiles : 1;  // tasks scheduled together: a whole group, or one tile
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (Index u = 0; u < tasks / unit; ++u)
      for (Index t = u * unit; t < (u + 1) * unit; ++t) {
        const Index g = t / n_tiles, tile = later_is_heavier ? n_tiles - 1 - t % n_tiles : t % n_tiles;
        const Index p0 = tile * tile_positions, p1 = std::min(lq, p0 + tile_positions);
        const bool pack_group = tiles.pack_groups && (p1 - p0) * stack > tiles.few_rows;
        if (pack_group && packed.group != g) packed.pack(slices[g].k, slices[g].v, g);
        attend_tile(pb, slices[g], pack_group ? &packed : nullptr, g, p0, p1, tiles, key_tile, ws);
        scatter(g, p0, p1, ws.acc, ws.sum);
      }
  }
}

}  // namespace attend::detail
