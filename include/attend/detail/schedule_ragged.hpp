#pragma once
/// \file
/// The ragged schedule: one schedule over a batch of independent sequences (continuous batching), each with its own
/// queries, keys and values, its own Lq and Lk, its mask, ALiBi and sinks inside it. Each sequence is a Problem of
/// its own (views of its rows of the batch's inputs) with its keys as stored (GroupKeys: rows of the batch's k and
/// v, or pages of a paged cache), planned exactly as a call on that sequence alone would plan it (plan.hpp); the
/// tasks of all the sequences then share one team of threads:
///
///   prefill sequences   tasks (sequence, kv group, query tile), each run by the prefill tile runner
///                       (PrefillTiles, schedule_prefill.hpp) and written straight into the sequence's rows
///   decode sequences    tasks (sequence, key chunk) through every kv group (DecodeChunks, schedule_decode.hpp),
///                       their partial rows merged per sequence in chunk order once every task is done
///
/// Balance: a one-token decode over a short cache is far too little work for a team of its own, and a team per
/// sequence pays its start and its end barrier once per sequence, each time waiting for the slowest thread. Here
/// the units (a task, or every tile of one sequence's kv group when there are enough of those to go round) are
/// ordered heaviest first by the work the shapes give them, and threads take them dynamically, so the team ends
/// together after one barrier for the whole batch (and one for the merges).
///
/// Determinism: the tasks, their tiles and their chunks depend only on each sequence's shapes, every task writes its
/// own rows or its own partial rows, and chunks merge in order, so results are bitwise identical for any number of
/// threads, and bitwise those of the same kernel run on each sequence alone.

#include <algorithm>
#include <cstddef>
#include <vector>

#include "attend/detail/assert.hpp"
#include "attend/detail/group_keys.hpp"
#include "attend/detail/plan.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/schedule_decode.hpp"
#include "attend/detail/schedule_prefill.hpp"
#include "attend/detail/threads.hpp"
#include "attend/detail/tiles.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// One sequence of a ragged batch: its problem (positions, keys, mask and options of this sequence alone), its keys
/// and values as stored, and the row of the batch's output where its first position goes. All sequences of a batch
/// have the same heads and head dimensions.
template <class T, class S>
struct RaggedSequence {
  Problem<T, S> pb;
  std::vector<GroupKeys<S>> keys;
  Index row;
};

namespace ragged_detail {

/// A task: a prefill tile (positions [p0, p1) of kv group g) or a decode chunk c of one sequence.
struct Task {
  Index seq;
  bool chunk;
  Index g_or_c;
  Index p0, p1;
  double work;
};

/// Tasks [first, first + count) scheduled together, with their work.
struct Unit {
  Index first, count;
  double work;
};

/// Units ordered heaviest first (ties in task order, so the order depends on the shapes alone).
inline void heaviest_first(std::vector<Unit>& units) {
  std::stable_sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) { return a.work > b.work; });
}

}  // namespace ragged_detail

