#pragma once
/// \file
/// The backward's schedule: the plan's tasks over threads, each task its kv group's key tiles in increasing order,
/// each key tile against the query tiles that see it (mask-aware, narrower where the mask cuts), then the partial
/// results of split groups and split keys added in a fixed order. No atomics and no reduction whose order depends on
/// the threads: every task writes its own rows of dK, dV (or of a slice's partial) and its own rows of dQ (or of a
/// chunk's partial), so the gradients are bitwise identical for any number of threads.
///
/// Per thread, memory beyond the gradients is the task's packed query rows (two layouts each of Q~ and dO,
/// 2 x Lq x heads x (d + dv) numbers, plus D and lse) and one key tile's workspace; the Lq x Lk matrices of
/// FlashAttention's backward are never formed. Split groups and split keys add their partial results.

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "attend/detail/backward_mainloop.hpp"
#include "attend/detail/backward_plan.hpp"
#include "attend/detail/backward_problem.hpp"
#include "attend/detail/key_tiles.hpp"
#include "attend/detail/threads.hpp"
#include "attend/masks.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// The positions that see some of keys [kt, kt + tk) (first) and all of them (second). Each position's key range
/// [b, e) has ends that never decrease with the position, so both are ranges, found by bisection.
inline std::pair<KeyRange, KeyRange> positions_seeing(const Mask& mask, Index lq, Index lk, Index kt, Index tk) {
  const auto first = [&](auto&& holds) {  // the first position at which holds(range) becomes true
    Index a = 0, b = lq;
    while (a < b) {
      const Index m = a + (b - a) / 2;
      if (holds(mask.keys(m, lq, lk)))
        b = m;
      else
        a = m + 1;
    }
    return a;
  };
  const Index some_begin = first([&](KeyRange r) { return r.end > kt; });
  const Index some_end = first([&](KeyRange r) { return r.begin >= kt + tk; });
  const Index all_begin = first([&](KeyRange r) { return r.end >= kt + tk; });
  const Index all_end = first([&](KeyRange r) { return r.begin > kt; });
  return {KeyRange{some_begin, some_end}, KeyRange{all_begin, all_end}};
}

/// The gradients of the problem into dq [Lq, H*d] (before its scale: dQ~), dk [Lk, G*d] and dv [Lk, G*dv], which
/// hold zeros; the partial results of split groups and keys are added here, and dq multiplied by the scale.
template <class T>
void backward_tasks(const BackwardProblem<T>& bp, const BackwardPlan& plan, RowsRef<T> dq, RowsRef<T> dk,
                    RowsRef<T> dv) {
  using C = T;
  const Problem<T, T>& pb = bp.pb;
  const Index lq = pb.positions, lk = pb.keys, d = pb.d, dv_cols = pb.dv, heads = pb.groups * pb.stack;
  // Partial results: dQ~ of key chunks 1.., dK and dV of head slices 1.. (chunk and slice 0 write the gradients).
  std::vector<Matrix<C>> dq_parts, dk_parts, dv_parts;
  for (Index c = 1; c < plan.chunks; ++c) dq_parts.push_back(Matrix<C>::Zero(lq, heads * d));
  for (Index s = 1; s < plan.slices; ++s) {
    dk_parts.emplace_back(lk, pb.groups * d);
    dv_parts.emplace_back(lk, pb.groups * dv_cols);
  }
  // A task's dQ~ rows are its stacked rows; they have one stride in dq when the task holds one query head (the
  // row stride of dq) or every one (d, the heads of a position being adjacent). Otherwise they are accumulated in
  // the workspace and copied out after the task.
  const bool direct_dq = plan.slice_heads == 1 || plan.slice_heads == heads;
  const Index columns = (plan.tile_positions + plan.align) * plan.slice_heads;
#if defined(_OPENMP)
#pragma omp parallel if (worth_threads(plan.tasks, plan.work))
#endif
  {
    keep_tile_products_serial();
    std::optional<BackwardWorkspace<C>> ws;
    BackwardRows<C> rows;
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (Index t = 0; t < plan.tasks; ++t) {
      const BackwardTask task = backward_task(pb, plan, t);
      if (!ws) ws.emplace(plan.key_tile, columns, d, dv_cols, pb.softcap > 0);
      rows.load(bp, task);
      RowsRef<C> dq_out = task.chunk == 0 ? dq : RowsRef<C>(dq_parts[task.chunk - 1]);
      RowsRef<C> dk_out = task.slice == 0 ? dk : RowsRef<C>(dk_parts[task.slice - 1]);
      RowsRef<C> dv_out = task.slice == 0 ? dv : RowsRef<C>(dv_parts[task.slice - 1]);
      DqRows<C> dq_rows{dq_out.data() + task.head0 * d, task.heads == 1 ? dq_out.outerStride() : d};
      if (!direct_dq) {
        ws->dq.setZero(rows.rows, d);
        dq_rows = {ws->dq.data(), d};
      }
      for (Index kt = task.k0; kt < task.k1; kt += plan.key_tile) {
        const Index tk = std::min(plan.key_tile, task.k1 - kt);
        BackwardKeyTile<T> tile(bp, task, rows, *ws, dq_rows, kt, tk);
        const auto [some, all] = positions_seeing(pb.mask, lq, lk, kt, tk);
        if (!some.empty())
          for_each_key_tile(some, all, lq, plan.align, plan.tile_positions, plan.cut_positions,
                            [&](Index p0, Index np) { tile.absorb(p0, p0 + np); });
        tile.finish(dk_out.data() + kt * dk_out.outerStride() + task.group * d, dk_out.outerStride(),
                    dv_out.data() + kt * dv_out.outerStride() + task.group * dv_cols, dv_out.outerStride());
      }
      if (!direct_dq)
        for (Index r = 0; r < rows.rows; ++r)
          dq_out.block(r / task.heads, (task.head0 + r % task.heads) * d, 1, d) = ws->dq.row(r);
    }
  }
  // The partial results, added in slice and chunk order; then dq = scale * dQ~.
  for (const Matrix<C>& part : dk_parts) dk += part;
  for (const Matrix<C>& part : dv_parts) dv += part;
  for (const Matrix<C>& part : dq_parts) dq += part;
  dq *= pb.scale;
}

}  // namespace attend::detail
