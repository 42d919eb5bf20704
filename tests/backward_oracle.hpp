#pragma once
// The backward tests' double-precision oracle: the textbook backward of attention with the whole probability
// matrix materialized, per query head, from attend::reference::attention_weights (the independent double forward,
// sinks and ALiBi included):
//
//   P = softmax(scores), O = P V, D = rowsum(dO o O), dV = P^T dO, dP = dO V^T, dS = P o (dP - D),
//   dS_raw = dS o (1 - tanh^2(s_raw / softcap)) under a softcap, dq = scale dS_raw K, dk = scale dS_raw^T q,
//
// with dk and dv summed over the query heads of a kv group. Nothing here shares code with the blocked backward.

#include <attend/attend.hpp>
#include <cmath>

namespace attend_test {

inline attend::AttentionGradients<double> oracle_backward(const attend::Matrix<double>& q,
                                                          const attend::Matrix<double>& k,
                                                          const attend::Matrix<double>& v,
                                                          const attend::Matrix<double>& dout, attend::Heads heads,
                                                          const attend::Options& options,
                                                          const attend::Matrix<double>* bias = nullptr) {
  using M = attend::Matrix<double>;
  const attend::Index lq = q.rows(), lk = k.rows(), d = q.cols() / heads.query, dv = v.cols() / heads.kv;
  const int group = heads.query / heads.kv;
  const double scale = options.scale ? *options.scale : 1.0 / std::sqrt(double(d));
  attend::AttentionGradients<double> g{M::Zero(lq, q.cols()), M::Zero(lk, k.cols()), M::Zero(lk, v.cols())};
  if (lq == 0 || lk == 0) return g;
  for (int h = 0; h < heads.query; ++h) {
    const int kv = h / group;
    attend::Options o = options;
    if (!o.sinks.empty()) o.sinks = {options.sinks[h]};
    if (!o.alibi_slopes.empty()) o.alibi_slopes = {options.alibi_slopes[h]};
    const M qh = q.middleCols(h * d, d), kh = k.middleCols(kv * d, d), vh = v.middleCols(kv * dv, dv);
    const M doh = dout.middleCols(h * dv, dv);
    const M p = attend::reference::attention_weights(qh, kh, o, bias);
    M out = M::Zero(lq, dv);  // P V with zero weights skipped, as the reference forward
    for (attend::Index i = 0; i < lq; ++i)
      for (attend::Index j = 0; j < lk; ++j)
        if (p(i, j) != 0) out.row(i) += p(i, j) * vh.row(j);
    M dp = doh * vh.transpose();
    M ds = M::Zero(lq, lk);
    for (attend::Index i = 0; i < lq; ++i) {
      const double delta = doh.row(i).dot(out.row(i));
      for (attend::Index j = 0; j < lk; ++j) {
        if (p(i, j) == 0) continue;
        ds(i, j) = p(i, j) * (dp(i, j) - delta);
        if (options.softcap > 0) {
          const double t = std::tanh(scale * qh.row(i).dot(kh.row(j)) / options.softcap);
          ds(i, j) *= 1 - t * t;
        }
      }
    }
    for (attend::Index j = 0; j < lk; ++j)
      for (attend::Index i = 0; i < lq; ++i)
        if (p(i, j) != 0) g.dv.block(j, kv * dv, 1, dv) += p(i, j) * doh.row(i);
    g.dq.middleCols(h * d, d) = scale * ds * kh;
    g.dk.middleCols(kv * d, d) += scale * ds.transpose() * qh;
  }
  return g;
}

}  // namespace attend_test