/// Attention of every sequence into its rows of out [Tq, H*dv] and, when not null, lse [Tq, H]. Rows of sequences
/// without positions are never written; a sequence without keys gets zero rows (lse -inf, or its sinks).
template <class T, class S>
void ragged(const std::vector<RaggedSequence<T, S>>& seqs, const Tiles& tiles, RowsRef<T> out,
            Matrix<accumulator_t<T>>* lse) {
  using C = accumulator_t<T>;
  using ragged_detail::Task;
  using ragged_detail::Unit;
  const Index n = static_cast<Index>(seqs.size());
  std::vector<Plan> plans(static_cast<std::size_t>(n));
  std::vector<Index> part_offset(static_cast<std::size_t>(n), 0);  // each decode sequence's partial results
  std::vector<Task> tasks;
  std::vector<Unit> fine, coarse;  // a unit per task; or per (sequence, kv group) of prefill tiles
  Index pairs = 0, part_values = 0, part_rows = 0;
  Index prefill_rows = 1, prefill_keys = 1, decode_rows = 1, decode_keys = 1;
  double work = 0;
  Index groups = 0, d = 0, dv = 0;
  for (Index b = 0; b < n; ++b) {
    const Problem<T, S>& pb = seqs[b].pb;
    if (pb.positions == 0) continue;
    ATTEND_DASSERT((groups == 0 || (pb.groups == groups && pb.d == d && pb.dv == dv)) &&
                       static_cast<Index>(seqs[b].keys.size()) == pb.groups,
                   "the sequences of a batch share heads and head dimensions, each with its groups' keys");
    groups = pb.groups, d = pb.d, dv = pb.dv;
    const Plan s = plan(pb, tiles);
    plans[b] = s;
    work += s.work;
    const Index rows = pb.positions * pb.stack;
    if (s.split_keys) {
      // Decode: a task per key chunk, each through every kv group.
      part_offset[b] = part_rows;
      part_rows += pb.groups * s.chunks * rows;
      part_values += pb.groups * s.chunks * rows * pb.dv;
      decode_rows = std::max(decode_rows, rows);
      decode_keys = std::max(decode_keys, s.key_tile);
      const KeyRange seen{pb.mask.keys(0, pb.positions, pb.keys).begin,
                          pb.mask.keys(pb.positions - 1, pb.positions, pb.keys).end};
      for (Index c = 0; c < s.chunks; ++c) {
        const Index k0 = std::max(seen.begin, c * s.chunk_keys), k1 = std::min(seen.end, (c + 1) * s.chunk_keys);
        const double w = double(rows) * double(pb.groups) * double(std::max<Index>(0, k1 - k0)) * double(d + dv);
        fine.push_back({Index(tasks.size()), 1, w});
        coarse.push_back(fine.back());
        tasks.push_back({b, true, c, 0, 0, w});
      }
      continue;
    }
    // Prefill: a task per (kv group, query tile); a group's tiles are adjacent, heaviest first.
    const Index n_tiles = (pb.positions + s.tile_positions - 1) / s.tile_positions;
    prefill_rows = std::max(prefill_rows, std::min(s.tile_positions, pb.positions) * pb.stack);
    prefill_keys = std::max(prefill_keys, s.key_tile);
    std::vector<double> tile_work(static_cast<std::size_t>(n_tiles));
    for (Index t = 0; t < n_tiles; ++t) {
      const Index p0 = t * s.tile_positions, p1 = std::min(pb.positions, p0 + s.tile_positions);
      double pairs_seen = 0;  // visible (position, key) pairs; each row is also loaded and stored once
      for (Index p = p0; p < p1; ++p) pairs_seen += double(pb.mask.keys(p, pb.positions, pb.keys).size()) + 1;
      tile_work[t] = pairs_seen * double(pb.stack) * double(d + dv);
    }
    std::vector<Index> order(static_cast<std::size_t>(n_tiles));
    for (Index t = 0; t < n_tiles; ++t) order[t] = t;
    std::stable_sort(order.begin(), order.end(), [&](Index x, Index y) { return tile_work[x] > tile_work[y]; });
    double group_work = 0;
    for (Index t = 0; t < n_tiles; ++t) group_work += tile_work[t];
    for (Index g = 0; g < pb.groups; ++g) {
      coarse.push_back({Index(tasks.size()), n_tiles, group_work});
      for (const Index t : order) {
        const Index p0 = t * s.tile_positions, p1 = std::min(pb.positions, p0 + s.tile_positions);
        fine.push_back({Index(tasks.size()), 1, tile_work[t]});
        tasks.push_back({b, false, g, p0, p1, tile_work[t]});
      }
      ++pairs;
    }
  }
  if (tasks.empty()) return;
  ragged_detail::heaviest_first(fine);
  ragged_detail::heaviest_first(coarse);

  Vector<C> part_out(part_values), part_lse(part_rows);
  const auto parts_of = [&](Index b) {
    const Problem<T, S>& pb = seqs[b].pb;
    const Index rows = pb.positions * pb.stack;
    return ChunkParts<C>{part_out.data() + part_offset[b] * pb.dv, part_lse.data() + part_offset[b], plans[b].chunks,
                         rows, pb.dv};
  };
  std::vector<Index> decoded;  // the decode sequences, to merge
  for (Index b = 0; b < n; ++b)
    if (seqs[b].pb.positions > 0 && plans[b].split_keys) decoded.push_back(b);
  const Path16 path16 = prefill_path16<T, S>();

  // A sequence's rows of the output (a view).
  const auto rows_of_out = [&](Index b) { return RowsRef<T>(out.middleRows(seqs[b].row, seqs[b].pb.positions)); };

#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(Index(fine.size()), work))
#else
  (void)work;  // only the team's decision reads it
#endif
  {
    keep_tile_products_serial();
    PrefillTiles<T, S> prefill_tiles(prefill_rows, prefill_keys, d, dv, tiles, path16);
    DecodeChunks<T, S> decode_chunks(decode_rows, decode_keys, groups, d, dv, tiles);
    // With enough (sequence, kv group) pairs to go round, a unit is all the tiles of one: no two threads then pack
    // the same group's keys.
    const std::vector<Unit>& units = pairs >= 4 * team_size() ? coarse : fine;
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (std::size_t u = 0; u < units.size(); ++u)
      for (Index i = units[u].first; i < units[u].first + units[u].count; ++i) {
        const Task& t = tasks[static_cast<std::size_t>(i)];
        const RaggedSequence<T, S>& seq = seqs[t.seq];
        if (t.chunk) {
          decode_chunks.run(seq.pb, seq.keys, plans[t.seq], t.g_or_c, parts_of(t.seq));
          continue;
        }
        RowsRef<T> rows_out = rows_of_out(t.seq);
        const Index source = t.seq * groups + t.g_or_c;  // this (sequence, kv group) among the batch's
        if (lse) {
          RowsRef<C> rows_lse(lse->middleRows(seq.row, seq.pb.positions));
          prefill_tiles.run(seq.pb, seq.keys[t.g_or_c], source, t.g_or_c, t.p0, t.p1, plans[t.seq].key_tile, rows_out,
                            &rows_lse);
        } else {
          prefill_tiles.run(seq.pb, seq.keys[t.g_or_c], source, t.g_or_c, t.p0, t.p1, plans[t.seq].key_tile, rows_out,
                            static_cast<RowsRef<C>*>(nullptr));
        }
      }
      // Every chunk is done (the barrier of the loop above): each decode sequence merges its chunks in order.
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (std::size_t i = 0; i < decoded.size(); ++i) {
      const Index b = decoded[i];
      RowsRef<T> rows_out = rows_of_out(b);
      if (lse) {
        RowsRef<C> rows_lse(lse->middleRows(seqs[b].row, seqs[b].pb.positions));
        merge_chunks(seqs[b].pb, parts_of(b), rows_out, &rows_lse);
      } else {
        merge_chunks(seqs[b].pb, parts_of(b), rows_out, static_cast<RowsRef<C>*>(nullptr));
      }
    }
  }
}

}  // namespace attend::detail
