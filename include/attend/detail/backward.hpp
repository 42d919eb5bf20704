#pragma once
/// \file
/// The one backward kernel behind every gradient function: FlashAttention-2's backward, blocked, threaded,
/// deterministic. This file is the dispatcher; the backward's map, one file per seam:
///
///   backward_problem.hpp   BackwardProblem: the forward's Problem with out, lse and dout; tasks; a task's query
///                          rows packed once (BackwardRows: Q~ and dO in the layouts the products read, D, lse)
///   backward_plan.hpp      BackwardTiles (the tuning) and BackwardPlan: tile sizes and the split into tasks, from
///                          the shapes alone
///   backward_schedule.hpp  tasks over threads; per task its key tiles, per key tile the query tiles that see it
///                          (key_tiles.hpp's walk, over positions); partial results added in a fixed order
///   backward_mainloop.hpp  one key tile against one query tile: the five products and the elementwise steps
///   backward_gemm.hpp      the packings the backward needs beyond packed_gemm.hpp's
///
/// and from the forward: Problem and make_problem (problem.hpp), ScoreTransform (score_transform.hpp: scale,
/// softcap, bias, ALiBi in one place), PackedGemm (packed_gemm.hpp), the tile walk (key_tiles.hpp) and the use of
/// OpenMP (threads.hpp).
///
/// The algorithm (Dao 2023, FlashAttention-2, Algorithm 2): with P = exp(S - lse) recomputed per tile from the
/// forward's lse, D = rowsum(dO o O), dV = P^T dO, dP = dO V^T, dS = P o (dP - D), dQ = scale dS K,
/// dK = scale dS^T Q; sinks need nothing more (the lse includes the sink, so P is the forward's), softcap multiplies
/// dS by 1 - tanh^2(s / softcap), and bias and ALiBi are constants. Memory beyond inputs and gradients is a task's
/// packed query rows and one tile per thread, never the Lq x Lk matrices.

#include "attend/detail/backward_plan.hpp"
#include "attend/detail/backward_problem.hpp"
#include "attend/detail/backward_schedule.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// The gradients of sum(dout o out) with respect to q, k and v into dq [Lq, H*d], dk [Lk, G*d], dv [Lk, G*dv].
/// Arguments are validated. Rows that see no key get zero gradients; keys no row sees get zero dk and dv.
template <class T>
void attention_backward(const BackwardProblem<T>& bp, RowsRef<typename type_identity<T>::type> dq,
                        RowsRef<typename type_identity<T>::type> dk, RowsRef<typename type_identity<T>::type> dv,
                        const BackwardTiles& tiles = BackwardTiles()) {
  dq.setZero();
  dk.setZero();
  dv.setZero();
  if (bp.pb.positions == 0 || bp.pb.keys == 0) return;
  backward_tasks(bp, backward_plan(bp.pb, tiles), dq, dk, dv);
}

}  // namespace attend::detail
