#pragma once
// The backward tests' white-box seam, as kernel_seam.hpp is the forward's: attend::detail::attention_backward() with
// explicit tiles and an optional bias, as multi_head_attention_backward() calls it with the default tiles. Tests
// choose tile sizes and the split into tasks with BackwardTiles' named setters, e.g.
// backward_tiles().with_queries(8).with_keys(5).with_tasks(64).

#include <attend/attend.hpp>

namespace attend_test {

using BackwardTiles = attend::detail::BackwardTiles;

inline BackwardTiles backward_tiles() { return BackwardTiles(); }

// Gradients through the backward kernel; the arguments must be valid (the public functions check them).
template <class T>
attend::AttentionGradients<T> backward_kernel(const attend::Matrix<T>& q, const attend::Matrix<T>& k,
                                              const attend::Matrix<T>& v, const attend::Matrix<T>& out,
                                              const attend::Matrix<T>& lse, const attend::Matrix<T>& dout,
                                              attend::Heads heads, const attend::Options& options,
                                              const BackwardTiles& tiles = BackwardTiles(),
                                              const attend::Matrix<T>* bias = nullptr) {
  namespace ad = attend::detail;
  attend::AttentionGradients<T> g{attend::Matrix<T>(q.rows(), q.cols()), attend::Matrix<T>(k.rows(), k.cols()),
                                  attend::Matrix<T>(v.rows(), v.cols())};
  const ad::ConstRowsRef<T> qr(q), kr(k), vr(v), outr(out), lser(lse), doutr(dout);
  const ad::ConstRowsRef<T>* biasr = nullptr;
  ad::ConstRowsRef<T> held(bias ? *bias : q);
  if (bias) biasr = &held;
  const ad::Problem<T, T> pb = ad::make_problem(qr, kr, vr, biasr, heads, options);
  ad::attention_backward(ad::BackwardProblem<T>{pb, outr, lser, doutr}, g.dq, g.dk, g.dv, tiles);
  return g;
}

}  // namespace attend_test
