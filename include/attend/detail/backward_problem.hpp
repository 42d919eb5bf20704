#pragma once
/// \file
/// The backward's problem (the forward's Problem with the forward's results and the output gradient), its tasks,
/// and a task's query rows packed once for every key tile the task visits (BackwardRows).

#include <algorithm>

#include "attend/detail/backward_gemm.hpp"
#include "attend/detail/backward_plan.hpp"
#include "attend/detail/finite.hpp"
#include "attend/detail/problem.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// The forward's Problem (q, k, v, bias, mask, scale, softcap, sinks, ALiBi and the sizes) with what the forward
/// returned, out [Lq, H*dv] and lse [Lq, H], and the gradient of the loss with respect to out, dout [Lq, H*dv].
/// Views of the caller's matrices, as Problem's are.
template <class T>
struct BackwardProblem {
  const Problem<T, T>& pb;
  const ConstRowsRef<T>& out;
  const ConstRowsRef<T>& lse;
  const ConstRowsRef<T>& dout;
};

/// One task of the schedule: kv group `group`, its query heads [head0, head0 + heads) (absolute head numbers),
/// keys [k0, k1). `slice` and `chunk` say which partial result the task writes (0: the gradients themselves).
struct BackwardTask {
  Index group, head0, heads, slice, chunk, k0, k1;
};

/// Task t of the plan. Tasks are chunk-major: under a causal mask the first keys are seen by the most queries, so
/// the heaviest tasks come first.
template <class T>
BackwardTask backward_task(const Problem<T, T>& pb, const BackwardPlan& s, Index t) {
  const Index per_chunk = pb.groups * s.slices;
  const Index chunk = t / per_chunk, g = t % per_chunk / s.slices, slice = t % s.slices;
  const Index k0 = chunk * s.chunk_keys;
  return {g,  g * pb.stack + slice * s.slice_heads, s.slice_heads, slice, chunk,
          k0, std::min(pb.keys, k0 + s.chunk_keys)};
}

/// A task's query rows, stacked position-major as the forward stacks a tile (row r is position r / heads, query
/// head head0 + r % heads), packed for the products that read them, once per task:
///
///   q_cols    Q~ = scale * q as a right operand d x R (one column per row): S^T = K_j Q~^T
///   q_depth   Q~ as a right operand R x d (one depth row per row):          dK_j += dS^T Q~
///   do_cols   dO as a right operand dv x R:                                 dP^T = V_j dO^T
///   do_depth  dO as a right operand R x dv:                                 dV_j += P^T dO
///
/// and per row D = dO . O (FlashAttention-2's D_i = rowsum(dO_i o O_i)) and the forward's lse. A query tile of
/// positions [p0, p1) is then the columns, or the depth rows, [p0 * heads, p1 * heads) of these operands: whole
/// four-column panels when p0 is a multiple of the panel width (BackwardPlan::align).
template <class C>
struct BackwardRows {
  Vector<C> q_cols, q_depth, do_cols, do_depth;
  Vector<C> delta;     ///< D_r = dO_r . O_r
  Vector<C> lse;       ///< the forward's log-sum-exp of row r (sink included)
  Matrix<C> gather;    ///< a block of positions' rows, gathered before packing
  Index rows = 0;      ///< R = Lq x heads
  bool finite = true;  ///< Q~, dO and D hold only finite values

  static constexpr Index kBlock = 64;  ///< positions gathered at a time: a multiple of the panel width

  template <class T>
  void load(const BackwardProblem<T>& bp, const BackwardTask& task) {
    using Gemm = BackwardGemm<C>;
    static_assert(kBlock % Gemm::nr == 0, "gathered blocks hold whole four-column panels");
    const Problem<T, T>& pb = bp.pb;
    const Index heads = task.heads, d = pb.d, dv = pb.dv;
    rows = pb.positions * heads;
    q_cols.resize(rows * d);
    q_depth.resize(rows * d);
    do_cols.resize(rows * dv);
    do_depth.resize(rows * dv);
    delta.resize(rows);
    lse.resize(rows);
    gather.resize(std::min(rows, kBlock * heads), std::max(d, dv));
    finite = true;
    for (Index p0 = 0; p0 < pb.positions; p0 += kBlock) {
      const Index p1 = std::min(pb.positions, p0 + kBlock), n = (p1 - p0) * heads, r0 = p0 * heads;
      const auto block = gather.topRows(n);
      for (Index p = p0; p < p1; ++p)
        for (Index h = 0; h < heads; ++h)
          gather.row((p - p0) * heads + h).head(d) = pb.q.block(p, (task.head0 + h) * d, 1, d) * pb.scale;
      finite = finite && all_finite(block.leftCols(d));
      Gemm::pack_rhs_transposed(q_cols.data() + r0 * d, gather.data(), gather.outerStride(), n, d);
      Gemm::pack_rhs_rows_part(q_depth.data(), gather.data(), gather.outerStride(), rows, r0, n, d);
      for (Index p = p0; p < p1; ++p)
        for (Index h = 0; h < heads; ++h) {
          const Index r = (p - p0) * heads + h, head = task.head0 + h;
          gather.row(r).head(dv) = bp.dout.row(p).segment(head * dv, dv);
          delta[r0 + r] = gather.row(r).head(dv).dot(bp.out.row(p).segment(head * dv, dv));  // D = dO . O
          lse[r0 + r] = bp.lse(p, head);
        }
      finite = finite && all_finite(block.leftCols(dv)) && all_finite(delta.segment(r0, n).transpose());
      Gemm::pack_rhs_transposed(do_cols.data() + r0 * dv, gather.data(), gather.outerStride(), n, dv);
      Gemm::pack_rhs_rows_part(do_depth.data(), gather.data(), gather.outerStride(), rows, r0, n, dv);
    }
  }
};

}  // namespace attend::detail
