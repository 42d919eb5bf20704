#pragma once
/// \file
/// Ring attention: ring_attention() and ring_attention_with_lse(); what a call reports (RingStats), keeps between
/// calls (RingWorkspace) and is tuned by (RingTuning) are in mpi/ring_types.hpp. Part of `<attend/mpi.hpp>`, whose
/// overview describes the algorithm.

#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <limits>
#include <utility>
#include <vector>

#include "attend/detail/attention.hpp"
#include "attend/detail/checks.hpp"
#include "attend/detail/merge.hpp"
#include "attend/detail/online_softmax.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/tiles.hpp"
#include "attend/errors.hpp"
#include "attend/masks.hpp"
#include "attend/mpi/collective_checks.hpp"
#include "attend/mpi/comm.hpp"
#include "attend/mpi/ring_types.hpp"
#include "attend/mpi/row_layout.hpp"
#include "attend/options.hpp"
#include "attend/result.hpp"
#include "attend/shapes.hpp"

namespace attend {

namespace detail {

/// Whether any query of piece q may see any key of piece k under `mask` placed on the whole sequence
/// (query i sees key j iff j <= i + base, and j > i + base - window for sliding windows).
inline bool pieces_interact(const Mask& mask, RowRange q, RowRange k) {
  if (q.size() == 0 || k.size() == 0) return false;
  if (!mask.hides_future()) return true;
  const Index base = mask.diagonal().value_or(0);
  if (k.begin > q.end - 1 + base) return false;  // every key after the last query's last visible key
  if (mask.kind() == Mask::Kind::sliding_window && k.end - 1 <= q.begin + base - mask.window())
    return false;  // every key before the first query's window
  return true;
}

/// `mask` on a sequence of `length` rows with its diagonal D, and for windows D - window, brought within
/// [-length - 1, length + 1]: the same keys for every query (query i sees key j iff D - window < j - i <= D, and
/// |j - i| < length), while the blocks' offsets (< length) can be added to the diagonal without overflowing Index
/// whatever diagonal and window the caller gave. A window that comes out below 1 hides every key.
inline Mask ring_mask(const Mask& mask, Index length) {
  if (!mask.hides_future()) return mask;
  const Index reach = length + 1, diagonal = mask.diagonal().value_or(0);
  const Index d = std::clamp(diagonal, -reach, reach);
  if (mask.kind() != Mask::Kind::sliding_window) return mask.with_diagonal(d);
  const Index past = std::clamp(saturating_sub(diagonal, mask.window()), -reach, reach);  // D - window
  return Mask::sliding_window(d - past).with_diagonal(d);
}

/// Query rows per kernel call while a transfer is in flight (RingTuning), for blocks of at most `key_rows`
/// rows: a function of the shapes and the tuning only (the thread count would move the slab boundaries, and with
/// them the rounding). More than key_rows would make no difference: no piece is longer.
inline Index ring_slab_rows(Index key_rows, Heads heads, Index d_plus_dv, const RingTuning& tuning) {
  const Index min_rows = tuning.slab_min_rows > 0 ? tuning.slab_min_rows : std::max(1, 256 / (heads.query / heads.kv));
  const double work = tuning.slab_work > 0 ? tuning.slab_work : 0;
  const double per_row = std::max(1.0, double(key_rows) * double(heads.query) * double(d_plus_dv));
  const double rows = std::min(work / per_row, double(std::max<Index>(1, key_rows)));
  return std::max<Index>(min_rows, static_cast<Index>(rows));
}

template <class T, class DQ, class DK, class DV>
AttentionResult<T> ring_impl(const char* fn, const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                             const Eigen::MatrixBase<DV>& v, Heads heads, const Options& options,
                             const RowLayout* given_layout, MPI_Comm user_comm, RingStats* stats,
                             RingWorkspace* workspace, const RingTuning& tuning) {
  static_check_scalars<T, DQ, DK, DV>();
  const double t_start = MPI_Wtime();
  check_mpi_usable(fn, user_comm);
  const int size = comm_size(user_comm), rank = comm_rank(user_comm);

  // 1. Local checks, then one collective agreement: every rank throws if any rank failed or ranks disagree.
  //    These are the only checks: the kernel calls below take the arguments as validated.
  MpiSignature mine;
  mine.scalar_bytes = sizeof(T);
  mine.heads_query = heads.query;
  mine.heads_kv = heads.kv;
  set_mask(mine, options.mask);
  mine.has_scale = options.scale.has_value();
  mine.scale = options.scale.value_or(0.0);
  mine.softcap = options.softcap;
  set_per_head_options(mine, options);
  mine.q_rows = q.rows();
  mine.q_cols = q.cols();
  mine.k_rows = k.rows();
  mine.k_cols = k.cols();
  mine.v_rows = v.rows();
  mine.v_cols = v.cols();
  if (given_layout) {
    mine.layout_fingerprint = given_layout->fingerprint();
    mine.layout_length = given_layout->length();
  }
  try {
    check_multi_head(fn, q, k, v, heads, options);
    if (k.rows() != q.rows())
      fail(fn, "q has ", q.rows(), " rows but k has ", k.rows(),
           ": ring attention is self-attention over one sequence, each rank holds the same rows of q, k and v (q ",
           shape_of(q), ", k ", shape_of(k), ")");
    if (q.rows() > std::numeric_limits<int>::max())
      fail(fn, "q has ", q.rows(), " rows, more than an MPI count can hold (", std::numeric_limits<int>::max(), ")");
    if (given_layout) {
      if (given_layout->ranks() != size)
        fail(fn, "layout has ", given_layout->ranks(), " ranks, the communicator ", size);
      else if (given_layout->local_rows(rank) != q.rows())
        fail(fn, "layout gives rank ", rank, ' ', given_layout->local_rows(rank), " rows, q has ", q.rows(), " (q ",
             shape_of(q), ")");
    }
  } catch (const shape_error& e) {
    set_message(mine, e.what(), fn);
  }
  const std::vector<MpiSignature> all = agree(fn, mine, user_comm);
  check_ring_signatures(fn, all);

  RowLayout layout;
  if (given_layout) {
    layout = *given_layout;
  } else {
    std::vector<Index> rows;
    for (const MpiSignature& s : all) rows.push_back(s.q_rows);
    layout = RowLayout::contiguous(rows);
  }
  const double t_checked = MPI_Wtime();

  // 2. Which blocks anyone needs: the ring runs only as many steps as the farthest needed block.
  const Mask mask = ring_mask(options.mask, layout.length());
  Options sink_free = options;
  sink_free.sinks.clear();
  int steps = 0;
  for (int r = 0; r < size; ++r)
    for (int o = 0; o < size; ++o) {
      bool needed = false;
      for (const RowRange& qp : layout.pieces(r))
        for (const RowRange& kp : layout.pieces(o)) needed = needed || pieces_interact(mask, qp, kp);
      if (needed) steps = std::max(steps, (r - o + size) % size);
    }

  // 3. The KV buffers: row i is [k_i | v_i] (G*d + G*dv scalars), one message per step.
  const Index kc = k.cols(), vc = v.cols(), width = kc + vc, hdv = vc / heads.kv * heads.query;
  Index max_rows = 0;
  for (int r = 0; r < size; ++r) max_rows = std::max(max_rows, layout.local_rows(r));
  RingWorkspace local_workspace;
  RingWorkspace& ws = workspace ? *workspace : local_workspace;
  const std::size_t buffer_bytes = static_cast<std::size_t>(max_rows * width) * sizeof(T);
  using Buffer = Eigen::Map<Matrix<T>>;
  Buffer buf[2] = {Buffer(reinterpret_cast<T*>(ws.buffer(0, buffer_bytes + sizeof(T))), max_rows, width),
                   Buffer(reinterpret_cast<T*>(ws.buffer(1, steps > 0 ? buffer_bytes + sizeof(T) : sizeof(T))),
                          steps > 0 ? max_rows : 0, width)};
  const Index lq = q.rows();
  buf[0].topLeftCorner(lq, kc) = k;
  buf[0].block(0, kc, lq, vc) = v;
  Matrix<T> q_copy;
  const ConstRowsRef<T> qe = bind_rows(q, q_copy);  // see bind_rows

  // The result accumulates in place, row by row: a row starts at zero with lse -inf (which merges with a part
  // exactly into that part) and stays so if it never sees a key. Memory: the output plus one slab's part.
  AttentionResult<T> result{Matrix<T>::Zero(lq, hdv),
                            Matrix<T>::Constant(lq, heads.query, -std::numeric_limits<T>::infinity())};
  std::vector<bool> seen(static_cast<std::size_t>(lq), false);  // rows with some part merged already
  // Query slabs: each local piece cut into calls of `slab_rows` rows while a transfer is in flight.
  struct Slab {
    RowRange global;  // positions
    Index local;      // first local row
  };
  const Index slab_rows = ring_slab_rows(max_rows, heads, q.cols() / heads.query + vc / heads.kv, tuning);
  const auto slabs_of = [&](Index step) {
    std::vector<Slab> slabs;
    Index local = 0;
    for (const RowRange& p : layout.pieces(rank)) {
      for (Index s = 0; s < p.size(); s += step)
        slabs.push_back({RowRange{p.begin + s, p.begin + std::min(p.size(), s + step)}, local + s});
      local += p.size();
    }
    return slabs;
  };
  const std::vector<Slab> small_slabs = slabs_of(slab_rows), whole_pieces = slabs_of(std::max<Index>(1, lq));
  // One slab's part (the kernel's output and lse), allocated once for the largest slab (a whole piece), and the
  // merge's scratch row.
  Index largest_slab = 0;
  for (const Slab& slab : whole_pieces) largest_slab = std::max(largest_slab, slab.global.size());
  Matrix<T> part_out(largest_slab, hdv), part_lse(largest_slab, heads.query);
  Vector<T> scratch(vc / heads.kv);
  const Tiles tiles;

  DupComm dup(user_comm);
  const MPI_Comm comm = dup.get();
  const RowType row_type(mpi_type<T>(), width);
  const int next = (rank + 1) % size, prev = (rank - 1 + size) % size;
  RingStats st;
  st.ranks = size;
  st.steps = steps;
  double compute = 0, poll = 0, wait = 0;

  int cur = 0;
  for (int s = 0; s <= steps; ++s) {
    const int owner = (rank - s + size) % size;
    MPI_Request req[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    if (s < steps) {
      const int incoming = (rank - s - 1 + size) % size;
      MPI_Irecv(buf[1 - cur].data(), static_cast<int>(layout.local_rows(incoming)), row_type.get(), prev, s, comm,
                &req[0]);
      MPI_Isend(buf[cur].data(), static_cast<int>(layout.local_rows(owner)), row_type.get(), next, s, comm, &req[1]);
      st.bytes_sent.push_back(static_cast<std::size_t>(layout.local_rows(owner)) * static_cast<std::size_t>(width) *
                              sizeof(T));
    }
    const double t0 = MPI_Wtime();
    Index k_local = 0;
    for (const RowRange& kp : layout.pieces(owner)) {
      const Index nk = kp.size();
      const ConstRowsRef<T> kb = buf[cur].block(k_local, 0, nk, kc), vb = buf[cur].block(k_local, kc, nk, vc);
      for (const Slab& slab : s < steps ? small_slabs : whole_pieces) {
        if (!pieces_interact(mask, slab.global, kp)) {
          if (nk > 0 && slab.global.size() > 0) ++st.blocks_skipped;
          continue;
        }
        // The block's queries and keys at their global positions: the mask's diagonal and ALiBi's distances
        // (|global i - global j|) placed at the blocks' offsets. The parts carry no sinks (see below).
        Options o = sink_free;
        const Index diagonal = mask.diagonal().value_or(0) + slab.global.begin - kp.begin;
        o.mask = mask.with_diagonal(diagonal);
        // ALiBi measures from the caller's diagonal, which ring_mask() may have moved: |i + D - j| on global
        // positions, saturated (not wrapped) where D is within a sequence length of the ends of Index.
        const Index alibi_diagonal =
            saturating_add(saturating_add(options.mask.diagonal().value_or(0), slab.global.begin), -kp.begin);
        const Index nq = slab.global.size();
        const ConstRowsRef<T> qs = qe.middleRows(slab.local, nq);
        // The kernel itself on the arguments checked in 1., into the part (it writes lse rows [0, nq) only).
        auto slab_out = part_out.topRows(nq);
        attention(make_problem<T>(qs, kb, vb, nullptr, heads, o, alibi_diagonal), slab_out, &part_lse, tiles);
        const auto slab_lse = part_lse.topRows(nq);
        auto out_rows = result.out.middleRows(slab.local, nq);
        auto lse_rows = result.lse.middleRows(slab.local, nq);
        bool any_seen = false;  // else copy; merging into unseen rows is exact too (they weigh nothing)
        for (Index r = slab.local; r < slab.local + nq && !any_seen; ++r) any_seen = seen[static_cast<std::size_t>(r)];
        if (any_seen) {
          merge_into<T>(out_rows, lse_rows, slab_out, slab_lse, scratch.data());
        } else {
          out_rows = slab_out;
          lse_rows = slab_lse;
        }
        for (Index r = slab.local; r < slab.local + nq; ++r) seen[static_cast<std::size_t>(r)] = true;
        ++st.blocks_computed;
        if (s < steps) {  // let the exchange progress
          const double tp = MPI_Wtime();
          int done = 0;
          MPI_Testall(2, req, &done, MPI_STATUSES_IGNORE);
          poll += MPI_Wtime() - tp;
        }
      }
      k_local += nk;
    }
    const double t1 = MPI_Wtime();
    compute += t1 - t0;  // minus the polls, below
    if (s < steps) {
      MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
      wait += MPI_Wtime() - t1;
      cur = 1 - cur;
    }
  }

  // Sinks join the softmax of the whole row, so they are applied once, to the merged result (apply_sinks()).
  if (!options.sinks.empty()) {
    const Index dv = vc / heads.kv;
    for (Index i = 0; i < lq; ++i)
      for (Index h = 0; h < heads.query; ++h)
        online_softmax::apply_sink(result.out.block(i, h * dv, 1, dv), result.lse(i, h),
                                   static_cast<T>(options.sinks[h]));
  }

  if (stats) {
    st.compute_seconds = compute - poll;
    st.poll_seconds = poll;
    st.wait_seconds = wait;
    st.check_seconds = t_checked - t_start;
    st.total_seconds = MPI_Wtime() - t_start;
    *stats = std::move(st);
  }
  return result;
}

}  // namespace detail

/// Ring attention over one sequence split into contiguous blocks in rank order: rank r holds rows
/// [o_r, o_r + n_r) of q, k and v, with o_r the sum of the rows of ranks < r (blocks may be uneven, even
/// empty). Returns this rank's rows of multi_head_attention(q, k, v, heads, options) over the whole sequence.
/// Masks use global positions: causal() and causal_top_left() are the same here (self-attention, Lq == Lk),
/// query i sees keys j <= i; sliding_window(w) keys i - w < j <= i; none() every key.
///
/// **Shapes:** per rank (n_r,H*d) x (n_r,G*d) x (n_r,G*dv) => (n_r,H*dv)
///
/// Collective over `comm`: every rank must call it. Each of the P - 1 steps sends one key/value block,
/// n_r * G * (d + dv) * sizeof(T) bytes, to the next rank; only the G kv heads travel (GQA/MQA send less).
/// Memory per rank: its q, k, v and output rows plus two key/value block buffers (kept in `workspace` between
/// calls when one is given, which avoids re-faulting fresh memory on every call). `stats`, when given,
/// receives this rank's timings and bytes sent; `tuning` sets how queries are cut into kernel calls while a
/// block is in flight (RingTuning; the default suits real sizes).
/// \throws attend::shape_error on every rank when any rank's arguments are invalid (as multi_head_attention)
///         or ranks disagree on heads, head dims, options or scalar type; checked before any exchange.
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> ring_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                           const Eigen::MatrixBase<DV>& v, Heads heads, const Options& options,
                                           MPI_Comm comm, RingStats* stats = nullptr,
                                           RingWorkspace* workspace = nullptr, const RingTuning& tuning = {}) {
  return detail::ring_impl<typename DQ::Scalar>("ring_attention", q, k, v, heads, options, nullptr, comm, stats,
                                                workspace, tuning)
      .out;
}

/// ring_attention() where rank r holds the rows `layout.pieces(r)` of the sequence (possibly several pieces,
/// e.g. RowLayout::zigzag()). Every rank must pass the same layout, and q, k, v with layout.local_rows(rank)
/// rows in the layout's local order; the result has the same local row order.
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> ring_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                           const Eigen::MatrixBase<DV>& v, Heads heads, const Options& options,
                                           const RowLayout& layout, MPI_Comm comm, RingStats* stats = nullptr,
                                           RingWorkspace* workspace = nullptr, const RingTuning& tuning = {}) {
  return detail::ring_impl<typename DQ::Scalar>("ring_attention", q, k, v, heads, options, &layout, comm, stats,
                                                workspace, tuning)
      .out;
}

/// ring_attention() that also returns the log-sum-exp of each local row and query head, lse [n_r, H].
template <class DQ, class DK, class DV>
AttentionResult<typename DQ::Scalar> ring_attention_with_lse(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v, Heads heads,
    const Options& options, MPI_Comm comm, RingStats* stats = nullptr, RingWorkspace* workspace = nullptr,
    const RingTuning& tuning = {}) {
  return detail::ring_impl<typename DQ::Scalar>("ring_attention_with_lse", q, k, v, heads, options, nullptr, comm,
                                                stats, workspace, tuning);
}

/// ring_attention_with_lse() over any RowLayout.
template <class DQ, class DK, class DV>
AttentionResult<typename DQ::Scalar> ring_attention_with_lse(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v, Heads heads,
    const Options& options, const RowLayout& layout, MPI_Comm comm, RingStats* stats = nullptr,
    RingWorkspace* workspace = nullptr, const RingTuning& tuning = {}) {
  return detail::ring_impl<typename DQ::Scalar>("ring_attention_with_lse", q, k, v, heads, options, &layout, comm,
                                                stats, workspace, tuning);
}

}  // namespace attend
